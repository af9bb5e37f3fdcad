// Package bench is the load generator behind `offload bench`: many connections, fast or
// rate-limited readers, optional random ranges, redirects followed, latency percentiles,
// and the target's memory per open connection.
package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config is one benchmark run.
type Config struct {
	URLs      []string      // requested in turn by each connection
	Conns     int           // connections open at once
	Requests  int           // total requests; 0: run for Duration
	Duration  time.Duration // when Requests is 0
	Rate      int64         // bytes/s each connection reads; 0: as fast as it can
	Range     bool          // ask for random byte ranges (after a first full response gives the size)
	KeepAlive bool          // reuse connections (else one request per connection)
	Verify    bool          // sha256 every full body; all bodies of one URL must agree
	PID       int           // sample this process's RSS; 0: none
	Progress  io.Writer     // progress lines, once a second; nil: none
	// DropCache names folders whose files are evicted from the page cache before the
	// run (fdatasync, then POSIX_FADV_DONTNEED), so the server reads them from disk.
	DropCache []string
	// Probe is a URL (a small hot file) that ProbeConns keep-alive connections ask for
	// in a loop while the run goes on: its latency shows whether the other clients'
	// work stalls the server.
	Probe      string
	ProbeConns int
	// ProbeRate is how many probe requests a second all ProbeConns send together, on a
	// fixed schedule; each latency counts from when its request was due, so a stall
	// that holds the probe back is measured in full. 0: back to back, as fast as the
	// server answers (then a server that answers faster does more hot work meanwhile,
	// and its other clients get that much less of a shared machine).
	ProbeRate float64
	// TLS is the client configuration for https:// URLs (trusted roots, or
	// InsecureSkipVerify); nil: the system's roots.
	TLS *tls.Config
}

// Result is what a run measured.
type Result struct {
	Requests      int64             `json:"requests"`
	Errors        int64             `json:"errors"`
	Unfinished    int64             `json:"unfinished"` // bodies cut by the end of the run
	Statuses      map[int]int64     `json:"statuses"`
	ErrorSamples  []string          `json:"error_samples,omitempty"`
	Bytes         int64             `json:"bytes"`
	Seconds       float64           `json:"seconds"`
	RequestsPerS  float64           `json:"requests_per_second"`
	BytesPerS     float64           `json:"bytes_per_second"`
	FirstByte     Percentiles       `json:"first_byte_ms"`
	LastByte      Percentiles       `json:"last_byte_ms"`
	PeakConns     int64             `json:"peak_open_connections"`
	BaseRSS       int64             `json:"target_rss_before_bytes,omitempty"`
	PeakRSS       int64             `json:"target_peak_rss_bytes,omitempty"`
	RSSPerConn    float64           `json:"target_rss_per_connection_bytes,omitempty"`
	SHA256        map[string]string `json:"sha256,omitempty"`
	ClientCPU     float64           `json:"client_cpu_percent"`
	RaisedFDLimit uint64            `json:"fd_limit"`
	Dropped       int               `json:"dropped_files,omitempty"` // files evicted from the page cache first
	Probe         *ProbeResult      `json:"probe,omitempty"`
}

// ProbeResult is what the hot-file probe measured during the run.
type ProbeResult struct {
	Requests int64       `json:"requests"`
	Errors   int64       `json:"errors"`
	Latency  Percentiles `json:"latency_ms"`
}

// Percentiles of a latency, in milliseconds.
type Percentiles struct {
	P50, P90, P99, Max float64
}

type run struct {
	cfg      Config
	deadline time.Time
	issued   atomic.Int64 // requests started
	open     atomic.Int64 // connections open now
	peak     atomic.Int64
	bytes    atomic.Int64
	stop     atomic.Bool
	sizes    sync.Map // URL → body length, learnt from full responses, for --range

	mu       sync.Mutex // protects the fields below
	res      Result
	ttfb     []float64
	ttlb     []float64
	sums     map[string]string
	verified map[string]bool
}

