// Package server is the offload daemon's HTTP server: a gnet event handler that parses
// requests with proto, asks the cache off the event loop, and sends bodies with
// sendfile(2) from the loop, waiting for writability without holding buffers.
//
// The one rule of this package: a gnet.Conn is touched only on its own event loop,
// except through the calls gnet documents as safe elsewhere — Wake, Close and Fd. Code
// that runs in other goroutines (the cache fetch in conn.fetch, the write poller, the
// sweeper) uses only those, and hands data to the loop through conn.pending.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// Config is what the server needs; Cache and Limiter are required.
type Config struct {
	Listen []string // "host:port" addresses to listen on
	// TLSListen are the addresses that speak HTTPS (TLS 1.2 and 1.3); TLS is then
	// required: its certificates (GetCertificate, for SNI and reloads), NextProtos
	// and session tickets. The server sets MinVersion and ALPN http/1.1 itself.
	TLSListen []string
	TLS       *tls.Config
	// ACMEChallenge, when set, answers an ACME HTTP-01 challenge on any listener:
	// given the token (the last segment of /.well-known/acme-challenge/TOKEN) it
	// returns the key authorization to send with a 200, or ok false for a 404. It may
	// block (it may read a file): the server calls it off the event loop.
	ACMEChallenge func(ctx context.Context, token string) (keyAuth []byte, ok bool)
	Cache         *cache.Cache // where bodies come from
	Limiter       *limiter.Limiter
	AccessLog     *AccessLog    // nil: no access log
	Timeout       time.Duration // drop a client that accepts no bytes this long; default 45 s
	HeaderTimeout time.Duration // a request head must arrive within this; default 10 s
	IdleTimeout   time.Duration // keep-alive connections idle this long are closed; default 60 s
	Loops         int           // event loops; 0: one per core
	NoSendfile    bool          // copy bodies with pread and Write instead of sendfile(2)
	// DiskWorkers is how many goroutines read data-file pages that are not in memory,
	// so that no loop waits for the disk; default 16, negative: none (the loop reads).
	DiskWorkers int
	OnBoot      func() error // called once the listeners are bound (privilege drop)
	Logf        func(format string, args ...any)

	// diskPool, when set, sees the disk pool before the server starts: tests replace
	// its reads there, before any loop can look at them.
	diskPool func(*diskPool)
}

// Server is the offload server. Create it with New and run it with Serve.
type Server struct {
	gnet.BuiltinEventEngine
	cfg    Config
	eng    gnet.Engine
	poller *writePoller
	disk   *diskPool // nil when DiskWorkers < 0
	// handshakes bounds the TLS handshake goroutines (see handshakeGate).
	handshakes handshakeGate
	metrics    *metrics
	draining   atomic.Bool
	ready      chan struct{} // closed when the listeners are bound
	addr       net.Addr      // the first listener's address, once bound
	tlsCfg     *tls.Config   // the HTTPS listeners' configuration; nil without any
	tlsAddrs   []net.Addr    // the HTTPS listeners' addresses, once bound
	bootErr    error

	mu    sync.Mutex // protects conns
	conns map[*conn]struct{}
}

