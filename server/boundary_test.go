package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
	"github.com/modoffload/offload/proto"
)

// Tests of the second variant of each case the main tests cover: weak and strong ETags,
// bodies from memory and from disk (sendfile and the copy fallback), HTTP/1.0 and 1.1,
// HEAD and GET, heads exactly at a limit and one byte over, 410 beside 404.

// httpGetWithin is httpGet with a deadline of its own, so that a body cut short fails
// at once instead of after a client's default timeout.
func httpGetWithin(t *testing.T, d time.Duration, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v (%d bytes)", url, err, len(body))
	}
	return resp, body
}

// dial opens a raw connection with a deadline for the whole exchange.
func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := dialPlainOrTLS(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn, bufio.NewReader(conn)
}

// dialPlainOrTLS connects to the server under test: over TLS in tlsMode.
func dialPlainOrTLS(addr string) (net.Conn, error) {
	if tlsMode {
		d := &net.Dialer{Timeout: 10 * time.Second}
		return tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: testRoots})
	}
	return net.DialTimeout("tcp", addr, 10*time.Second)
}

// exchange writes a raw request and reads one response and its body.
func exchange(t *testing.T, conn net.Conn, br *bufio.Reader, method, raw string) (*http.Response, []byte) {
	t.Helper()
	if _, err := conn.Write([]byte(raw)); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("response to %q: %v", strings.SplitN(raw, "\r\n", 2)[0], err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("body of %q: %v (%d bytes)", strings.SplitN(raw, "\r\n", 2)[0], err, len(body))
	}
	return resp, body
}

