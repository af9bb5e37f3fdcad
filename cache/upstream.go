package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/modoffload/offload/proto"
)

// Error is an answer the offload server must relay instead of a body: the base refused,
// is down, or the file is not one it may serve. Status is what the client gets.
type Error struct {
	Status   int
	Reason   string
	Location string // for redirects from the base
	Err      error  // the underlying failure, if any
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("cache: %d %s: %v", e.Status, e.Reason, e.Err)
	}
	return fmt.Sprintf("cache: %d %s", e.Status, e.Reason)
}

func (e *Error) Unwrap() error { return e.Err }

// upstream talks to the base: HEAD to check, GET to fill. Each request carries the
// bypass header so the base serves it instead of redirecting it again.
type upstream struct {
	base      *url.URL // scheme and host the base is known by (the Host header)
	userAgent string
	client    *http.Client
	timeout   time.Duration // connect, response headers, and idle body reads
	heads     chan struct{} // bounds HEADs in flight
	gets      chan struct{} // bounds GETs (fills) in flight
}

func newUpstream(cfg *Config) (*upstream, error) {
	base, err := url.Parse(cfg.Base)
	if err != nil || base.Host == "" || (base.Scheme != "http" && base.Scheme != "https") {
		return nil, fmt.Errorf("cache: base %q: want http://host[:port]", cfg.Base)
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:                 nil,
		ResponseHeaderTimeout: cfg.Timeout,
		MaxIdleConnsPerHost:   cfg.Fetchers,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if cfg.BaseAddr != "" {
				addr = cfg.BaseAddr
			}
			return dialer.DialContext(ctx, network, addr)
		},
	}
	return &upstream{
		base:      base,
		userAgent: cfg.UserAgent,
		client: &http.Client{
			Transport: transport,
			// Redirects from the base are relayed to the client, not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout: cfg.Timeout,
		heads:   make(chan struct{}, cfg.Fetchers),
		gets:    make(chan struct{}, cfg.Fetchers),
	}, nil
}

// request builds a request for tgt, an origin-form target made by target(): always
// "/" followed by anything but a second "/", so net/http sends it as it is and never
// as the absolute-form a leading "//" would give.
func (u *upstream) request(ctx context.Context, method, tgt string) (*http.Request, error) {
	if !strings.HasPrefix(tgt, "/") || strings.HasPrefix(tgt, "//") {
		return nil, fmt.Errorf("cache: request-target %q is not origin-form", tgt)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.base.Scheme+"://"+u.base.Host+"/", nil)
	if err != nil {
		return nil, err
	}
	req.URL.Opaque = tgt // sent verbatim as the request-target
	req.URL.Path, req.URL.RawPath = "", ""
	req.Host = u.base.Host
	req.Header.Set("User-Agent", u.userAgent)
	req.Header.Set("X-Mod-Offload-Bypass", "true")
	forwardFor(req)
	return req, nil
}

// head asks the base about tgt. A nil error means a 200 with a length and a
// validator; anything else is an *Error saying what to tell the client.
func (u *upstream) head(ctx context.Context, tgt string) (*Meta, error) {
	u.heads <- struct{}{}
	defer func() { <-u.heads }()
	req, err := u.request(ctx, http.MethodHead, tgt)
	if err != nil {
		return nil, &Error{Status: 400, Reason: "bad path", Err: err}
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, downError(err)
	}
	resp.Body.Close()
	return describe(resp)
}

