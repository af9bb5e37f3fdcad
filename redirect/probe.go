package redirect

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"
)

// DefaultProbeTimeout bounds one probe when no timeout is configured.
const DefaultProbeTimeout = 3 * time.Second

var probeClient = &http.Client{
	Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// Probe asks an offload host whether it is up: GET /robots.txt on its public listener,
// which offload serve answers itself without asking the base, must give 200 in time.
func Probe(ctx context.Context, h Host, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL("/robots.txt"), nil)
	if err != nil {
		return errorf("probe %s: %v", h.Addr, err)
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return errorf("probe %s: %v", h.Addr, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return errorf("probe %s: answered %s", h.Addr, resp.Status)
	}
	return nil
}

// CheckHosts probes every host at once and returns why each that failed did, by Addr.
func CheckHosts(ctx context.Context, hosts []Host, timeout time.Duration) map[string]error {
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { errs[i] = Probe(ctx, h, timeout) })
	}
	wg.Wait()
	down := map[string]error{}
	for i, h := range hosts {
		if errs[i] != nil {
			down[h.Addr] = errs[i]
		}
	}
	return down
}

// probeLoop keeps probeDown current until Close.
func (rd *Redirector) probeLoop(interval, timeout time.Duration) {
	defer rd.probed.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-rd.stop; cancel() }()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		failed := CheckHosts(ctx, rd.hosts, timeout)
		if ctx.Err() != nil {
			return
		}
		down := map[string]bool{}
		rd.mu.Lock()
		for _, h := range rd.hosts {
			err, bad := failed[h.Addr]
			switch {
			case bad && !rd.probeDown[h.Addr]:
				rd.logf("redirect: offload host %s is down, out of rotation: %v", h.Addr, err)
			case !bad && rd.probeDown[h.Addr]:
				rd.logf("redirect: offload host %s answers again, back in rotation", h.Addr)
			}
			down[h.Addr] = bad
		}
		rd.probeDown = down // replaced, never changed in place: Pick keeps the map it took
		rd.mu.Unlock()
		select {
		case <-rd.stop:
			return
		case <-tick.C:
		}
	}
}
