package bench

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DropPageCache evicts every regular file under the given folders from the page cache
// (fdatasync, then POSIX_FADV_DONTNEED), as a real offload host's big files are: not in
// memory. It needs no privileges, unlike writing /proc/sys/vm/drop_caches. It returns
// how many files it evicted.
func DropPageCache(dirs []string) (int, error) {
	n := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			_ = unix.Fdatasync(int(f.Fd()))
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				return fmt.Errorf("fadvise %s: %w", path, err)
			}
			n++
			return nil
		})
		if err != nil {
			return n, fmt.Errorf("bench: drop page cache of %s: %w", dir, err)
		}
	}
	return n, nil
}

// prober asks for one URL over a few keep-alive connections until its context ends:
// back to back, or at a fixed rate.
type prober struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	lat    []float64
	errors int64
}

// startProbe starts conns connections asking for u. With a rate (requests a second,
// all connections together), connection i sends its k-th request when it is due, at
// (k*conns+i)/rate after the start, or at once when it is late; its latency counts
// from when it was due (as wrk2 does), so a server that stalls is not measured only
// by the few requests it let through.
func startProbe(ctx context.Context, u string, conns int, rate float64) *prober {
	p := &prober{}
	t0 := time.Now()
	for i := range conns {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
			defer client.CloseIdleConnections()
			for k := 0; ctx.Err() == nil; k++ {
				req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
				start := time.Now()
				if rate > 0 {
					start = t0.Add(time.Duration(float64(k*conns+i) / rate * float64(time.Second)))
					if d := time.Until(start); d > 0 {
						select {
						case <-time.After(d):
						case <-ctx.Done():
							return
						}
					}
				}
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				ms := float64(time.Since(start).Microseconds()) / 1000
				p.mu.Lock()
				if err != nil || resp.StatusCode != 200 {
					if ctx.Err() == nil {
						p.errors++
					}
				} else {
					p.lat = append(p.lat, ms)
				}
				p.mu.Unlock()
			}
		}()
	}
	return p
}

func (p *prober) wait() *ProbeResult {
	p.wg.Wait()
	return &ProbeResult{Requests: int64(len(p.lat)), Errors: p.errors, Latency: percentiles(p.lat)}
}
