package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// base is a real base server on 127.0.0.1 over a temp folder, counting requests.
type base struct {
	dir   string
	url   string
	srv   *http.Server
	gets  atomic.Int64
	heads atomic.Int64
	delay atomic.Int64 // nanoseconds before each GET's body
}

func newBase(t testing.TB) *base {
	t.Helper()
	b := &base{dir: t.TempDir()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.url = "http://" + ln.Addr().String()
	fs := http.FileServer(http.Dir(b.dir))
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Mod-Offload-Bypass") != "true" {
			http.Error(w, "no bypass header", 400)
			return
		}
		if r.Method == http.MethodHead {
			b.heads.Add(1)
		} else {
			b.gets.Add(1)
			time.Sleep(time.Duration(b.delay.Load()))
		}
		if st, err := os.Stat(filepath.Join(b.dir, filepath.FromSlash(r.URL.Path))); err == nil {
			w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano()))
		}
		fs.ServeHTTP(w, r)
	})}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// handlerBase is a base server on 127.0.0.1 answering with h, for tests that need a base
// with behaviour of its own (cut bodies, slow bodies).
func handlerBase(t testing.TB, h http.HandlerFunc) *base {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &base{url: "http://" + ln.Addr().String(), srv: &http.Server{Handler: h}}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *base) write(t testing.TB, name string, data []byte) {
	t.Helper()
	p := filepath.Join(b.dir, filepath.FromSlash(name))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

type testServer struct {
	*Server
	addr string
	url  string
	c    *cache.Cache
}

func start(t testing.TB, b *base, mut func(*Config, *limiter.Config, *cache.Config)) *testServer {
	t.Helper()
	logf := quietAfter(t)
	ccfg := cache.Config{Dir: t.TempDir(), MaxBytes: 1 << 30, Base: b.url, UserAgent: "offload/test", Timeout: 5 * time.Second, Logf: logf}
	lcfg := limiter.Config{MaxDupes: 1}
	cfg := Config{Listen: []string{"127.0.0.1:0"}, Loops: 2, Logf: logf}
	if tlsMode {
		cfg.TLSListen, cfg.TLS = []string{"127.0.0.1:0"}, testTLSConfig()
	}
	if mut != nil {
		mut(&cfg, &lcfg, &ccfg)
	}
	c, err := cache.Open(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Cache, cfg.Limiter = c, limiter.New(lcfg)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	<-s.Ready()
	if s.Addr() == nil {
		t.Fatalf("server did not start: %v", <-done)
	}
	t.Cleanup(func() {
		// Every test's clients are gone by now: nothing may still hold a slot.
		http.DefaultClient.CloseIdleConnections()
		deadline := time.Now().Add(3 * time.Second)
		for (s.Downloads() != 0 || cfg.Limiter.Downloads() != 0 || cfg.Limiter.Conns() != 0) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if s.Downloads() != 0 || cfg.Limiter.Downloads() != 0 || cfg.Limiter.Conns() != 0 {
			t.Errorf("leaked: %d requests in flight, %d download slots, %d connections",
				s.Downloads(), cfg.Limiter.Downloads(), cfg.Limiter.Conns())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
		c.Close()
	})
	if tlsMode {
		if s.TLSAddr() == nil {
			t.Fatal("no HTTPS listener")
		}
		return &testServer{Server: s, addr: s.TLSAddr().String(), url: "https://" + s.TLSAddr().String(), c: c}
	}
	return &testServer{Server: s, addr: s.Addr().String(), url: "http://" + s.Addr().String(), c: c}
}

// quietAfter is t.Logf until t's cleanups begin, and silent after: a fill that goes on
// for the cache after its test (a slow base, cut by the base's close) must not log
// into a test that has ended.
func quietAfter(t testing.TB) func(string, ...any) {
	var over atomic.Bool
	t.Cleanup(func() { over.Store(true) })
	return func(f string, args ...any) {
		if !over.Load() {
			t.Logf(f, args...)
		}
	}
}

func httpGet(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, body
}

func TestColdAndWarmDownloads(t *testing.T) {
	b := newBase(t)
	data := randomBytes(20<<20 + 123)
	b.write(t, "/pub/big.iso", data)
	s := start(t, b, nil)
	want := sha256.Sum256(data)
	for i, label := range []string{"cold", "warm"} {
		resp, body := httpGet(t, s.url+"/pub/big.iso")
		if resp.StatusCode != 200 || sha256.Sum256(body) != want {
			t.Fatalf("%s: status %d, %d bytes, sha256 differs", label, resp.StatusCode, len(body))
		}
		if resp.Header.Get("Accept-Ranges") != "bytes" || resp.Header.Get("ETag") == "" {
			t.Errorf("%s: headers %v", label, resp.Header)
		}
		if got := b.gets.Load(); got != 1 {
			t.Errorf("after %d downloads the base saw %d GETs", i+1, got)
		}
	}
	// HEAD: the head only.
	resp, err := http.Head(s.url + "/pub/big.iso")
	if err != nil || resp.StatusCode != 200 || resp.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD: %v %+v", err, resp)
	}
}

func TestHeadDoesNotFill(t *testing.T) {
	b := newBase(t)
	b.write(t, "/h.bin", randomBytes(1<<20))
	s := start(t, b, nil)
	resp, err := http.Head(s.url + "/h.bin")
	if err != nil || resp.StatusCode != 200 || resp.ContentLength != 1<<20 || resp.Header.Get("ETag") == "" {
		t.Fatalf("HEAD of a cold file: %v %+v", err, resp)
	}
	if b.gets.Load() != 0 || b.heads.Load() != 1 {
		t.Errorf("HEAD of a cold file sent %d GETs and %d HEADs to the base, want 0 and 1", b.gets.Load(), b.heads.Load())
	}
}

func TestCurlResumeAndRanges(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed (scripts/test installs it)")
	}
	b := newBase(t)
	data := randomBytes(3<<20 + 7)
	b.write(t, "/f.bin", data)
	s := start(t, b, nil)
	dir := t.TempDir()
	out := filepath.Join(dir, "f.bin")
	os.WriteFile(out, data[:1<<20], 0o644) // a download cut short
	cmd := exec.Command("curl", curlArgs("-sS", "-f", "-C", "-", "-o", out, s.url+"/f.bin")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl -C -: %v %s", err, b)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, data) {
		t.Fatalf("resumed file differs (%d bytes)", len(got))
	}

	tests := []struct {
		rng    string
		status int
		want   []byte
	}{
		{"bytes=0-99", 206, data[:100]},
		{"bytes=-10", 206, data[len(data)-10:]},
		{"bytes=100-", 206, data[100:]},
		{"bytes=99999999-", 416, nil},
		{"bytes=5-1", 416, nil},
		{"items=0-1", 200, data},
	}
	for _, tc := range tests {
		resp, body := httpGet(t, s.url+"/f.bin", "Range", tc.rng)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d want %d", tc.rng, resp.StatusCode, tc.status)
			continue
		}
		if tc.want != nil && !bytes.Equal(body, tc.want) {
			t.Errorf("%s: body differs (%d bytes)", tc.rng, len(body))
		}
		if tc.status == 416 && resp.Header.Get("Content-Range") != "bytes */"+strconv.Itoa(len(data)) {
			t.Errorf("%s: Content-Range %q", tc.rng, resp.Header.Get("Content-Range"))
		}
	}
}

