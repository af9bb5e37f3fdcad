package main

// offload cgi: the offload server as a CGI program, for a host whose port 80 belongs to a
// web server that serves other sites too. The web server runs the program once per
// request. It answers exactly as offload serve does, by construction: the request head
// is rebuilt from the CGI environment and parsed by package proto, the answer is
// decided by package answer, and the body comes from the same cache folder, opened in
// its shared mode (cache.Config.Shared), which coordinates the processes through the file
// system: one GET at the base per cold file however many processes ask, and the cap on
// downloads per address and file kept in lock files (limiter.Slots).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cgi"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/modoffload/offload/answer"
	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
	"github.com/modoffload/offload/proto"
)

// configEnv names the config file of offload cgi; Apache passes it with
// `SetEnv OFFLOAD_CONFIG /etc/offload/offload.conf`.
const configEnv = "OFFLOAD_CONFIG"

// cgiConfigName is the config file looked for next to the program without configEnv.
const cgiConfigName = "offload.conf"

// startedAsCGI says whether a web server started the process as a CGI program. Then it
// runs offload cgi whatever its arguments, and reads none of them: Apache passes the
// words of a query string without '=' as arguments, and a client must not choose them.
func startedAsCGI() bool {
	return strings.HasPrefix(os.Getenv("GATEWAY_INTERFACE"), "CGI/")
}

// runCGI answers the one request the CGI environment describes, on stdout.
func runCGI() int {
	logger := log.New(os.Stderr, "offload cgi: ", 0) // the web server's error log dates it
	if os.Getenv("REQUEST_METHOD") == "" {
		fmt.Fprintln(os.Stderr, "offload cgi: no request: a web server runs this as a CGI program (see \"CGI mode\" in the README)")
		return 2
	}
	// A client that leaves makes writes to stdout fail with EPIPE rather than kill the
	// process with SIGPIPE: it ends its own way, its slot freed, a fill it leads
	// checkpointed for whoever takes it over.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	// The web server ends the process with SIGTERM once the request is over (mod_cgid
	// does, 3 s before a SIGKILL), and when the client leaves.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()

	if _, err := cgi.Request(); err != nil {
		// Nothing net/http/cgi can read (a malformed REQUEST_URI, Host, CONTENT_LENGTH
		// or SERVER_PROTOCOL): a 400 all the same, through an environment it can read,
		// rather than no answer at all.
		logger.Printf("%v", err)
		os.Setenv("REQUEST_URI", "/")
		os.Setenv("SERVER_PROTOCOL", "HTTP/1.0")
		os.Unsetenv("HTTP_HOST")
		os.Unsetenv("CONTENT_LENGTH")
		serveCGIPlan(answer.Text(400, "malformed request", ""))
		return 1
	}
	cfg, err := loadCGIConfig(os.Getenv)
	if err != nil {
		logger.Print(err)
		serveCGIPlan(answer.Text(500, "the offload server is not configured right: its web server's error log says why", ""))
		return 1
	}
	c, err := cache.Open(cache.Config{
		Dir: cfg.Cache, MaxBytes: cfg.CacheSize, Base: cfg.Base, BaseAddr: cfg.BaseAddr,
		UserAgent: "offload/" + version, Fetchers: cfg.Fetchers, Timeout: cfg.Timeout,
		Revalidate: cfg.Revalidate, DocRoot: cfg.DocRoot, FollowSymlinks: cfg.DocRootFollow,
		Shared: true, Logf: logger.Printf,
	})
	if err != nil {
		logger.Print(err)
		serveCGIPlan(answer.Text(500, "the offload cache cannot be opened: the web server's error log says why", ""))
		return 1
	}
	defer c.Close() // checkpoints a fill still under way, for whoever takes it over
	lcfg := limiter.Config{MaxDupes: cfg.MaxDupes, Trusted: cfg.TrustedProxy, Logf: logger.Printf}
	if cfg.MaxDupes > 0 {
		if lcfg.Slots, err = limiter.NewSlots(filepath.Join(cfg.Cache, slotsFolder), cfg.MaxDupes); err != nil {
			// As for a slot that cannot be taken: the cap goes, the downloads do not.
			logger.Printf("%v; downloads are not capped", err)
			lcfg.MaxDupes = 0
		}
	}
	h := &cgiHandler{ctx: ctx, cache: c, lim: limiter.New(lcfg), logf: logger.Printf}
	if err := cgi.Serve(h); err != nil && !h.clientGone(err) {
		logger.Print(err)
	}
	// The answer is complete: end it for the web server now. mod_cgid hands the program
	// one socket as both stdin and stdout, so the answer ends only once both are closed;
	// until then Apache would hold the client's connection, through a whole fill that
	// an answer to a small range left running. Then let a fill this process leads go
	// on, until it ends or the web server ends the process (mod_cgid: SIGTERM once the
	// request is over); a fill left midway is taken over by the next process that asks
	// for its file, with a Range request for the rest.
	os.Stdout.Close()
	os.Stdin.Close()
	if err := c.Drain(ctx); err != nil {
		logger.Printf("ended while filling: the next request for the file takes the fill over (%v)", err)
	}
	return 0
}