// New checks cfg and prepares a server.
func New(cfg Config) (*Server, error) {
	if cfg.Cache == nil || cfg.Limiter == nil || len(cfg.Listen)+len(cfg.TLSListen) == 0 {
		return nil, errors.New("server: Cache, Limiter and Listen are required")
	}
	if len(cfg.TLSListen) > 0 && cfg.TLS == nil {
		return nil, errors.New("server: TLSListen needs TLS (certificates)")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 45 * time.Second
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	p, err := newWritePoller()
	if err != nil {
		return nil, err
	}
	s := &Server{
		handshakes: handshakeGate{max: maxHandshakes},
		cfg:        cfg,
		poller:     p,
		metrics:    newMetrics(cfg.Cache, cfg.Limiter),
		ready:      make(chan struct{}),
		conns:      map[*conn]struct{}{},
	}
	if len(cfg.TLSListen) > 0 {
		s.tlsCfg = serverTLS(cfg.TLS)
		if !kernelTLS() {
			cfg.Logf("server: this kernel has no kTLS: HTTPS records are encrypted in userspace")
		}
	}
	if cfg.DiskWorkers == 0 {
		cfg.DiskWorkers = 16
	}
	if cfg.DiskWorkers > 0 {
		s.disk = newDiskPool(cfg.DiskWorkers, s.metrics)
		if cfg.diskPool != nil {
			cfg.diskPool(s.disk)
		}
	}
	return s, nil
}

// Serve binds the listeners and serves until Shutdown; it blocks.
func (s *Server) Serve() error {
	var addrs []string
	for _, a := range append(append([]string(nil), s.cfg.Listen...), s.cfg.TLSListen...) {
		addrs = append(addrs, "tcp://"+a)
	}
	opts := []gnet.Option{
		gnet.WithReuseAddr(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{s.cfg.Logf}),
	}
	if s.cfg.Loops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(s.cfg.Loops))
	} else {
		opts = append(opts, gnet.WithMulticore(true))
	}
	stopSweep := make(chan struct{})
	go s.sweep(stopSweep)
	err := gnet.Rotate(s, addrs, opts...)
	close(stopSweep)
	s.poller.close()
	if s.disk != nil {
		s.disk.close()
	}
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	if s.bootErr != nil {
		return s.bootErr
	}
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

// Ready is closed once the listeners are bound (or binding failed).
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the first listener's address, valid after Ready.
func (s *Server) Addr() net.Addr { return s.addr }

// TLSAddr is the first HTTPS listener's address, valid after Ready; nil without one.
func (s *Server) TLSAddr() net.Addr {
	if len(s.tlsAddrs) == 0 {
		return nil
	}
	return s.tlsAddrs[0]
}

// boundAddr is the address listener addr was bound to (its port, if it asked for 0).
func boundAddr(eng gnet.Engine, addr string) net.Addr {
	fd, err := eng.DupListener("tcp", addr)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}

// isTLS says whether a connection came in on an HTTPS listener, by the local address
// of its socket (gnet gives a connection its listener's address as it was asked for,
// port 0 included).
func (s *Server) isTLS(gc gnet.Conn) bool {
	if len(s.tlsAddrs) == 0 {
		return false
	}
	sa, err := unix.Getsockname(gc.Fd())
	if err != nil {
		return false
	}
	var ip net.IP
	var port int
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		ip, port = net.IP(a.Addr[:]), a.Port
	case *unix.SockaddrInet6:
		ip, port = net.IP(a.Addr[:]), a.Port
	default:
		return false
	}
	for _, a := range s.tlsAddrs {
		if ta, ok := a.(*net.TCPAddr); ok && ta.Port == port && (ta.IP.IsUnspecified() || ta.IP.Equal(ip)) {
			return true
		}
	}
	return false
}

// serverTLS is the HTTPS listeners' configuration: the caller's certificates and
// tickets, with TLS 1.2 at least, ALPN http/1.1, and full-size records (downloads
// are what this server is for; nginx's default buffer is a full record too).
func serverTLS(in *tls.Config) *tls.Config {
	cfg := in.Clone()
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	if !slices.Contains(cfg.NextProtos, "http/1.1") {
		cfg.NextProtos = append([]string{"http/1.1"}, cfg.NextProtos...)
	}
	cfg.DynamicRecordSizingDisabled = true
	return cfg
}