// closedByServer reports whether the server ended the connection (EOF or reset) within
// two seconds, with no stray bytes before the end.
func closedByServer(t *testing.T, conn net.Conn, br *bufio.Reader) bool {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	defer conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := br.ReadByte()
	if err == nil {
		t.Errorf("stray byte %q after the response", b)
		return false
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// noCap turns the download cap off. These tests request one file on one connection
// after another; the slot of a download is freed only after its last bytes were
// written, so a client that reads them and asks again at once on a new connection can
// meet the slot still held (403), which is not what they test.
func noCap(_ *Config, l *limiter.Config, _ *cache.Config) { l.MaxDupes = 0 }

// weakBase serves data with a weak ETag (or a strong one) and a fixed Last-Modified.
func weakBase(t *testing.T, etag string, files map[string][]byte, gets *atomic.Int64) *base {
	t.Helper()
	mod := time.Unix(1_700_000_000, 0)
	return handlerBase(t, func(w http.ResponseWriter, r *http.Request) {
		data, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method == http.MethodGet && gets != nil {
			gets.Add(1)
		}
		w.Header().Set("ETag", etag)
		http.ServeContent(w, r, "", mod, bytes.NewReader(data))
	})
}

// TestIfRangeWeakAndStrong: If-Range takes a strong match only, so a weak ETag equal to
// the file's, sent with a Range, gets the whole body (200), from memory and from disk,
// for one range and for several; the strong twin gets the range (206).
func TestIfRangeWeakAndStrong(t *testing.T) {
	small, big := randomBytes(10<<10), randomBytes(300<<10)
	files := map[string][]byte{"/small.bin": small, "/big.bin": big}
	for _, etag := range []string{`W/"v1"`, `"v1"`} {
		b := weakBase(t, etag, files, nil)
		s := start(t, b, noCap)
		for path, data := range files {
			httpGetWithin(t, 10*time.Second, s.url+path) // fill
			httpGetWithin(t, 10*time.Second, s.url+path) // small bodies now in memory
			for _, rng := range []string{"bytes=0-9", "bytes=0-9,100-109"} {
				name := fmt.Sprintf("%s %s %s", etag, path, rng)
				resp, body := httpGetWithin(t, 10*time.Second, s.url+path, "Range", rng, "If-Range", etag)
				if resp.Header.Get("ETag") != etag {
					t.Fatalf("%s: ETag %q", name, resp.Header.Get("ETag"))
				}
				if proto.IsWeakETag(etag) {
					if resp.StatusCode != 200 || !bytes.Equal(body, data) {
						t.Errorf("%s: status %d, %d bytes; want 200 and the whole body", name, resp.StatusCode, len(body))
					}
					continue
				}
				if resp.StatusCode != 206 || (!strings.Contains(rng, ",") && !bytes.Equal(body, data[:10])) {
					t.Errorf("%s: status %d, %d bytes; want 206 and the range", name, resp.StatusCode, len(body))
				}
			}
			// A weak If-None-Match equal to the file's tag matches: 304.
			if resp, body := httpGetWithin(t, 10*time.Second, s.url+path, "If-None-Match", etag); resp.StatusCode != 304 || len(body) != 0 {
				t.Errorf("%s %s If-None-Match: %d, %d bytes", etag, path, resp.StatusCode, len(body))
			}
		}
	}
}

// TestHeadLimitsOverSocket: a header block exactly at the limit is served, one byte more
// is 431; a request line exactly at its limit is served, one byte more is 414.
func TestHeadLimitsOverSocket(t *testing.T) {
	b := weakBase(t, `"h"`, map[string][]byte{"/s.txt": []byte("hello")}, nil) // 404 for any other path
	s := start(t, b, noCap)
	// header block: request line, then header lines of exactly n bytes with their CRLFs.
	headerBlock := func(n int) string {
		host := "Host: x\r\n"
		pad := n - len(host) - len("X-Pad: \r\n")
		return "GET /s.txt HTTP/1.1\r\n" + host + "X-Pad: " + strings.Repeat("a", pad) + "\r\n\r\n"
	}
	// request line of exactly n bytes without its CRLF; the path is a file the base lacks.
	requestLine := func(n int) string {
		pad := n - len("GET /") - len(" HTTP/1.1")
		return "GET /" + strings.Repeat("a", pad) + " HTTP/1.1\r\nHost: x\r\n\r\n"
	}
	tests := []struct {
		name   string
		in     string
		status int
	}{
		{"header block at the limit", headerBlock(proto.MaxHeaderBytes), 200},
		{"header block one over", headerBlock(proto.MaxHeaderBytes + 1), 431},
		{"request line at the limit", requestLine(proto.MaxRequestLine), 404},
		{"request line one over", requestLine(proto.MaxRequestLine + 1), 414},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, br := dial(t, s.addr)
			resp, body := exchange(t, conn, br, "GET", tc.in)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tc.status)
			}
			if tc.status == 200 && string(body) != "hello" {
				t.Fatalf("body %q", body)
			}
		})
	}
}

