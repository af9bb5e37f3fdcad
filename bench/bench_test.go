package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunAgainstNetHTTP(t *testing.T) {
	body := strings.Repeat("x", 100<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("/f", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f", time.Unix(1e9, 0), strings.NewReader(body))
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/f", 307) })
	mux.HandleFunc("/missing", http.NotFound)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	res, err := Run(context.Background(), Config{URLs: []string{srv.URL + "/f", srv.URL + "/redirect"}, Conns: 8, Requests: 200, KeepAlive: true, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	// Each redirect is one response more: 200 requests, about half of them redirected.
	if res.Errors != 0 || res.Statuses[200] != 200 || res.Statuses[307] == 0 {
		t.Fatalf("result %+v", res)
	}
	if res.Bytes < 200*int64(len(body)) || len(res.SHA256) != 1 {
		t.Fatalf("read %d bytes, sums %v", res.Bytes, res.SHA256)
	}
	if res.FirstByte.P50 <= 0 || res.LastByte.Max < res.LastByte.P50 {
		t.Fatalf("latencies %+v %+v", res.FirstByte, res.LastByte)
	}

	res, err = Run(context.Background(), Config{URLs: []string{srv.URL + "/missing"}, Conns: 2, Requests: 10})
	if err != nil || res.Errors != 10 || res.Statuses[404] != 10 {
		t.Fatalf("404s: %v %+v", err, res)
	}
}

func TestRateLimitedReaders(t *testing.T) {
	body := strings.Repeat("y", 1<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(body))
	}))
	defer srv.Close()
	res, err := Run(context.Background(), Config{URLs: []string{srv.URL}, Conns: 5, Duration: time.Second, Rate: 50 << 10})
	if err != nil {
		t.Fatal(err)
	}
	// 5 readers at 50 KiB/s for a second: far less than the 5 MiB a fast read would take.
	if res.Unfinished != 5 || res.Bytes > 5*120<<10 || res.PeakConns != 5 {
		t.Fatalf("rate not held: %+v", res)
	}
}

func TestRandomRanges(t *testing.T) {
	body := strings.Repeat("z", 5000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "z", time.Unix(1e9, 0), strings.NewReader(body))
	}))
	defer srv.Close()
	res, err := Run(context.Background(), Config{URLs: []string{srv.URL + "/z"}, Conns: 4, Requests: 100, KeepAlive: true, Range: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.Statuses[206] < 90 {
		t.Fatalf("ranges inside a 5,000-byte file: %+v", res)
	}
}

// TestDurationRunHasNoPhantomErrors: the dials and requests cut by the end of a
// duration-bound run are not errors (they once showed as "dial tcp: i/o timeout").
func TestDurationRunHasNoPhantomErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("y", 1024)))
	}))
	defer srv.Close()
	for range 3 {
		res, err := Run(context.Background(), Config{URLs: []string{srv.URL + "/"}, Conns: 20, Duration: 700 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Errors != 0 || res.Requests == 0 {
			t.Fatalf("%d errors (%v) in %d requests", res.Errors, res.ErrorSamples, res.Requests)
		}
	}
}

// TestColdDiskAndProbe: --drop-cache evicts the files of a folder from the page cache
// before the run, and --probe measures a hot URL's latency during it.
func TestColdDiskAndProbe(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a.bin", "b.bin"} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	res, err := Run(context.Background(), Config{URLs: []string{srv.URL + "/a.bin", srv.URL + "/b.bin"}, Conns: 2,
		Duration: 500 * time.Millisecond, DropCache: []string{dir}, Probe: srv.URL + "/a.bin", ProbeConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Dropped != 2 {
		t.Errorf("dropped %d files, want 2", res.Dropped)
	}
	if res.Probe == nil || res.Probe.Requests == 0 || res.Probe.Errors != 0 || res.Probe.Latency.P99 <= 0 {
		t.Errorf("probe: %+v", res.Probe)
	}
	if _, err := DropPageCache([]string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("a missing folder was not an error")
	}
}

// TestProbeRate: a probe with --probe-rate sends no more than its schedule allows, and
// times each request from when it was due: a stall of the server shows in every
// request it held back, not only in the one it was answering.
func TestProbeRate(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" && n.Add(1) == 5 {
			time.Sleep(300 * time.Millisecond) // one stall
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	const rate, run = 100, time.Second
	res, err := Run(context.Background(), Config{URLs: []string{srv.URL + "/load"}, Conns: 1,
		Duration: run, Probe: srv.URL + "/probe", ProbeConns: 1, ProbeRate: rate})
	if err != nil {
		t.Fatal(err)
	}
	p := res.Probe
	if p == nil || p.Errors != 0 || p.Requests < 10 || p.Requests > int64(rate*run.Seconds())+2 {
		t.Fatalf("probe at %d/s for %v: %+v", rate, run, p)
	}
	// ~30 requests fell due during the stall, waiting 300 ms down to 0: the slowest
	// tenth of ~100 waited 200 ms or more. Timed from when they were sent, only one did.
	if p.Latency.P90 < 100 {
		t.Errorf("p90 %.1f ms: the requests the stall held back were timed from their send", p.Latency.P90)
	}
}