// Run performs the benchmark. It stops by itself at its count or duration.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if len(cfg.URLs) == 0 || cfg.Conns <= 0 {
		return nil, errors.New("bench: need URLs and at least one connection")
	}
	if cfg.Requests <= 0 && cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	for _, u := range append(cfg.URLs[:len(cfg.URLs):len(cfg.URLs)], cfg.Probe) {
		if u == cfg.Probe && u == "" {
			continue
		}
		if pu, err := url.Parse(u); err != nil || pu.Scheme != "http" && pu.Scheme != "https" || pu.Host == "" {
			return nil, fmt.Errorf("bench: %q: want http[s]://host[:port]/path", u)
		}
	}
	dropped, err := DropPageCache(cfg.DropCache)
	if err != nil {
		return nil, err
	}
	limit, err := raiseFDLimit(uint64(cfg.Conns) + 256)
	if err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, sums: map[string]string{}}
	r.res.Statuses = map[int]int64{}
	r.res.Dropped = dropped
	r.res.RaisedFDLimit = limit
	if cfg.PID > 0 {
		r.res.BaseRSS = rss(cfg.PID)
	}
	start := time.Now()
	if cfg.Duration > 0 && cfg.Requests <= 0 {
		r.deadline = start.Add(cfg.Duration)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !r.deadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, r.deadline)
		defer cancel()
	}
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	samplerDone := make(chan struct{})
	go r.sample(ctx, samplerDone, start)

	var probe *prober
	if cfg.Probe != "" {
		probe = startProbe(ctx, cfg.Probe, max(cfg.ProbeConns, 1), cfg.ProbeRate)
	}
	var wg sync.WaitGroup
	dials := make(chan struct{}, 256) // connections being set up at once: the listen backlog is finite
	for i := range cfg.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(ctx, i, dials)
		}()
	}
	wg.Wait()
	cancel()
	<-samplerDone
	if probe != nil {
		r.res.Probe = probe.wait()
	}
	elapsed := time.Since(start)
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())

	res := r.res
	res.Bytes = r.bytes.Load()
	res.Seconds = elapsed.Seconds()
	res.RequestsPerS = float64(res.Requests) / res.Seconds
	res.BytesPerS = float64(res.Bytes) / res.Seconds
	res.FirstByte, res.LastByte = percentiles(r.ttfb), percentiles(r.ttlb)
	res.PeakConns = r.peak.Load()
	res.ClientCPU = 100 * cpu.Seconds() / elapsed.Seconds()
	if len(r.sums) > 0 {
		res.SHA256 = r.sums
	}
	if res.PeakRSS > 0 && res.PeakConns > 0 {
		res.RSSPerConn = float64(res.PeakRSS-res.BaseRSS) / float64(res.PeakConns)
	}
	return &res, nil
}

// sample watches open connections and the target's RSS, and prints progress.
func (r *run) sample(ctx context.Context, done chan struct{}, start time.Time) {
	defer close(done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.cfg.PID > 0 {
			if v := rss(r.cfg.PID); v > 0 {
				r.mu.Lock()
				if v > r.res.PeakRSS {
					r.res.PeakRSS = v
				}
				r.mu.Unlock()
			}
		}
		if r.cfg.Progress != nil && time.Since(last) >= time.Second {
			last = time.Now()
			r.mu.Lock()
			n, e := r.res.Requests, r.res.Errors
			r.mu.Unlock()
			fmt.Fprintf(r.cfg.Progress, "\r%6.1fs  %d open  %d done  %d errors  %.1f MiB read ",
				time.Since(start).Seconds(), r.open.Load(), n, e, float64(r.bytes.Load())/(1<<20))
		}
	}
}

func (r *run) more() bool {
	if r.stop.Load() {
		return false
	}
	if r.cfg.Requests > 0 {
		return r.issued.Add(1) <= int64(r.cfg.Requests)
	}
	return time.Now().Before(r.deadline)
}