// TestConnectionCloseAfterEveryBody: "Connection: close" (HTTP/1.1) and a plain HTTP/1.0
// request end the connection after the body, whatever the body came from: memory, a
// file by sendfile, a file by the copy fallback, a fill in progress, a range, several
// ranges, a HEAD, an answer of the server's own; and whether the cache asked the base
// first (revalidate 0) or answered at once (an entry checked within --revalidate).
// Without either, the connection carries the next request.
func TestConnectionCloseAfterEveryBody(t *testing.T) {
	small, big := randomBytes(10<<10), randomBytes(2<<20+3)
	for _, mode := range []struct {
		name       string
		noSendfile bool
		revalidate time.Duration
	}{
		{"sendfile", false, 0},
		{"copy", true, 0},
		{"sendfile, revalidate", false, time.Hour},
		{"copy, revalidate", true, time.Hour},
	} {
		t.Run(mode.name, func(t *testing.T) {
			b := newBase(t)
			b.write(t, "/small.bin", small)
			b.write(t, "/big.bin", big)
			s := start(t, b, func(c *Config, l *limiter.Config, cc *cache.Config) {
				c.NoSendfile, cc.Revalidate, l.MaxDupes = mode.noSendfile, mode.revalidate, 0
			})
			cold := 0
			kinds := []struct {
				name   string
				method string
				path   func() string // a fresh name for a cold fill
				hdr    string
				status int
				body   []byte
			}{
				{"memory", "GET", func() string { return "/small.bin" }, "", 200, small},
				{"disk", "GET", func() string { return "/big.bin" }, "", 200, big},
				{"cold fill", "GET", func() string {
					cold++
					p := fmt.Sprintf("/cold%d.bin", cold)
					b.write(t, p, big)
					return p
				}, "", 200, big},
				{"range from memory", "GET", func() string { return "/small.bin" }, "Range: bytes=5-9\r\n", 206, small[5:10]},
				{"range from disk", "GET", func() string { return "/big.bin" }, "Range: bytes=5-9\r\n", 206, big[5:10]},
				{"ranges from memory", "GET", func() string { return "/small.bin" }, "Range: bytes=0-0,5-9\r\n", 206, nil},
				{"ranges from disk", "GET", func() string { return "/big.bin" }, "Range: bytes=0-0,5-9\r\n", 206, nil},
				{"HEAD", "HEAD", func() string { return "/big.bin" }, "", 200, []byte{}},
				{"not modified", "GET", func() string { return "/big.bin" }, "If-None-Match: *\r\n", 304, []byte{}},
				{"robots.txt", "GET", func() string { return "/robots.txt" }, "", 200, nil},
				{"refused method", "DELETE", func() string { return "/big.bin" }, "", 405, nil},
				{"refused query", "GET", func() string { return "/big.bin?x" }, "", 403, nil},
				{"missing on the base", "GET", func() string { return "/missing.bin" }, "", 404, nil},
			}
			httpGetWithin(t, 10*time.Second, s.url+"/small.bin")
			httpGetWithin(t, 10*time.Second, s.url+"/small.bin") // in memory from now on
			httpGetWithin(t, 10*time.Second, s.url+"/big.bin")
			for _, k := range kinds {
				if t.Failed() {
					break // one kind is enough to tell; the rest would wait for closes that never come
				}
				for _, v := range []struct {
					name      string
					version   string
					conn      string
					keepAlive bool
				}{
					{"1.1 close", "HTTP/1.1", "Connection: close\r\n", false},
					{"1.0", "HTTP/1.0", "", false},
					{"1.0 close", "HTTP/1.0", "Connection: close\r\n", false},
					{"1.1", "HTTP/1.1", "", true},
					{"1.0 keep-alive", "HTTP/1.0", "Connection: keep-alive\r\n", true},
				} {
					t.Run(k.name+"/"+v.name, func(t *testing.T) {
						conn, br := dial(t, s.addr)
						path := k.path()
						raw := fmt.Sprintf("%s %s %s\r\nHost: x\r\n%s%s\r\n", k.method, path, v.version, k.hdr, v.conn)
						resp, body := exchange(t, conn, br, k.method, raw)
						if resp.StatusCode != k.status || (k.body != nil && !bytes.Equal(body, k.body)) {
							t.Fatalf("status %d, %d bytes; want %d, %d bytes", resp.StatusCode, len(body), k.status, len(k.body))
						}
						if resp.Close == v.keepAlive {
							t.Errorf("response says close %v, want keep-alive %v", resp.Close, v.keepAlive)
						}
						if !v.keepAlive {
							if !closedByServer(t, conn, br) {
								t.Fatal("connection left open")
							}
							return
						}
						// Kept alive: the next request on the same connection is answered.
						resp, body = exchange(t, conn, br, "GET", "GET /small.bin "+v.version+"\r\nHost: x\r\nConnection: close\r\n\r\n")
						if resp.StatusCode != 200 || !bytes.Equal(body, small) {
							t.Fatalf("next request: %d, %d bytes", resp.StatusCode, len(body))
						}
					})
				}
			}
		})
	}
}