// OnBoot records the bound address and runs the configured hook (privilege drop).
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	if len(s.cfg.Listen) > 0 {
		s.addr = boundAddr(eng, s.cfg.Listen[0])
	}
	for _, a := range s.cfg.TLSListen {
		s.tlsAddrs = append(s.tlsAddrs, boundAddr(eng, a))
	}
	if s.addr == nil && len(s.tlsAddrs) > 0 {
		s.addr = s.tlsAddrs[0]
	}
	if s.cfg.OnBoot != nil {
		if err := s.cfg.OnBoot(); err != nil {
			s.bootErr = err
			close(s.ready)
			return gnet.Shutdown
		}
	}
	close(s.ready)
	return gnet.None
}

// Shutdown stops taking requests, lets the responses under way finish until ctx ends,
// then closes every connection and stops the event loops.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for s.metrics.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			s.cfg.Logf("server: grace period over with %d downloads under way; closing them", s.metrics.inflight.Load())
			return s.stop()
		case <-t.C:
		}
	}
	return s.stop()
}

func (s *Server) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.eng.Stop(ctx)
	s.cfg.AccessLog.Flush()
	return err
}

// Downloads is how many responses are being sent now.
func (s *Server) Downloads() int64 { return s.metrics.inflight.Load() }

// OnOpen admits a connection or refuses it with 503.
func (s *Server) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	if s.draining.Load() {
		return nil, gnet.Close
	}
	var peer netip.Addr
	if ta, ok := gc.RemoteAddr().(*net.TCPAddr); ok {
		peer = ta.AddrPort().Addr().Unmap()
	}
	isTLS := s.isTLS(gc)
	if r := s.cfg.Limiter.OpenConn(peer); r != limiter.Allowed {
		reason := "too many connections"
		if r == limiter.TooManyConnsPerIP {
			reason = "too many connections from your address"
		}
		s.metrics.refusals.WithLabelValues(reason).Inc()
		s.metrics.request(503, 0, isTLS)
		if isTLS {
			return nil, gnet.Close // no handshake, no plain text on a TLS port
		}
		return refusal(reason), gnet.Close
	}
	c := newConn(s, gc, peer)
	if isTLS {
		c.tls = newTLSState(gc, s.tlsCfg)
		c.phase = phaseHandshake
	}
	gc.SetContext(c)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	return nil, gnet.None
}

// OnClose frees everything the connection held, on every way a connection can end.
func (s *Server) OnClose(gc gnet.Conn, _ error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	s.poller.forget(gc.Fd())
	c.close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.cfg.Limiter.CloseConn(c.peer)
	return gnet.None
}

// OnTraffic runs a connection's state machine: on new bytes, on Wake from the cache, the
// write poller or a fill, and after a turn's sendfile budget.
func (s *Server) OnTraffic(gc gnet.Conn) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.Close
	}
	return c.serve()
}

// sweep closes connections whose deadline passed, and idle ones while draining.
func (s *Server) sweep(stop <-chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var expired []*conn
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		draining := s.draining.Load()
		s.mu.Lock()
		for c := range s.conns {
			if d := c.deadline.Load(); d != 0 && now > d || draining && c.idle.Load() {
				expired = append(expired, c)
			}
		}
		s.mu.Unlock()
		for i, c := range expired {
			_ = c.gc.Close()
			expired[i] = nil
		}
		expired = expired[:0]
		s.handshakes.kick()
	}
}

func refusal(reason string) []byte {
	body := reason + "\n"
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"+
		"Content-Length: %d\r\nRetry-After: 10\r\nConnection: close\r\n\r\n%s", len(body), body)
}

// gnetLogger passes gnet's warnings and errors to Logf and drops its chatter.
type gnetLogger struct{ logf func(string, ...any) }

func (gnetLogger) Debugf(string, ...any)          {}
func (gnetLogger) Infof(string, ...any)           {}
func (l gnetLogger) Warnf(f string, args ...any)  { l.logf("gnet: "+f, args...) }
func (l gnetLogger) Errorf(f string, args ...any) { l.logf("gnet: "+f, args...) }
func (l gnetLogger) Fatalf(f string, args ...any) { l.logf("gnet: "+f, args...) }