// loadCGIConfig reads offload serve's settings from the file configEnv names or, without
// it, from offload.conf next to the program. Settings for the daemon alone (listen,
// admin, user, TLS, ...) are checked and not used: the web server does that work.
func loadCGIConfig(getenv func(string) string) (*serveConfig, error) {
	path := getenv(configEnv)
	if path == "" {
		// In an ErrorDocument handler, Apache's variables of the first request come
		// with REDIRECT_ before them.
		path = getenv("REDIRECT_" + configEnv)
	}
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("config: no %s, and the program's folder is unknown: %w", configEnv, err)
		}
		path = filepath.Join(filepath.Dir(exe), cgiConfigName)
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("config: no %s set (Apache: SetEnv %s /etc/offload/offload.conf) and no %s: %w",
				configEnv, configEnv, path, err)
		}
	}
	return parseServeSettings([]string{"--config", path}, io.Discard)
}

// serveCGIPlan answers the CGI request with p, which needs neither cache nor limiter.
func serveCGIPlan(p answer.Plan) {
	_ = cgi.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = sendCGI(context.Background(), w, p, false, nil)
	}))
}

// cgiHandler answers the request of one CGI process.
type cgiHandler struct {
	ctx   context.Context // cancelled when the web server ends the process
	cache *cache.Cache
	lim   *limiter.Limiter
	logf  func(format string, args ...any)
}

func (h *cgiHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		// Every method with a body is refused, but a web server may wait to hand the
		// whole body over before it reads the answer: take some of it.
		_, _ = io.CopyN(io.Discard, r.Body, 1<<20)
	}
	var req proto.Request
	raw, err := cgiRequestHead(r, os.Getenv)
	if err == nil {
		_, err = req.Parse(raw)
	}
	if err != nil {
		// As offload serve answers a head it cannot parse.
		pe := &proto.Error{Status: 400, Reason: "malformed request"}
		errors.As(err, &pe)
		allow := ""
		if pe.Status == 405 {
			allow = "GET, HEAD"
		}
		h.send(w, answer.Text(pe.Status, pe.Reason, allow), false, nil)
		return
	}
	head := req.IsHead()
	client := h.lim.ClientIP(peerOf(r), req.XForwardedFor)
	if p, ok := answer.Before(&req); ok {
		h.send(w, p, head, nil)
		return
	}
	slot := ""
	if !head {
		var ok bool
		if slot, ok = h.lim.StartDownload(client, string(req.Path)); !ok {
			h.send(w, answer.Accelerator(), head, nil)
			return
		}
	}
	endDownload := func() {
		h.lim.EndDownload(slot)
		slot = ""
	}
	defer endDownload()
	path := string(req.Path)
	if hd := h.cache.LookupFor(path, client); hd != nil {
		h.send(w, answer.Respond(&req, hd), head, endDownload)
		return
	}
	ctx := cache.WithClient(h.ctx, client)
	var hd *cache.Handle
	if head {
		hd, err = h.cache.Stat(ctx, path) // a HEAD needs the metadata, not a fill
	} else {
		from, end := answer.WantRange(&req)
		hd, err = h.cache.GetFrom(ctx, path, from, end)
	}
	if err != nil {
		h.send(w, answer.Failed(req.Path, err, h.logf), head, endDownload)
		return
	}
	h.send(w, answer.Respond(&req, hd), head, endDownload)
}

// send sends p and logs what went wrong that is not the client leaving.
func (h *cgiHandler) send(w http.ResponseWriter, p answer.Plan, head bool, endDownload func()) {
	if err := sendCGI(h.ctx, w, p, head, endDownload); err != nil && !h.clientGone(err) {
		h.logf("%v", err)
	}
}

// clientGone says whether err is the client (or the web server for it) going away.
func (h *cgiHandler) clientGone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || h.ctx.Err() != nil
}