// TestAccessLogBytes: the access log's byte count is the body the client got — for a
// cold fill, a file, memory, one range and several from each, and nothing ("-") for
// HEAD, 304 and 412.
func TestAccessLogBytes(t *testing.T) {
	b := newBase(t)
	small, big := randomBytes(1000), randomBytes(300<<10)
	b.write(t, "/small.bin", small)
	b.write(t, "/big.bin", big)
	logPath := filepath.Join(t.TempDir(), "access.log")
	alog, err := OpenAccessLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, b, func(c *Config, l *limiter.Config, _ *cache.Config) { c.AccessLog, l.MaxDupes = alog, 0 })
	lines := 0
	// lastLine waits for the log's next line.
	lastLine := func(t *testing.T) string {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			alog.Flush()
			data, _ := os.ReadFile(logPath)
			all := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			if len(data) > 0 && len(all) > lines {
				lines = len(all)
				return all[len(all)-1]
			}
		}
		t.Fatalf("no log line %d", lines+1)
		return ""
	}
	tests := []struct {
		name   string
		method string
		path   string
		hdr    []string
		status int
	}{
		{"cold small", "GET", "/small.bin", nil, 200},
		{"memory", "GET", "/small.bin", nil, 200},
		{"memory again", "GET", "/small.bin", nil, 200},
		{"cold big", "GET", "/big.bin", nil, 200},
		{"disk", "GET", "/big.bin", nil, 200},
		{"range from memory", "GET", "/small.bin", []string{"Range", "bytes=10-19"}, 206},
		{"range from disk", "GET", "/big.bin", []string{"Range", "bytes=10-19"}, 206},
		{"suffix from disk", "GET", "/big.bin", []string{"Range", "bytes=-100"}, 206},
		{"ranges from memory", "GET", "/small.bin", []string{"Range", "bytes=0-9,100-199"}, 206},
		{"ranges from disk", "GET", "/big.bin", []string{"Range", "bytes=0-9,100-199,-5"}, 206},
		{"416", "GET", "/big.bin", []string{"Range", "bytes=999999999-"}, 416},
		{"HEAD", "HEAD", "/big.bin", nil, 200},
		{"304", "GET", "/big.bin", []string{"If-None-Match", "*"}, 304},
		{"412", "GET", "/big.bin", []string{"If-Match", `"nope"`}, 412},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, tc.method, s.url+tc.path, nil)
			for i := 0; i+1 < len(tc.hdr); i += 2 {
				req.Header.Set(tc.hdr[i], tc.hdr[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != tc.status {
				t.Fatalf("status %d, %v", resp.StatusCode, err)
			}
			line := lastLine(t)
			want := fmt.Sprintf(`"%s %s HTTP/1.1" %d %d `, tc.method, tc.path, tc.status, len(body))
			if len(body) == 0 {
				want = fmt.Sprintf(`"%s %s HTTP/1.1" %d - `, tc.method, tc.path, tc.status)
			}
			if !strings.Contains(line, want) {
				t.Errorf("log line %q lacks %q", line, want)
			}
		})
	}
}