// TestMultiRangeMatchesNetHTTP compares a multi-range body with net/http's parts.
func TestMultiRange(t *testing.T) {
	b := newBase(t)
	for _, size := range []int{10 << 10, 300 << 10} { // in memory, and from the file
		name := fmt.Sprintf("/m%d.bin", size)
		data := randomBytes(size)
		b.write(t, name, data)
		s := start(t, b, nil)
		resp, body := httpGetWithin(t, 10*time.Second, s.url+name, "Range", "bytes=0-9,1000-1099,-5")
		if resp.StatusCode != 206 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if int64(len(body)) != resp.ContentLength {
			t.Fatalf("body %d bytes, Content-Length %d", len(body), resp.ContentLength)
		}
		ct := resp.Header.Get("Content-Type")
		if !strings.HasPrefix(ct, "multipart/byteranges; boundary=") {
			t.Fatalf("Content-Type %q", ct)
		}
		wants := [][]byte{data[:10], data[1000:1100], data[size-5:]}
		parts := multipartParts(t, body, strings.TrimPrefix(ct, "multipart/byteranges; boundary="))
		if len(parts) != 3 {
			t.Fatalf("%d parts", len(parts))
		}
		for i := range parts {
			if !bytes.Equal(parts[i], wants[i]) {
				t.Errorf("size %d part %d differs", size, i)
			}
		}
	}
}