// sendCGI writes plan p as a CGI answer: the status and head fields for the web server,
// which adds Date, Server and Connection, then the body unless head is set. It
// releases the plan's handle, and calls endDownload (when not nil) before the body's
// last byte, as offload serve frees a download's slot: a client that has every byte and
// asks again at once must not meet its own download.
func sendCGI(ctx context.Context, w http.ResponseWriter, p answer.Plan, head bool, endDownload func()) error {
	if p.File != nil {
		defer p.File.Release()
	}
	done := func() {
		if endDownload != nil {
			endDownload()
			endDownload = nil
		}
	}
	hdr := w.Header()
	hdr["Content-Type"] = nil // none unless the head has one: net/http/cgi would guess one
	p.Head.Fields(func(name, value string) { hdr[name] = []string{value} })
	w.WriteHeader(p.Head.Status)
	if _, err := w.Write(nil); err != nil { // the head goes out now, before a cold body's first bytes
		return err
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	switch {
	case head:
		return nil
	case p.File == nil:
		done()
		_, err := w.Write(p.Body)
		return err
	case p.Ranges == nil:
		return copyRange(ctx, w, p.File, p.Off, p.End, done)
	}
	m := &p.File.Meta
	for i, rg := range p.Ranges {
		if _, err := w.Write(proto.AppendPartHead(nil, i, rg, m.ContentType, m.Size)); err != nil {
			return err
		}
		if err := copyRange(ctx, w, p.File, rg.Start, rg.Start+rg.Length, nil); err != nil {
			return err
		}
	}
	done() // the closing delimiter is the answer's last bytes
	_, err := w.Write(proto.AppendPartsEnd(nil))
	return err
}

// copyRange writes body bytes [off, end) of h as they land; beforeLast, when not nil,
// runs before the last byte is written.
func copyRange(ctx context.Context, w io.Writer, h *cache.Handle, off, end int64, beforeLast func()) error {
	if beforeLast != nil && end > off {
		if err := copyRange(ctx, w, h, off, end-1, nil); err != nil {
			return err
		}
		off = end - 1
		beforeLast()
	}
	if end <= off {
		return nil
	}
	buf := make([]byte, min(end-off, 256<<10))
	_, err := io.CopyBuffer(onlyWriter{w}, h.Reader(ctx, off, end), buf)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Meta.Key, err)
	}
	return nil
}

// onlyWriter hides every method but Write, so that io.CopyBuffer uses the buffer given.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

// cgiRequestHead rebuilds the request head the client sent from what net/http/cgi read
// of the CGI environment and the variables it does not read, so that proto.Request.Parse
// judges it as offload serve judges a head off the wire: the method (the first request's,
// REDIRECT_REQUEST_METHOD, when offload runs as Apache's ErrorDocument, which is always a
// GET), the target as the client sent it (REQUEST_URI, or the first request's
// REDIRECT_URL, escaped again), and the header fields the answer depends on.
func cgiRequestHead(r *http.Request, getenv func(string) string) ([]byte, error) {
	method := r.Method
	if m := getenv("REDIRECT_REQUEST_METHOD"); m != "" {
		method = m
	}
	target := getenv("REQUEST_URI")
	if target == "" {
		if u := getenv("REDIRECT_URL"); u != "" {
			// The first request's path decoded (Apache's r->uri): escaped again, or
			// proto would decode it twice ("/a%2541" the file "/aA") and read a
			// decoded '?' as the start of a query.
			target = (&url.URL{Path: u}).EscapedPath()
			if q := getenv("REDIRECT_QUERY_STRING"); q != "" {
				target += "?" + q
			}
		} else {
			target = r.URL.RequestURI()
		}
	}
	// A newer protocol arrives as 1.1 would: the fields are the same. A request without
	// Host is one the web server took (Apache refuses one of HTTP/1.1): its version
	// decides nothing more here, and not every web server reports it (net/http/cgi's
	// Handler always says HTTP/1.1).
	version := "HTTP/1.1"
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 || r.Host == "" {
		version = "HTTP/1.0"
	}
	b := make([]byte, 0, 256+len(target))
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, target...)
	b = append(b, ' ')
	b = append(b, version...)
	b = append(b, "\r\n"...)
	field := func(name, value string) error {
		if value == "" {
			return nil
		}
		if strings.ContainsAny(value, "\r\n") {
			return &proto.Error{Status: 400, Reason: "malformed header field"}
		}
		b = append(b, name...)
		b = append(b, ": "...)
		b = append(b, value...)
		b = append(b, "\r\n"...)
		return nil
	}
	if strings.ContainsAny(method+target, "\r\n") {
		return nil, &proto.Error{Status: 400, Reason: "malformed request line"}
	}
	if err := field("Host", r.Host); err != nil {
		return nil, err
	}
	if r.ContentLength > 0 {
		b = fmt.Appendf(b, "Content-Length: %d\r\n", r.ContentLength)
	}
	for _, name := range []string{"Transfer-Encoding", "Range", "If-Range", "If-Match", "If-None-Match",
		"If-Modified-Since", "If-Unmodified-Since", "User-Agent", "Referer", "X-Forwarded-For"} {
		if err := field(name, strings.Join(r.Header.Values(name), ", ")); err != nil {
			return nil, err
		}
	}
	return append(b, "\r\n"...), nil
}

// peerOf is the address the web server got the request from (REMOTE_ADDR); the zero
// Addr when it is not one.
func peerOf(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}