// worker is one connection: it requests the URLs in turn until the run ends.
func (r *run) worker(ctx context.Context, id int, dials chan struct{}) {
	var c *clientConn
	defer func() {
		if c != nil {
			c.close(r)
		}
	}()
	rng := rand.New(rand.NewPCG(uint64(id), 99))
	for i := id; r.more(); i++ {
		target := r.cfg.URLs[i%len(r.cfg.URLs)]
		for hops := 0; hops < 5; hops++ {
			u, _ := url.Parse(target)
			if c == nil || c.host != u.Scheme+"://"+u.Host || !r.cfg.KeepAlive {
				if c != nil {
					c.close(r)
					c = nil
				}
				var err error
				if c, err = r.dial(ctx, u, dials); err != nil {
					if r.over(ctx) {
						return // a dial cut by the end of the run is no error
					}
					r.fail(err)
					break
				}
			}
			loc, keep, err := r.request(ctx, c, u, rng)
			if !keep || err != nil {
				c.close(r)
				c = nil
			}
			if err != nil || loc == "" {
				if err != nil {
					if r.over(ctx) && errors.Is(err, errStopped) {
						return
					}
					r.fail(err)
				}
				break
			}
			next, err := u.Parse(loc)
			if err != nil {
				r.fail(err)
				break
			}
			target = next.String()
		}
	}
}

var errStopped = errors.New("stopped at the end of the run")

type clientConn struct {
	host string
	nc   net.Conn
	br   *bufio.Reader
}

func (c *clientConn) close(r *run) {
	c.nc.Close()
	r.open.Add(-1)
}