func multipartParts(t *testing.T, body []byte, boundary string) [][]byte {
	t.Helper()
	var parts [][]byte
	for _, chunk := range strings.Split(string(body), "--"+boundary) {
		if i := strings.Index(chunk, "\r\n\r\n"); i >= 0 {
			parts = append(parts, []byte(strings.TrimSuffix(chunk[i+4:], "\r\n")))
		}
	}
	return parts
}

func TestConditionals(t *testing.T) {
	b := newBase(t)
	b.write(t, "/c.bin", randomBytes(100<<10))
	s := start(t, b, nil)
	resp, _ := httpGet(t, s.url+"/c.bin")
	etag, lm := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	for _, h := range [][]string{{"If-None-Match", etag}, {"If-Modified-Since", lm}} {
		resp, body := httpGet(t, s.url+"/c.bin", h...)
		if resp.StatusCode != 304 || len(body) != 0 {
			t.Errorf("%s: status %d, %d bytes", h[0], resp.StatusCode, len(body))
		}
	}
	resp, body := httpGet(t, s.url+"/c.bin", "Range", "bytes=0-0", "If-Range", `"stale"`)
	if resp.StatusCode != 200 || len(body) != 100<<10 {
		t.Errorf("If-Range mismatch: status %d", resp.StatusCode)
	}
}