// get starts the body of tgt; the caller reads and closes resp.Body. The body is
// read with an idle timeout: a base that stops sending for the timeout fails the read.
//
// With from > 0 it asks for the bytes [from, end) (If-Range: want's validator, so a
// changed file does not mix versions) and accepts only a 206 for exactly that range;
// the Meta then describes the whole file.
func (u *upstream) get(ctx context.Context, tgt string, from, end int64, want *Meta) (*Meta, *http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := u.request(ctx, http.MethodGet, tgt)
	if err != nil {
		cancel()
		return nil, nil, &Error{Status: 400, Reason: "bad path", Err: err}
	}
	if from > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(from, 10)+"-"+strconv.FormatInt(end-1, 10))
		if want.ETag != "" && !proto.IsWeakETag(want.ETag) {
			req.Header.Set("If-Range", want.ETag)
		} else {
			req.Header.Set("If-Range", want.LastModified)
		}
	}
	resp, err := u.client.Do(req)
	if err != nil {
		cancel()
		return nil, nil, downError(err)
	}
	if from > 0 {
		first, last, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if resp.StatusCode != http.StatusPartialContent || !ok || first != from || last != end-1 ||
			resp.ContentLength != end-from || total != want.Size {
			resp.Body.Close()
			cancel()
			return nil, nil, &Error{Status: 502, Reason: "base did not answer the range asked for"}
		}
		// Described as the whole file it is part of.
		resp.StatusCode, resp.ContentLength = http.StatusOK, total
	}
	m, err := describe(resp)
	if err != nil {
		resp.Body.Close()
		cancel()
		return nil, nil, err
	}
	resp.Body = &idleReader{rc: resp.Body, cancel: cancel, timer: time.AfterFunc(u.timeout, cancel), timeout: u.timeout}
	return m, resp, nil
}

// idleReader cancels the request when no byte arrived for timeout.
type idleReader struct {
	rc      io.ReadCloser
	cancel  context.CancelFunc
	timer   *time.Timer
	timeout time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.timer.Reset(r.timeout)
	return n, err
}

func (r *idleReader) Close() error {
	r.timer.Stop()
	err := r.rc.Close()
	r.cancel()
	return err
}

// downError maps a failure to reach the base to 504 (timeout) or 502.
func downError(err error) *Error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Status: 504, Reason: "base server timed out", Err: err}
	}
	return &Error{Status: 502, Reason: "base server unreachable", Err: err}
}

// IsBaseDown reports whether err says the base could not be asked (stale-if-error).
func IsBaseDown(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == 502 || e.Status == 504)
}

// describe turns the base's response into Meta, or the *Error the contract demands.
func describe(resp *http.Response) (*Meta, error) {
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != "":
		return nil, &Error{Status: 403, Reason: "protected content: fetch it from the base server"}
	case resp.StatusCode >= 500:
		return nil, &Error{Status: 502, Reason: "base server answered " + strconv.Itoa(resp.StatusCode)}
	case resp.StatusCode != http.StatusOK:
		e := &Error{Status: resp.StatusCode, Reason: "base server answered " + strconv.Itoa(resp.StatusCode)}
		if loc := resp.Header.Get("Location"); loc != "" && proto.ValidHeaderValue(loc) {
			e.Location = loc
		}
		return nil, e
	}
	m := &Meta{
		Size:         resp.ContentLength,
		ETag:         resp.Header.Get("ETag"),
		LastModified: resp.Header.Get("Last-Modified"),
		ContentType:  resp.Header.Get("Content-Type"),
	}
	if m.ETag != "" && !proto.ValidETag(m.ETag) {
		m.ETag = ""
	}
	if _, ok := proto.ParseTime([]byte(m.LastModified)); !ok {
		m.LastModified = ""
	}
	if !proto.ValidHeaderValue(m.ContentType) || len(m.ContentType) > 256 {
		m.ContentType = ""
	}
	if len(m.ETag) > 1024 {
		m.ETag = ""
	}
	if m.Size < 0 || (m.ETag == "" && m.LastModified == "") || len(resp.TransferEncoding) > 0 {
		return nil, &Error{Status: 403, Reason: "dynamic content: fetch it from the base server"}
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		// Cached bytes are served without the base's headers: an encoded body would
		// reach clients as garbage.
		return nil, &Error{Status: 403, Reason: "encoded content: fetch it from the base server"}
	}
	return m, nil
}

// parseContentRange reads "bytes FIRST-LAST/TOTAL" of a satisfied range.
func parseContentRange(v string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	fs, ls, found2 := strings.Cut(span, "-")
	if !found || !found2 {
		return 0, 0, 0, false
	}
	a, err1 := strconv.ParseInt(fs, 10, 64)
	b, err2 := strconv.ParseInt(ls, 10, 64)
	n, err3 := strconv.ParseInt(size, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || a < 0 || a > b || b >= n {
		return 0, 0, 0, false
	}
	return a, b, n, true
}