func (r *run) dial(ctx context.Context, u *url.URL, dials chan struct{}) (*clientConn, error) {
	select {
	case dials <- struct{}{}:
	case <-ctx.Done():
		return nil, errStopped
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", u.Host)
	if err == nil && r.cfg.Rate > 0 {
		// A small receive window, as a slow link's would be, so the rate holds.
		nc.(*net.TCPConn).SetReadBuffer(16 << 10)
	}
	if err == nil && u.Scheme == "https" {
		cfg := &tls.Config{}
		if r.cfg.TLS != nil {
			cfg = r.cfg.TLS.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		if err = tc.HandshakeContext(ctx); err != nil {
			nc.Close()
		}
		nc = tc
	}
	<-dials
	if err != nil {
		return nil, err
	}
	if n := r.open.Add(1); n > r.peak.Load() {
		r.peak.Store(n) // racy max: good enough for a peak gauge
	}
	return &clientConn{host: u.Scheme + "://" + u.Host, nc: nc, br: bufio.NewReaderSize(nc, 16<<10)}, nil
}

// request sends one request on c and reads the response; it returns the Location of a
// redirect to follow, and whether c may carry another request.
func (r *run) request(ctx context.Context, c *clientConn, u *url.URL, rng *rand.Rand) (string, bool, error) {
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: offload-bench\r\n", path, u.Host)
	if r.cfg.Range {
		// A random range inside the file, once a full response has told its size.
		if v, ok := r.sizes.Load(u.String()); ok && v.(int64) > 0 {
			size := v.(int64)
			start := rng.Int64N(size)
			fmt.Fprintf(&req, "Range: bytes=%d-%d\r\n", start, start+rng.Int64N(size-start))
		}
	}
	if !r.cfg.KeepAlive {
		req.WriteString("Connection: close\r\n")
	}
	req.WriteString("\r\n")
	start := time.Now()
	stopWatch := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stopWatch()
	if _, err := io.WriteString(c.nc, req.String()); err != nil {
		return "", false, r.stopped(ctx, err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return "", false, r.stopped(ctx, err)
	}
	ttfb := time.Since(start)
	if r.cfg.Range && resp.StatusCode == 200 && resp.ContentLength > 0 {
		r.sizes.Store(u.String(), resp.ContentLength)
	}
	r.mu.Lock()
	r.ttfb = append(r.ttfb, float64(ttfb.Microseconds())/1000)
	r.mu.Unlock()
	var h io.Writer = io.Discard
	var hasher = sha256.New()
	full := resp.StatusCode == 200 && r.cfg.Verify
	if full {
		h = hasher
	}
	var body io.Reader = resp.Body
	if r.cfg.Rate > 0 {
		body = &paced{r: resp.Body, rate: r.cfg.Rate, start: time.Now()}
	}
	n, err := io.Copy(countWriter{h, &r.bytes}, body)
	resp.Body.Close()
	if err != nil {
		if ctx.Err() != nil {
			r.mu.Lock()
			r.res.Unfinished++
			r.mu.Unlock()
			return "", false, errStopped
		}
		return "", false, err
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return "", false, fmt.Errorf("%s: %d of %d bytes", u, n, resp.ContentLength)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Requests++
	r.res.Statuses[resp.StatusCode]++
	r.ttlb = append(r.ttlb, float64(time.Since(start).Microseconds())/1000)
	if full {
		sum := hex.EncodeToString(hasher.Sum(nil))
		if prev, ok := r.sums[u.String()]; ok && prev != sum {
			r.res.Errors++
			r.noteError(fmt.Sprintf("%s: bodies differ (%s, %s)", u, prev, sum))
		}
		r.sums[u.String()] = sum
	}
	keep := r.cfg.KeepAlive && !resp.Close
	switch resp.StatusCode {
	case 301, 302, 303, 307, 308:
		return resp.Header.Get("Location"), keep, nil
	}
	if resp.StatusCode >= 400 {
		r.res.Errors++
		r.noteError(fmt.Sprintf("%s: status %d", u, resp.StatusCode))
	}
	return "", keep, nil
}

// over reports whether the run has ended: canceled, or past its deadline (a dial or
// read that the deadline cut can return before the context says so).
func (r *run) over(ctx context.Context) bool {
	return ctx.Err() != nil || !r.deadline.IsZero() && !time.Now().Before(r.deadline)
}

func (r *run) stopped(ctx context.Context, err error) error {
	if r.over(ctx) {
		return errStopped
	}
	return err
}

func (r *run) fail(err error) {
	if errors.Is(err, errStopped) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Errors++
	r.noteError(err.Error())
}

// noteError keeps the first few error messages; r.mu is held.
func (r *run) noteError(msg string) {
	if len(r.res.ErrorSamples) < 5 {
		r.res.ErrorSamples = append(r.res.ErrorSamples, msg)
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return c.w.Write(p)
}

// paced reads at most rate bytes per second.
type paced struct {
	r     io.Reader
	rate  int64
	start time.Time
	read  int64
}

func (p *paced) Read(b []byte) (int, error) {
	// Ten small reads a second at most, each no more than a tenth of the rate.
	chunk := max(p.rate/10, 1)
	if int64(len(b)) > chunk {
		b = b[:chunk]
	}
	if due := p.start.Add(time.Duration(float64(p.read) / float64(p.rate) * float64(time.Second))); time.Until(due) > 0 {
		time.Sleep(time.Until(due))
	}
	n, err := p.r.Read(b)
	p.read += int64(n)
	return n, err
}

func percentiles(v []float64) Percentiles {
	if len(v) == 0 {
		return Percentiles{}
	}
	slices.Sort(v)
	at := func(q float64) float64 { return v[min(len(v)-1, int(q*float64(len(v))))] }
	return Percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: v[len(v)-1]}
}

// rss is a process's resident set in bytes, from /proc; 0 when it cannot be read.
func rss(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// raiseFDLimit lifts the soft open-files limit to want (up to the hard limit).
func raiseFDLimit(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < want {
		lim.Cur = min(want, lim.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("bench: raise the open-files limit to %d: %w", want, err)
		}
	}
	if lim.Cur < want {
		return lim.Cur, fmt.Errorf("bench: %d connections need %d open files; the hard limit is %d (raise it: ulimit -Hn, or LimitNOFILE)", want-256, want, lim.Max)
	}
	return lim.Cur, nil
}
