package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modoffload/offload/redirect"
)

func TestParseHostArgs(t *testing.T) {
	hosts, err := parseHostArgs([]string{"a.example:8081", "https://b.example 2", "c.example", "3", "[::1]:9"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hosts {
		got = append(got, h.Scheme+"://"+h.Addr+" "+string(rune('0'+h.Weight)))
	}
	want := "http://a.example:8081 1,https://b.example 2,http://c.example 3,http://[::1]:9 1"
	if strings.Join(got, ",") != want {
		t.Errorf("got %s, want %s", strings.Join(got, ","), want)
	}
	for _, bad := range [][]string{nil, {"ftp://x"}, {"x 0"}, {"x/y"}} {
		if _, err := parseHostArgs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestWriteDownFile: the file is replaced whole, readable by all, and only when the list
// changes (so its mtime, which the base watches, moves only then).
func TestWriteDownFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "down")
	hosts, _ := parseHostArgs([]string{"a:1", "https://b:2"})
	failed := map[string]error{"b:2": errors.New("refused")}
	if changed, err := writeDownFile(path, hosts, failed); err != nil || !changed {
		t.Fatalf("first write: %v %v", changed, err)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasSuffix(string(data), "\nhttps://b:2\n") || strings.Contains(string(data), "a:1") {
		t.Errorf("file says %q", data)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	if changed, err := writeDownFile(path, hosts, failed); err != nil || changed {
		t.Errorf("same list written again: %v %v", changed, err)
	}
	if changed, _ := writeDownFile(path, hosts, nil); !changed {
		t.Errorf("empty list not written")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	if _, err := writeDownFile(filepath.Join(dir, "no", "such", "down"), hosts, nil); err == nil {
		t.Errorf("a file in a missing folder was written")
	}
}

// TestHostcheckOnce probes a live host and a dead one and lists the dead one.
func TestHostcheckOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "User-agent: *\nDisallow: /\n")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	dead, _ := net.Listen("tcp", "127.0.0.3:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	path := filepath.Join(t.TempDir(), "down")
	if code := runHostcheck([]string{"--once", "--timeout", "2s", "--down-file", path, ln.Addr().String(), deadAddr + " 2"}); code != 1 {
		t.Errorf("exit %d with a host down, want 1", code)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "http://"+deadAddr+"\n") || strings.Contains(string(data), ln.Addr().String()) {
		t.Errorf("down file: %q", data)
	}
	hosts, _ := parseHostArgs([]string{ln.Addr().String()})
	if failed := redirect.CheckHosts(t.Context(), hosts, redirect.DefaultProbeTimeout); len(failed) != 0 {
		t.Errorf("live host failed: %v", failed)
	}
	if code := runHostcheck([]string{"--once", "--down-file", path}); code != 2 {
		t.Errorf("no hosts: exit %d, want 2", code)
	}
}
