package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rawGet sends target as it is, which net/http's client would clean first.
func rawGet(t *testing.T, daemonURL, target string) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(daemonURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: offload\r\nConnection: close\r\n\r\n", target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestDocRootDaemon: `offload serve --docroot` serves a current local file without a GET
// at the base, and no request path reaches a file outside the folder: not through a
// symlink, "..", or an escaped slash or dot.
func TestDocRootDaemon(t *testing.T) {
	b := startBase(t)
	top := t.TempDir()
	root, outside := filepath.Join(top, "www"), filepath.Join(top, "outside")
	os.MkdirAll(filepath.Join(root, "pub"), 0o755)
	os.MkdirAll(outside, 0o755)
	os.MkdirAll(filepath.Join(b.dir, "pub"), 0o755)
	mt := time.Unix(1_700_000_000, 0)
	// The local copy's bytes differ from the base's (same length and date), so the
	// bytes say where an answer came from.
	put := func(path string, data []byte) {
		os.WriteFile(path, data, 0o644)
		os.Chtimes(path, mt, mt)
	}
	baseA, localA := bytes.Repeat([]byte("a"), 100<<10), bytes.Repeat([]byte("L"), 100<<10)
	put(filepath.Join(b.dir, "pub", "a.bin"), baseA)
	put(filepath.Join(root, "pub", "a.bin"), localA)
	secret := bytes.Repeat([]byte("S"), 100<<10)
	put(filepath.Join(outside, "secret"), secret)
	baseLink := bytes.Repeat([]byte("b"), 100<<10)
	put(filepath.Join(b.dir, "link-out"), baseLink)
	os.Symlink("../outside/secret", filepath.Join(root, "link-out"))
	os.Symlink(outside, filepath.Join(root, "dir-out"))
	os.MkdirAll(filepath.Join(b.dir, "dir-out"), 0o755) // the base has a folder there; the copy a link out
	put(filepath.Join(b.dir, "dir-out", "secret"), baseLink)

	// --max-dupes 0: requests follow each other at once from one address, and the cap
	// may still count the one before for a few microseconds after its last byte.
	d := startDaemon(t, "--base", b.url, "--cache", t.TempDir(), "--docroot", root, "--max-dupes", "0")
	if code, body := rawGet(t, d.url, "/pub/a.bin"); code != 200 || !bytes.Equal(body, localA) {
		t.Fatalf("/pub/a.bin: %d, local bytes %v", code, bytes.Equal(body, localA))
	}
	// A range, and HEAD, of the local file.
	req, _ := http.NewRequest("GET", d.url+"/pub/a.bin", nil)
	req.Header.Set("Range", "bytes=1000-1999")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 206 || !bytes.Equal(body, localA[1000:2000]) {
			t.Fatalf("range of the local file: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
	if resp, err := http.Head(d.url + "/pub/a.bin"); err != nil || resp.StatusCode != 200 || resp.ContentLength != int64(len(localA)) {
		t.Fatalf("HEAD: %v %v", resp, err)
	}
	if n := b.gets.Load(); n != 0 {
		t.Fatalf("a current local file cost %d GETs at the base", n)
	}
	if code, body := rawGet(t, d.url, "/link-out"); code != 200 || !bytes.Equal(body, baseLink) {
		t.Fatalf("/link-out: %d, the base's bytes %v, the secret %v", code, bytes.Equal(body, baseLink), bytes.Equal(body, secret))
	}
	if code, body := rawGet(t, d.url, "/dir-out/secret"); code != 200 || !bytes.Equal(body, baseLink) {
		t.Fatalf("/dir-out/secret: %d, the base's bytes %v, the secret %v", code, bytes.Equal(body, baseLink), bytes.Equal(body, secret))
	}
	for _, target := range []string{
		"/../outside/secret", "/pub/../../outside/secret", "/pub%2F..%2F..%2Foutside%2Fsecret",
		"/%2e%2e/outside/secret", "/pub/..%2F..%2Foutside/secret", "/dir-out/secret", "//outside/secret",
		"/pub/%2e%2e/%2e%2e/outside/secret", "/link-out/", "/dir-out%2Fsecret",
	} {
		code, body := rawGet(t, d.url, target)
		if bytes.Contains(body, secret[:1024]) {
			t.Errorf("%s: %d with the secret file's bytes", target, code)
		}
		t.Logf("%s: %d", target, code)
	}
	if !strings.Contains(d.stderr.String(), "not served from the docroot") {
		t.Errorf("the refused symlink was not logged: %s", d.stderr)
	}
}

// TestDocRootFlags: a --docroot that is no folder, or --docroot-follow-symlinks alone,
// stop the daemon at start with exit status 2.
func TestDocRootFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, nil, 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--docroot", filepath.Join(t.TempDir(), "missing")}, "--docroot"},
		{[]string{"--docroot", file}, "not a folder"},
		{[]string{"--docroot-follow-symlinks"}, "needs --docroot"},
	} {
		out, err := exec.Command(offloadBin, append([]string{"serve", "--base", "http://x"}, tc.args...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: %v %q, want exit 2 and %q", tc.args, err, out, tc.want)
		}
	}
}