// TestConditionalTwinsOverSocket: If-Modified-Since equal to Last-Modified or a second
// later is 304, a second earlier is 200; one in the future is ignored (200); If-Match
// that fails is 412 with an empty body on a connection that goes on; If-None-Match
// beats If-Modified-Since. For a body from memory and from disk.
func TestConditionalTwinsOverSocket(t *testing.T) {
	b := newBase(t)
	small, big := randomBytes(1000), randomBytes(300<<10)
	b.write(t, "/small.bin", small)
	b.write(t, "/big.bin", big)
	// Modified an hour ago, so that a second later is not in the future.
	for _, name := range []string{"small.bin", "big.bin"} {
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(filepath.Join(b.dir, name), old, old); err != nil {
			t.Fatal(err)
		}
	}
	s := start(t, b, noCap)
	for _, tc := range []struct {
		path string
		data []byte
	}{{"/small.bin", small}, {"/big.bin", big}} {
		resp, _ := httpGetWithin(t, 10*time.Second, s.url+tc.path)
		httpGetWithin(t, 10*time.Second, s.url+tc.path)
		lm, err := http.ParseTime(resp.Header.Get("Last-Modified"))
		if err != nil {
			t.Fatalf("Last-Modified %q", resp.Header.Get("Last-Modified"))
		}
		etag := resp.Header.Get("ETag")
		date := func(d time.Duration) string { return lm.Add(d).UTC().Format(http.TimeFormat) }
		conn, br := dial(t, s.addr)
		for _, c := range []struct {
			name   string
			hdr    string
			status int
		}{
			{"ims equal", "If-Modified-Since: " + date(0), 304},
			{"ims a second later", "If-Modified-Since: " + date(time.Second), 304},
			{"ims a second earlier", "If-Modified-Since: " + date(-time.Second), 200},
			{"if-match fails", `If-Match: "nope"`, 412},
			{"if-match holds", "If-Match: " + etag, 200},
			{"ius a second earlier", "If-Unmodified-Since: " + date(-time.Second), 412},
			{"ius equal", "If-Unmodified-Since: " + date(0), 200},
			{"inm miss beats ims", `If-None-Match: "other"` + "\r\nIf-Modified-Since: " + date(0), 200},
			{"inm hit", "If-None-Match: " + etag, 304},
			{"412 beats 304", `If-Match: "nope"` + "\r\nIf-None-Match: " + etag, 412},
		} {
			resp, body := exchange(t, conn, br, "GET", "GET "+tc.path+" HTTP/1.1\r\nHost: x\r\n"+c.hdr+"\r\n\r\n")
			if resp.StatusCode != c.status {
				t.Errorf("%s %s: status %d, want %d", tc.path, c.name, resp.StatusCode, c.status)
			}
			switch {
			case c.status == 200 && !bytes.Equal(body, tc.data):
				t.Errorf("%s %s: %d bytes", tc.path, c.name, len(body))
			case c.status != 200 && len(body) != 0:
				t.Errorf("%s %s: %d bytes of body", tc.path, c.name, len(body))
			case c.status == 412 && resp.ContentLength != 0:
				t.Errorf("%s %s: Content-Length %d, want 0", tc.path, c.name, resp.ContentLength)
			}
		}
	}
}

// TestIfModifiedSinceInTheFuture: a date later than the server's clock is invalid and
// ignored (RFC 9110 13.1.3): the whole body, not 304.
func TestIfModifiedSinceInTheFuture(t *testing.T) {
	b := newBase(t)
	data := randomBytes(300 << 10)
	b.write(t, "/f.bin", data)
	s := start(t, b, noCap)
	httpGetWithin(t, 10*time.Second, s.url+"/f.bin")
	future := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	resp, body := httpGetWithin(t, 10*time.Second, s.url+"/f.bin", "If-Modified-Since", future)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Errorf("If-Modified-Since in the future: %d, %d bytes; want 200 and the body", resp.StatusCode, len(body))
	}
}

// TestHeadTwinsOverSocket: a HEAD gets the head a GET would (status, Content-Length,
// Content-Range) and no body, for a range, several ranges, a 416 and a 304; the
// connection then carries the next request, so no stray body bytes were sent.
func TestHeadTwinsOverSocket(t *testing.T) {
	b := newBase(t)
	small, big := randomBytes(1000), randomBytes(300<<10)
	b.write(t, "/small.bin", small)
	b.write(t, "/big.bin", big)
	s := start(t, b, noCap)
	for _, path := range []string{"/small.bin", "/big.bin"} {
		httpGetWithin(t, 10*time.Second, s.url+path)
		httpGetWithin(t, 10*time.Second, s.url+path)
	}
	conn, br := dial(t, s.addr)
	for _, path := range []string{"/small.bin", "/big.bin"} {
		for _, hdr := range []string{"", "Range: bytes=0-9\r\n", "Range: bytes=0-9,20-29\r\n", "Range: bytes=99999999-\r\n", "If-None-Match: *\r\n"} {
			get, getBody := exchange(t, conn, br, "GET", "GET "+path+" HTTP/1.1\r\nHost: x\r\n"+hdr+"\r\n")
			head, headBody := exchange(t, conn, br, "HEAD", "HEAD "+path+" HTTP/1.1\r\nHost: x\r\n"+hdr+"\r\n")
			name := path + " " + strings.TrimSpace(hdr)
			if head.StatusCode != get.StatusCode || len(headBody) != 0 {
				t.Errorf("%s: HEAD %d with %d body bytes, GET %d", name, head.StatusCode, len(headBody), get.StatusCode)
			}
			if head.Header.Get("Content-Length") != get.Header.Get("Content-Length") || head.Header.Get("Content-Range") != get.Header.Get("Content-Range") {
				t.Errorf("%s: HEAD Content-Length %q Content-Range %q, GET %q %q", name, head.Header.Get("Content-Length"),
					head.Header.Get("Content-Range"), get.Header.Get("Content-Length"), get.Header.Get("Content-Range"))
			}
			if get.StatusCode == 416 {
				size := map[string]int{"/small.bin": len(small), "/big.bin": len(big)}[path]
				if want := fmt.Sprintf("bytes */%d", size); get.Header.Get("Content-Range") != want {
					t.Errorf("%s: 416 with Content-Range %q, want %q", name, get.Header.Get("Content-Range"), want)
				}
			}
			if get.StatusCode == 200 || get.StatusCode == 206 {
				if int64(len(getBody)) != get.ContentLength {
					t.Errorf("%s: GET body %d bytes, Content-Length %d", name, len(getBody), get.ContentLength)
				}
			}
		}
	}
}