func TestAcceleratorCap(t *testing.T) {
	b := newBase(t)
	b.write(t, "/dl.bin", randomBytes(64<<20))
	s := start(t, b, nil)
	// A slow first download: read its head, then stall.
	conn, err := dialPlainOrTLS(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	tcpOf(conn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /dl.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	st, err := br.ReadString('\n')
	if err != nil || !strings.Contains(st, "200") {
		t.Fatalf("first download: %q %v", st, err)
	}
	resp, body := httpGet(t, s.url+"/dl.bin")
	if resp.StatusCode != 403 || !strings.Contains(string(body), "download accelerator") {
		t.Fatalf("second simultaneous download: %d %q", resp.StatusCode, body)
	}
	// Another file is fine; HEAD is fine.
	b.write(t, "/other.bin", []byte("other"))
	if resp, _ := httpGet(t, s.url+"/other.bin"); resp.StatusCode != 200 {
		t.Errorf("other file: %d", resp.StatusCode)
	}
	conn.Close()
	// The slot is freed once the first connection is gone.
	deadline := time.Now().Add(5 * time.Second)
	for s.cfg.Limiter.Downloads() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	resp, err = http.Head(s.url + "/dl.bin")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD after: %v", err)
	}
	req, _ := http.NewRequest("GET", s.url+"/dl.bin", nil)
	req.Header.Set("Range", "bytes=0-99")
	resp2, err := http.DefaultClient.Do(req)
	if err != nil || resp2.StatusCode != 206 {
		t.Fatalf("download after the first ended: %v %v", err, resp2)
	}
	resp2.Body.Close()
}

func TestKeepAliveAndPipelining(t *testing.T) {
	b := newBase(t)
	small := []byte("0123456789")
	b.write(t, "/s.txt", small)
	big := randomBytes(200 << 10)
	b.write(t, "/b.bin", big)
	s := start(t, b, nil)
	conn, err := dialPlainOrTLS(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for i := range 100 {
		path := "/s.txt"
		if i%10 == 0 {
			path = "/b.bin"
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || (path == "/s.txt" && !bytes.Equal(body, small)) || (path == "/b.bin" && !bytes.Equal(body, big)) {
			t.Fatalf("request %d: status %d, %d bytes", i, resp.StatusCode, len(body))
		}
	}
	// Pipelined: ten requests in one write, ten answers in order.
	var req strings.Builder
	for i := range 10 {
		fmt.Fprintf(&req, "GET /s.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=%d-%d\r\n\r\n", i, i)
	}
	conn.Write([]byte(req.String()))
	for i := range 10 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 206 || string(body) != string(small[i]) {
			t.Fatalf("pipelined %d: %d %q", i, resp.StatusCode, body)
		}
	}
	// Connection: close is honoured.
	fmt.Fprintf(conn, "GET /s.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || !resp.Close {
		t.Fatalf("close: %v %v", err, resp)
	}
	io.ReadAll(resp.Body)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed after Connection: close: %v", err)
	}
}

// malformed holds requests beyond proto's list that the server must refuse.
var malformed = []struct {
	name   string
	in     string
	status int
}{
	{"post", "POST /s.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405},
	{"put", "PUT /s.txt HTTP/1.1\r\nHost: x\r\n\r\n", 405},
	{"delete", "DELETE /s.txt HTTP/1.1\r\nHost: x\r\n\r\n", 405},
	{"query", "GET /s.txt?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 403},
	{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400},
	{"lone LF lines", "GET\n\n", 400},
}

func TestMalformedRequests(t *testing.T) {
	b := newBase(t)
	b.write(t, "/s.txt", []byte("hello"))
	s := start(t, b, nil)
	cases := malformed
	var shared []struct {
		Name   string
		In     string
		Status int
	}
	data, err := os.ReadFile("../proto/testdata/malformed.json")
	if err == nil {
		err = json.Unmarshal(data, &shared)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range shared {
		cases = append(cases, struct {
			name   string
			in     string
			status int
		}{bad.Name, bad.In, bad.Status})
	}
	if len(cases) < 40 {
		t.Fatalf("only %d malformed cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := dialPlainOrTLS(s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			conn.Write([]byte(tc.in))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	// Still serving.
	if resp, body := httpGet(t, s.url+"/s.txt"); resp.StatusCode != 200 || string(body) != "hello" {
		t.Fatalf("after the malformed requests: %d %q", resp.StatusCode, body)
	}
}

func TestRobotsAndMethods(t *testing.T) {
	b := newBase(t)
	s := start(t, b, nil)
	resp, body := httpGet(t, s.url+"/robots.txt")
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Disallow: /") {
		t.Errorf("robots.txt: %d %q", resp.StatusCode, body)
	}
	req, _ := http.NewRequest("POST", s.url+"/x", strings.NewReader(""))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %v", resp)
	}
	if b.gets.Load()+b.heads.Load() != 0 {
		t.Errorf("the base was asked about refused requests")
	}
}

func TestSlowlorisAndStall(t *testing.T) {
	b := newBase(t)
	b.write(t, "/big.bin", randomBytes(32<<20))
	s := start(t, b, func(c *Config, _ *limiter.Config, _ *cache.Config) {
		c.HeaderTimeout = 300 * time.Millisecond
		c.Timeout = 500 * time.Millisecond
	})
	// A head that never finishes is cut off.
	conn, _ := dialPlainOrTLS(s.addr)
	conn.Write([]byte("GET /big.bin HTTP/1.1\r\nHost: x\r\n"))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Errorf("slowloris connection not closed: %v", err)
	}
	conn.Close()
	// A client that stops reading is dropped and its slot freed.
	conn, _ = dialPlainOrTLS(s.addr)
	tcpOf(conn).SetReadBuffer(4096)
	conn.Write([]byte("GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
	deadline := time.Now().Add(10 * time.Second)
	time.Sleep(200 * time.Millisecond)
	for s.cfg.Limiter.Downloads() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := s.cfg.Limiter.Downloads(); n != 0 {
		t.Fatalf("stalled client still holds %d slots", n)
	}
	conn.Close()
	if resp, _ := httpGet(t, s.url+"/robots.txt"); resp.StatusCode != 200 {
		t.Fatal("server not serving after timeouts")
	}
}

func TestConnectionCaps(t *testing.T) {
	b := newBase(t)
	s := start(t, b, func(_ *Config, l *limiter.Config, _ *cache.Config) { l.MaxConnsPerIP = 2 })
	var conns []net.Conn
	for range 2 {
		c, _ := dialPlainOrTLS(s.addr)
		conns = append(conns, c)
	}
	time.Sleep(100 * time.Millisecond)
	c, _ := dialPlainOrTLS(s.addr)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third connection: %v %v", err, resp)
	}
	c.Close()
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if resp, _ := httpGet(t, s.url+"/robots.txt"); resp.StatusCode != 200 {
		t.Fatal("slots not freed")
	}
}

func TestColdFileManyClientsOneGET(t *testing.T) {
	b := newBase(t)
	data := randomBytes(2 << 20)
	b.write(t, "/cold.bin", data)
	b.delay.Store(int64(100 * time.Millisecond))
	s := start(t, b, func(_ *Config, l *limiter.Config, _ *cache.Config) { l.MaxDupes = 0 })
	want := sha256.Sum256(data)
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(s.url + "/cold.bin")
			if err != nil {
				if bad.Add(1) == 1 {
					t.Logf("first failure: %v", err)
				}
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || sha256.Sum256(body) != want {
				if bad.Add(1) == 1 {
					t.Logf("first failure: status %d, %d bytes, %v", resp.StatusCode, len(body), err)
				}
			}
		}()
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d of 100 clients got wrong bytes", bad.Load())
	}
	if g := b.gets.Load(); g != 1 {
		t.Errorf("base saw %d GETs for 100 simultaneous cold clients", g)
	}
}

func TestBaseStatusesRelayed(t *testing.T) {
	b := newBase(t)
	data := randomBytes(300 << 10)
	b.write(t, "/kept.bin", data)
	s := start(t, b, nil)
	resp, body := httpGet(t, s.url+"/missing.bin")
	if resp.StatusCode != 404 || len(body) == 0 {
		t.Errorf("missing: %d %q", resp.StatusCode, body)
	}
	httpGet(t, s.url+"/kept.bin")
	b.srv.Close()
	// Base down, cached copy: served stale, and said so.
	resp, body = httpGet(t, s.url+"/kept.bin")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) || !strings.Contains(resp.Header.Get("Warning"), "110") {
		t.Errorf("stale copy: %d, %d bytes, Warning %q", resp.StatusCode, len(body), resp.Header.Get("Warning"))
	}
	resp, body = httpGet(t, s.url+"/down.bin")
	if resp.StatusCode != 502 || !strings.Contains(string(body), "base") {
		t.Errorf("base down: %d %q", resp.StatusCode, body)
	}
}

func TestAccessLogAndMetrics(t *testing.T) {
	b := newBase(t)
	b.write(t, "/l.bin", randomBytes(1000))
	logPath := filepath.Join(t.TempDir(), "access.log")
	alog, err := OpenAccessLog(logPath)
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, b, func(c *Config, _ *limiter.Config, _ *cache.Config) { c.AccessLog = alog })
	req, _ := http.NewRequest("GET", s.url+"/l.bin", nil)
	req.Header.Set("Referer", "http://ref/")
	req.Header.Set("User-Agent", `agent "quoted"`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	// The client can have its last byte a moment before the server logs the response.
	var line []byte
	for deadline := time.Now().Add(3 * time.Second); len(line) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		alog.Flush()
		line, _ = os.ReadFile(logPath)
	}
	want := `"GET /l.bin HTTP/1.1" 200 1000 "http://ref/" "agent \"quoted\""`
	if !strings.Contains(string(line), want) || !strings.HasPrefix(string(line), "127.0.0.1 - - [") {
		t.Errorf("log line %q lacks %q", line, want)
	}
	scheme, listener := "http", "http"
	if tlsMode {
		scheme, listener = "https", "https"
	}
	if !strings.HasSuffix(string(line), `" `+scheme+"\n") {
		t.Errorf("log line %q does not end with the scheme %s", line, scheme)
	}
	rec := &strings.Builder{}
	srv := &http.Server{Handler: s.AdminHandler()}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()
	mresp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(rec, mresp.Body)
	for _, m := range []string{`offload_requests_total{status="200"} 1`, "offload_sent_bytes_total 1000",
		"offload_cache_misses_total 1", "offload_upstream_gets_total 1", "offload_active_connections",
		`offload_listener_requests_total{listener="` + listener + `"} 1`,
		`offload_listener_sent_bytes_total{listener="` + listener + `"} 1000`} {
		if !strings.Contains(rec.String(), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
}

// TestCopyFallback serves through the pread-and-Write path that replaces sendfile where
// it cannot serve, including a slow reader that makes gnet queue.
func TestCopyFallback(t *testing.T) {
	b := newBase(t)
	data := randomBytes(12<<20 + 5)
	b.write(t, "/f.bin", data)
	s := start(t, b, func(c *Config, _ *limiter.Config, _ *cache.Config) { c.NoSendfile = true })
	for _, label := range []string{"cold", "warm"} {
		resp, body := httpGetWithin(t, 20*time.Second, s.url+"/f.bin")
		if resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("%s: status %d, %d bytes", label, resp.StatusCode, len(body))
		}
	}
	resp, body := httpGetWithin(t, 10*time.Second, s.url+"/f.bin", "Range", "bytes=1000-1999,5000000-5000099")
	parts := multipartParts(t, body, strings.TrimPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges; boundary="))
	if resp.StatusCode != 206 || len(parts) != 2 || !bytes.Equal(parts[0], data[1000:2000]) || !bytes.Equal(parts[1], data[5000000:5000100]) {
		t.Fatalf("ranges: %d, %d parts", resp.StatusCode, len(parts))
	}
	// A reader that starts late, on a closing connection, still gets every byte: the
	// socket fills, gnet queues up to the low-water mark, and the server waits.
	// (Not a tiny receive buffer: Linux then sends one window per 200 ms, nginx too.)
	conn, err := dialPlainOrTLS(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second)) // a body cut short fails here, not after minutes
	fmt.Fprintf(conn, "GET /f.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	time.Sleep(300 * time.Millisecond)
	r, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r.Body)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("slow reader: %v, %d bytes", err, len(got))
	}
}

// TestBaseDiesMidFill: clients of a fill that fails see their connection end early,
// never a complete-looking 200; the next request fills again.
func TestBaseDiesMidFill(t *testing.T) {
	data := randomBytes(4 << 20)
	var cut atomic.Bool
	cut.Store(true)
	mod := time.Unix(1_700_000_000, 0)
	b := handlerBase(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		if r.Method == http.MethodGet && cut.Load() {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Header().Set("Last-Modified", mod.UTC().Format(http.TimeFormat))
			w.WriteHeader(200)
			w.Write(data[:1<<20])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		http.ServeContent(w, r, "", mod, bytes.NewReader(data))
	})
	s := start(t, b, nil)
	resp, err := http.Get(s.url + "/f.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || len(got) >= len(data) || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("cut fill: status %d, %d bytes, err %v; want an early end", resp.StatusCode, len(got), err)
	}
	cut.Store(false)
	if resp, body := httpGet(t, s.url+"/f.bin"); resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("after the cut: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// TestTrustedProxyClients: behind a trusted proxy, the download cap counts the client in
// X-Forwarded-For, not the proxy.
func TestTrustedProxyClients(t *testing.T) {
	b := newBase(t)
	b.write(t, "/dl.bin", randomBytes(64<<20))
	s := start(t, b, func(_ *Config, l *limiter.Config, _ *cache.Config) {
		l.Trusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	httpGet(t, s.url+"/dl.bin", "Range", "bytes=0-0") // warm
	hold := func(xff string) net.Conn {
		conn, err := dialPlainOrTLS(s.addr)
		if err != nil {
			t.Fatal(err)
		}
		tcpOf(conn).SetReadBuffer(4096)
		fmt.Fprintf(conn, "GET /dl.bin HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: %s\r\n\r\n", xff)
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.Contains(line, "200") {
			t.Fatalf("download for %s: %q %v", xff, line, err)
		}
		return conn
	}
	c1 := hold("198.51.100.1")
	defer c1.Close()
	c2 := hold("198.51.100.2") // another client behind the same proxy
	defer c2.Close()
	resp, _ := httpGet(t, s.url+"/dl.bin", "X-Forwarded-For", "198.51.100.1")
	if resp.StatusCode != 403 {
		t.Fatalf("second download by 198.51.100.1 through the proxy: %d, want 403", resp.StatusCode)
	}
}

func TestIPv6Listener(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here")
	}
	ln.Close()
	b := newBase(t)
	b.write(t, "/six.bin", []byte("over IPv6"))
	s := start(t, b, func(c *Config, _ *limiter.Config, _ *cache.Config) { c.Listen = []string{"[::1]:0"} })
	if !strings.HasPrefix(s.addr, "[::1]:") {
		t.Fatalf("address %s", s.addr)
	}
	if resp, body := httpGet(t, s.url+"/six.bin"); resp.StatusCode != 200 || string(body) != "over IPv6" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

// TestPipelinedFloodIsBounded: a client pipelines many requests for a small file and only
// then reads; every answer arrives intact, in order (the server answers no further while
// the queued answers exceed its bound, and resumes as the client reads).
func TestPipelinedFloodIsBounded(t *testing.T) {
	b := newBase(t)
	body := randomBytes(60 << 10)
	b.write(t, "/m.bin", body)
	s := start(t, b, func(c *Config, _ *limiter.Config, _ *cache.Config) {})
	httpGet(t, s.url+"/m.bin")
	httpGet(t, s.url+"/m.bin") // the body is now held in memory
	conn, err := dialPlainOrTLS(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const n = 200
	go func() {
		var req strings.Builder
		for range n {
			req.WriteString("GET /m.bin HTTP/1.1\r\nHost: x\r\n\r\n")
		}
		conn.Write([]byte(req.String()))
	}()
	time.Sleep(300 * time.Millisecond)
	// 12 MiB of answers do not fit the socket buffers: the server must have paused.
	if answered := answeredOK(t, s.Server) - 2; answered >= n {
		t.Errorf("all %d pipelined requests answered while the client read nothing", n)
	}
	br := bufio.NewReader(conn)
	for i := range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("answer %d: %v, %d bytes", i, err, len(got))
		}
	}
}

// TestFarRangeOnColdFile: `curl -C -` far into a cold file that the base sends slowly is
// answered from a ranged window, with the right bytes, while the cache fills.
func TestFarRangeOnColdFile(t *testing.T) {
	data := randomBytes(40 << 20)
	var ranged atomic.Int64
	mod := time.Unix(1_700_000_000, 0)
	b := handlerBase(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		if r.Method == http.MethodGet && r.Header.Get("Range") == "" {
			// The whole file, slowly: about 1.3 s.
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Header().Set("Last-Modified", mod.UTC().Format(http.TimeFormat))
			for i := 0; i < len(data); i += 256 << 10 {
				if _, err := w.Write(data[i:min(i+256<<10, len(data))]); err != nil {
					return
				}
				time.Sleep(8 * time.Millisecond)
			}
			return
		}
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		http.ServeContent(w, r, "", mod, bytes.NewReader(data))
	})
	s := start(t, b, nil)
	from := 36 << 20
	resp, body := httpGet(t, s.url+"/f.bin", "Range", fmt.Sprintf("bytes=%d-", from))
	if resp.StatusCode != 206 || !bytes.Equal(body, data[from:]) {
		t.Fatalf("far range: %d, %d bytes", resp.StatusCode, len(body))
	}
	if ranged.Load() != 1 {
		t.Errorf("base saw %d ranged GETs, want 1", ranged.Load())
	}
	// The fill went on: the whole file is served (and comes from the cache).
	if resp, body := httpGet(t, s.url+"/f.bin"); resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("whole file after: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// answeredOK reads offload_requests_total{status="200"} from the server's registry.
func answeredOK(t *testing.T, s *Server) float64 {
	t.Helper()
	families, err := s.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "offload_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "status" && l.GetValue() == "200" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
