package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rangeBase is a base for the resume tests: one file from memory; a whole-file GET sends
// fastBytes at full speed and then trickles (a slow base), ranged GETs go at full speed.
// It records the Range header of every GET.
type rangeBase struct {
	url       string
	data      []byte
	mod       time.Time
	fastBytes int

	mu     sync.Mutex
	ranges []string
	slow   bool
}

func startRangeBase(t *testing.T, data []byte, fastBytes int) *rangeBase {
	t.Helper()
	b := &rangeBase{data: data, mod: time.Unix(1_700_000_000, 0), fastBytes: fastBytes, slow: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.url = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: b}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

func (b *rangeBase) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Mod-Offload-Bypass") != "true" || r.URL.Path != "/big.bin" {
		http.Error(w, "no", 404)
		return
	}
	w.Header().Set("ETag", fmt.Sprintf(`"%x"`, sha256.Sum256(b.data[:4096])))
	b.mu.Lock()
	slow := b.slow
	if r.Method == http.MethodGet {
		b.ranges = append(b.ranges, r.Header.Get("Range"))
	}
	b.mu.Unlock()
	if r.Method == http.MethodGet && r.Header.Get("Range") == "" && slow {
		w.Header().Set("Content-Length", fmt.Sprint(len(b.data)))
		w.Header().Set("Last-Modified", b.mod.UTC().Format(http.TimeFormat))
		w.Write(b.data[:b.fastBytes])
		for i := b.fastBytes; i < len(b.data); i += 64 << 10 {
			if _, err := w.Write(b.data[i:min(i+64<<10, len(b.data))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
		return
	}
	http.ServeContent(w, r, "", b.mod, bytes.NewReader(b.data))
}

func (b *rangeBase) gets() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.ranges...)
}

// cacheFiles lists the cache folder's files with the given suffix ("" for data files).
func cacheFiles(t *testing.T, dir, suffix string) []string {
	t.Helper()
	all, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
	var out []string
	for _, p := range all {
		isData := !strings.HasSuffix(p, ".part") && !strings.HasSuffix(p, ".resume") &&
			!strings.HasSuffix(p, ".cur") && !strings.HasSuffix(p, ".lock") // pointers and locks (cache/lockfile.go)
		if suffix == "" && isData || suffix != "" && strings.HasSuffix(p, suffix) {
			out = append(out, p)
		}
	}
	return out
}

// resumedFrom checks the download after the restart: the bytes, and that the base saw,
// after the first GET, one ranged GET for the rest from at least minFrom.
func resumedFrom(t *testing.T, b *rangeBase, d *daemon, cacheDir string, minFrom int) {
	t.Helper()
	if sum, code := sha(t, d.url+"/big.bin"); code != 200 || sum != sha256.Sum256(b.data) {
		t.Fatalf("after restart: status %d, sha256 differs: %v", code, sum != sha256.Sum256(b.data))
	}
	g := b.gets()
	var from, last int
	if len(g) != 2 || g[0] != "" {
		t.Fatalf("base saw GETs with Range %q: want the whole file, then one ranged GET", g)
	}
	if _, err := fmt.Sscanf(g[1], "bytes=%d-%d", &from, &last); err != nil || from < minFrom || last != len(b.data)-1 {
		t.Fatalf("the resumed GET asked for %q, want bytes=N-%d with N >= %d", g[1], len(b.data)-1, minFrom)
	}
	t.Logf("resumed at %d of %d bytes", from, len(b.data))
	waitFor(t, func() bool { return len(cacheFiles(t, cacheDir, "")) == 1 })
	data, err := os.ReadFile(cacheFiles(t, cacheDir, "")[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[4096:], b.data) {
		t.Fatal("the committed entry differs from the base's file")
	}
	if left := append(cacheFiles(t, cacheDir, ".part"), cacheFiles(t, cacheDir, ".resume")...); len(left) != 0 {
		t.Errorf("left after commit: %v", left)
	}
	// And warm: no more GETs.
	if sum, _ := sha(t, d.url+"/big.bin"); sum != sha256.Sum256(b.data) || len(b.gets()) != 2 {
		t.Errorf("warm download: %d GETs", len(b.gets()))
	}
}

// TestKill9ResumesFill: the built daemon is killed with SIGKILL in the middle of a fill
// from a slow base, after its first checkpoint (64 MiB); restarted, it resumes the fill
// with a ranged GET for the rest only, and the entry is byte-identical to the file.
func TestKill9ResumesFill(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100 MiB; skipped with -short")
	}
	data := make([]byte, 100<<20)
	rand.Read(data)
	b := startRangeBase(t, data, 72<<20)
	cacheDir := t.TempDir()
	d := startDaemon(t, "--base", b.url, "--cache", cacheDir)
	resp, err := http.Get(d.url + "/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	io.ReadFull(resp.Body, make([]byte, 1<<20))
	// The first checkpoint: the sidecar's second slot is written after the fsync.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if s := cacheFiles(t, cacheDir, ".resume"); len(s) == 1 {
			if st, err := os.Stat(s[0]); err == nil && st.Size() >= 1024 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint: %s", d.stderr)
		}
	}
	d.cmd.Process.Kill()
	d.cmd.Wait()
	if p := cacheFiles(t, cacheDir, ".part"); len(p) != 1 {
		t.Fatalf("want one unfinished fill after kill -9, found %v", p)
	}
	b.mu.Lock()
	b.slow = false
	b.mu.Unlock()
	d2 := startDaemon(t, "--base", b.url, "--cache", cacheDir)
	if !strings.Contains(d2.stderr.String(), "keeping unfinished fill") {
		t.Errorf("restart did not keep the fill: %s", d2.stderr)
	}
	resumedFrom(t, b, d2, cacheDir, 64<<20)
}

// TestSigtermResumesFill: a clean shutdown (SIGTERM, the grace runs out while a fill is
// under way) checkpoints the fill however far it got, and the next start resumes it.
func TestSigtermResumesFill(t *testing.T) {
	data := make([]byte, 12<<20)
	rand.Read(data)
	b := startRangeBase(t, data, 3<<20)
	cacheDir := t.TempDir()
	d := startDaemon(t, "--base", b.url, "--cache", cacheDir, "--grace", "200ms")
	resp, err := http.Get(d.url + "/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	io.ReadFull(resp.Body, make([]byte, 3<<20))
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not exit on SIGTERM: %s", d.stderr)
	}
	if s := cacheFiles(t, cacheDir, ".resume"); len(s) != 1 {
		t.Fatalf("no checkpoint at shutdown: %v\n%s", s, d.stderr)
	}
	b.mu.Lock()
	b.slow = false
	b.mu.Unlock()
	d2 := startDaemon(t, "--base", b.url, "--cache", cacheDir)
	resumedFrom(t, b, d2, cacheDir, 3<<20)
}