// TestGoneOnBaseOverSocket: 410 from the base is relayed and drops the cached copy, as
// 404 does; the next request once the file is back fills again.
func TestGoneOnBaseOverSocket(t *testing.T) {
	for _, status := range []int{404, 410} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			data := randomBytes(300 << 10)
			var gone atomic.Bool
			var gets atomic.Int64
			mod := time.Unix(1_700_000_000, 0)
			b := handlerBase(t, func(w http.ResponseWriter, r *http.Request) {
				if gone.Load() {
					http.Error(w, "gone", status)
					return
				}
				if r.Method == http.MethodGet {
					gets.Add(1)
				}
				w.Header().Set("ETag", `"v1"`)
				http.ServeContent(w, r, "", mod, bytes.NewReader(data))
			})
			s := start(t, b, noCap)
			httpGetWithin(t, 10*time.Second, s.url+"/f.bin")
			gone.Store(true)
			if resp, _ := httpGetWithin(t, 10*time.Second, s.url+"/f.bin"); resp.StatusCode != status {
				t.Fatalf("gone: %d, want %d", resp.StatusCode, status)
			}
			gone.Store(false)
			if resp, body := httpGetWithin(t, 10*time.Second, s.url+"/f.bin"); resp.StatusCode != 200 || !bytes.Equal(body, data) {
				t.Fatalf("back: %d, %d bytes", resp.StatusCode, len(body))
			}
			if n := gets.Load(); n != 2 {
				t.Errorf("base saw %d GETs, want 2 (the copy was dropped)", n)
			}
		})
	}
}

