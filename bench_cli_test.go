package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBenchProbeProcess runs the README's cold-disk recipe's probe: `offload bench`
// with --probe and --probe-rate as a process of its own, ended by SIGTERM, which
// reports what it measured as JSON and exits 0.
func TestBenchProbeProcess(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1024)))
	}))
	defer srv.Close()
	cmd := exec.Command(offloadBin, "bench", "-c", "1", "-d", "1h", "--rate", "1K",
		"--probe", srv.URL+"/small.bin", "--probe-rate", "100", "--json", srv.URL+"/small.bin")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("offload bench after SIGTERM: %v\n%s", err, errOut.String())
	}
	var res struct {
		Probe struct {
			Requests int64
			Errors   int64
		}
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	// About 100 a second for ~1.5 s, on a schedule: never more than it allows.
	if p := res.Probe; p.Errors != 0 || p.Requests < 20 || p.Requests > 160 {
		t.Errorf("probe at 100/s for 1.5 s: %+v", p)
	}
}
