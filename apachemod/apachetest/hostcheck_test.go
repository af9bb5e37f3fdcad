package apachetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/modoffload/offload/redirect"
)

// TestHostcheckMovesRedirects: `offload hostcheck` keeps Apache's host-down file, so
// when an offload host stops, its files go to the other host within the probe interval,
// and come back after it starts again (the health check of issue 11).
func TestHostcheckMovesRedirects(t *testing.T) {
	so := buildModule(t)
	bin := buildOffload(t)
	a := newApache(t)
	big := bytes.Repeat([]byte("h"), 20000)
	ohs := []*offloadServer{
		startOffload(t, fmt.Sprintf("127.0.0.2:%d", freePort(t)), a.url),
		startOffload(t, fmt.Sprintf("127.0.0.3:%d", freePort(t)), a.url),
	}
	hs := hosts(ohs[0].addr, ohs[1].addr)
	// A file the first host owns.
	var p string
	for i := range 100 {
		if cand := fmt.Sprintf("/pub/f%d.bin", i); redirect.PickHash(hs, nil, cand) == 0 {
			p = cand
			break
		}
	}
	a.write(t, p, big)
	down := filepath.Join(a.dir, "run", "hosts-down")
	os.MkdirAll(filepath.Dir(down), 0o755)
	a.start(t, so, fmt.Sprintf("OffloadEngine On\nOffloadHost %s\nOffloadHost %s\nOffloadHostDownFile %s\n", ohs[0].addr, ohs[1].addr, down))

	const interval = 300 * time.Millisecond
	const timeout = time.Second
	check := exec.Command(bin, "hostcheck", "--down-file", down, "--interval", interval.String(), "--timeout", timeout.String(), ohs[0].addr, ohs[1].addr)
	var log bytes.Buffer
	check.Stderr = &log
	if err := check.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		check.Process.Signal(os.Interrupt)
		check.Wait()
		t.Logf("hostcheck said:\n%s", log.String())
	}()
	waitLocation := func(want int, what string) {
		t.Helper()
		start := time.Now()
		for {
			resp := get(t, "GET", a.url+p, "127.0.0.20")
			if resp.StatusCode == 307 && resp.Header.Get("Location") == hs[want].URL(p) {
				t.Logf("%s: redirects went to %s after %v", what, hs[want].Addr, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > interval+timeout+2*time.Second {
				t.Fatalf("%s: after %v still %d %q, want 307 to %s", what, time.Since(start), resp.StatusCode, resp.Header.Get("Location"), hs[want].Addr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for deadline := time.Now().Add(interval + timeout + 2*time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := os.Stat(down)
		if err == nil {
			if st.Mode().Perm() != 0o644 {
				t.Errorf("down file mode %v, want 0644 (Apache's children read it)", st.Mode().Perm())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hostcheck wrote no down file: %v", err)
		}
	}
	waitLocation(0, "both up")
	ohs[0].stop()
	waitLocation(1, "first host stopped")
	// The client following the redirect gets the file from the host that is up.
	if status, body, at := followFrom(t, a.url+p, "127.0.0.20", ""); status != 200 || !bytes.Equal(body, big) {
		t.Errorf("download while the first host is down: %d, %d bytes, at %s", status, len(body), at)
	}
	ohs[0].start(t)
	waitLocation(0, "first host back")
}