// TestAccessLogEscapes: quotes, backslashes and every control or non-ASCII byte are
// escaped as Apache does, so a client cannot forge a line or a field; 0 bytes is "-",
// 1 byte is "1".
func TestAccessLogEscapes(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "access.log")
	alog, err := OpenAccessLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	when := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		entry logEntry
		want  string
	}{
		{"plain", logEntry{client: "192.0.2.1", when: when, request: "GET /a HTTP/1.1", status: 200, bytes: 1, agent: "curl/8"},
			`192.0.2.1 - - [01/May/2024:12:00:00 +0000] "GET /a HTTP/1.1" 200 1 "-" "curl/8"`},
		{"no bytes", logEntry{client: "192.0.2.1", when: when, request: "HEAD /a HTTP/1.1", status: 200, bytes: 0},
			`"HEAD /a HTTP/1.1" 200 - "-" "-"`},
		{"quote and backslash", logEntry{client: "192.0.2.1", when: when, request: `GET /"\ HTTP/1.1`, status: 400, bytes: 2, referer: `a"b\c`},
			`"GET /\"\\ HTTP/1.1" 400 2 "a\"b\\c" "-"`},
		{"controls", logEntry{client: "192.0.2.1", when: when, request: "GET /\x1f\x7f\x80\xff\t HTTP/1.1", status: 400, bytes: 3, agent: "a\nb"},
			`"GET /\x1f\x7f\x80\xff\x09 HTTP/1.1" 400 3 "-" "a\x0ab"`},
		{"last printable", logEntry{client: "192.0.2.1", when: when, request: "GET /~ HTTP/1.1", status: 200, bytes: 4, agent: " !"},
			`"GET /~ HTTP/1.1" 200 4 "-" " !"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Truncate(logPath, 0)
			alog.write(&tc.entry)
			alog.Flush()
			data, _ := os.ReadFile(logPath)
			line := strings.TrimSuffix(string(data), "\n")
			if !strings.Contains(line, tc.want) || strings.Count(string(data), "\n") != 1 {
				t.Errorf("line %q lacks %q", data, tc.want)
			}
		})
	}
}

// TestHeadTakesNoDownloadSlot: while a client holds its one download of a file, a HEAD
// from it is answered (a HEAD is no download), a GET of a range is refused like any GET,
// and a GET of another file is answered.
func TestHeadTakesNoDownloadSlot(t *testing.T) {
	b := newBase(t)
	b.write(t, "/dl.bin", randomBytes(64<<20))
	b.write(t, "/other.bin", randomBytes(1000))
	s := start(t, b, nil)
	httpGetWithin(t, 20*time.Second, s.url+"/dl.bin", "Range", "bytes=0-0") // warm
	conn, br := dial(t, s.addr)
	tcpOf(conn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /dl.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("held download: %q %v", line, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "HEAD", s.url+"/dl.bin", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 || resp.ContentLength != 64<<20 {
		t.Fatalf("HEAD during a download: %v %+v", err, resp)
	}
	resp.Body.Close()
	if resp, _ := httpGetWithin(t, 10*time.Second, s.url+"/dl.bin", "Range", "bytes=0-9"); resp.StatusCode != 403 {
		t.Errorf("second GET (a range) during a download: %d, want 403", resp.StatusCode)
	}
	if resp, _ := httpGetWithin(t, 10*time.Second, s.url+"/other.bin"); resp.StatusCode != 200 {
		t.Errorf("another file during a download: %d, want 200", resp.StatusCode)
	}
}

// TestQueryTwins: a query string is refused (403) even when empty; a path without one
// is served.
func TestQueryTwins(t *testing.T) {
	b := newBase(t)
	b.write(t, "/q.bin", []byte("q"))
	s := start(t, b, noCap)
	conn, br := dial(t, s.addr)
	for _, tc := range []struct {
		target string
		status int
	}{
		{"/q.bin", 200},
		{"/q.bin?", 403},
		{"/q.bin?x=1", 403},
		{"/q.bin%3Fx", 404}, // an escaped '?' is part of the name
	} {
		resp, _ := exchange(t, conn, br, "GET", "GET "+tc.target+" HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d", tc.target, resp.StatusCode, tc.status)
		}
	}
	if n := b.heads.Load(); n != 2 {
		t.Errorf("base saw %d HEADs, want 2 (refused requests ask it nothing)", n)
	}
}

// TestShutdownTwins: on Shutdown an idle keep-alive connection is closed at once, a new
// one gets no answer, and a download under way runs to its last byte (then its
// connection closes, though it asked for keep-alive); Shutdown returns after it.
func TestShutdownTwins(t *testing.T) {
	b := newBase(t)
	data := randomBytes(8 << 20)
	b.write(t, "/dl.bin", data)
	b.write(t, "/s.txt", []byte("s"))
	s := start(t, b, noCap)
	httpGetWithin(t, 20*time.Second, s.url+"/dl.bin") // cached

	idle, idleBr := dial(t, s.addr)
	if resp, _ := exchange(t, idle, idleBr, "GET", "GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("idle connection's request: %d close %v", resp.StatusCode, resp.Close)
	}
	busy, busyBr := dial(t, s.addr)
	tcpOf(busy).SetReadBuffer(16 << 10)
	fmt.Fprintf(busy, "GET /dl.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(busyBr, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("download: %v", err)
	}
	// A download counts as under way only a moment after its head is out, and a Shutdown
	// in that window does not wait for it; this test is about the drain, so it waits.
	for deadline := time.Now().Add(2 * time.Second); s.Downloads() != 1 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	if !closedByServer(t, idle, idleBr) {
		t.Error("idle keep-alive connection not closed on Shutdown")
	}
	select {
	case <-done:
		t.Fatal("Shutdown returned while a download was under way")
	default:
	}
	if late, err := net.Dial("tcp", s.addr); err == nil {
		late.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(late, "GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(late), nil); err == nil {
			t.Errorf("a connection opened during Shutdown was answered: %d", resp.StatusCode)
		}
		late.Close()
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download under way at Shutdown: %v, %d of %d bytes", err, len(got), len(data))
	}
	if !closedByServer(t, busy, busyBr) {
		t.Error("connection left open after its download during Shutdown")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the download ended")
	}
}

// TestTimeoutTwins: a keep-alive connection idle past IdleTimeout is closed then (not
// much later, not sooner), one that asks again within it stays open; a head that
// arrives in pieces within HeaderTimeout is answered, one unfinished past it is closed.
func TestTimeoutTwins(t *testing.T) {
	b := newBase(t)
	b.write(t, "/s.txt", []byte("s"))
	const idleTimeout = 500 * time.Millisecond
	s := start(t, b, func(c *Config, l *limiter.Config, _ *cache.Config) {
		c.IdleTimeout, c.HeaderTimeout, l.MaxDupes = idleTimeout, 10*time.Second, 0
	})
	busy, busyBr := dial(t, s.addr)
	idle, idleBr := dial(t, s.addr)
	for _, c := range []struct {
		conn net.Conn
		br   *bufio.Reader
	}{{busy, busyBr}, {idle, idleBr}} {
		if resp, _ := exchange(t, c.conn, c.br, "GET", "GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("first request: %d", resp.StatusCode)
		}
	}
	answered := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		idleBr.ReadByte() // EOF when the server closes it
		closed <- time.Since(answered)
	}()
	// busy asks every 250 ms for 2 s, four times the idle timeout.
	for range 8 {
		time.Sleep(idleTimeout / 2)
		if resp, _ := exchange(t, busy, busyBr, "GET", "GET /s.txt HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("connection asking within the idle timeout: %d", resp.StatusCode)
		}
	}
	select {
	case d := <-closed:
		// The sweeper looks four times a second.
		if d < idleTimeout-200*time.Millisecond || d > idleTimeout+time.Second {
			t.Errorf("idle connection closed %v after its answer, idle timeout %v", d, idleTimeout)
		}
	case <-time.After(3 * time.Second):
		t.Error("connection idle past IdleTimeout left open")
	}

	// The header timeout, on a server of its own.
	s = start(t, b, func(c *Config, l *limiter.Config, _ *cache.Config) {
		c.HeaderTimeout, l.MaxDupes = 900*time.Millisecond, 0
	})
	slow, slowBr := dial(t, s.addr)
	for _, piece := range []string{"GET /s.t", "xt HTTP/1.1\r\n", "Host: x\r\n", "\r\n"} {
		slow.Write([]byte(piece))
		time.Sleep(200 * time.Millisecond)
	}
	if resp, err := http.ReadResponse(slowBr, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("head in pieces within the header timeout: %v %v", err, resp)
	}
	late, lateBr := dial(t, s.addr)
	late.Write([]byte("GET /s.t"))
	time.Sleep(1500 * time.Millisecond)
	late.Write([]byte("xt HTTP/1.1\r\nHost: x\r\n\r\n"))
	if resp, err := http.ReadResponse(lateBr, nil); err == nil {
		t.Errorf("head finished past the header timeout was answered: %d", resp.StatusCode)
	}
}
