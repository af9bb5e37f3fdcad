package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// Hostile clients, each against a real server on real sockets: resets at every point of
// a response while well-behaved clients check every byte, paths built to reach other
// hosts or files on the base, pipelining without reading, far ranges abandoned at once,
// answers that must survive the close.

// resetConn closes conn with a TCP RST (SO_LINGER 0), as a client that gives up does.
func resetConn(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// TestResetsMidBody: clients that reset their connection at random points of plain,
// single-range and multi-range downloads, from disk and from memory, never crash the
// server, never leak a slot or a descriptor, and never make it send one client's bytes
// to another: well-behaved clients on the same server check every body they get.
func TestResetsMidBody(t *testing.T) {
	b := newBase(t)
	big := randomBytes(3 << 20)
	small := randomBytes(20 << 10)
	b.write(t, "/big.bin", big)
	b.write(t, "/small.bin", small)
	s := start(t, b, func(_ *Config, l *limiter.Config, _ *cache.Config) { l.MaxDupes = 0 })
	httpGet(t, s.url+"/big.bin")
	httpGet(t, s.url+"/small.bin")

	heads := []string{
		"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99,100000-299999,1000000-2999999\r\n\r\n",
		"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-\r\n\r\n",
		"GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /small.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-10,20-30\r\n\r\n",
		"HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=" + manyRanges(60, 40000, 2000) + "\r\n\r\n",
	}
	// Bounded by counts, not by a time: under -race on two busy cores, three seconds
	// gave as few as 191 resets. The hard stop only ends a run that cannot get there.
	const wantResets, wantChecked = 400, 12
	hardStop := time.Now().Add(60 * time.Second)
	var resets, checked atomic.Int64
	more := func() bool {
		return (resets.Load() < wantResets || checked.Load() < wantChecked) && time.Now().Before(hardStop)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, 64<<10)
			for more() {
				conn, err := net.Dial("tcp", s.addr)
				if err != nil {
					continue
				}
				h := heads[rng.IntN(len(heads))]
				switch rng.IntN(4) {
				case 0:
					conn.Write([]byte(h[:rng.IntN(len(h))])) // reset in the middle of the head
				case 1:
					conn.Write([]byte(h)) // reset before the answer
				default:
					conn.Write([]byte(h))
					conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
					for left := rng.IntN(1 << 20); left > 0; {
						n, err := conn.Read(buf[:min(left, len(buf))])
						left -= n
						if err != nil {
							break
						}
					}
				}
				resetConn(conn)
				resets.Add(1)
			}
		}()
	}
	errs := make(chan error, 16)
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			want := map[string][32]byte{"/big.bin": sha256.Sum256(big), "/small.bin": sha256.Sum256(small)}
			for i := 0; more(); i++ {
				path := "/big.bin"
				if (i+g)%3 == 0 {
					path = "/small.bin"
				}
				resp, err := client.Get(s.url + path)
				if err != nil {
					errs <- err
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || sha256.Sum256(body) != want[path] {
					errs <- fmt.Errorf("%s: status %d, %d bytes, err %v: body differs", path, resp.StatusCode, len(body), err)
					return
				}
				// And a multi-range answer, part by part.
				req, _ := http.NewRequest("GET", s.url+"/big.bin", nil)
				req.Header.Set("Range", "bytes=5-9,2000000-2000999")
				resp, err = client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				raw, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				parts := multipartParts(t, raw, strings.TrimPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges; boundary="))
				if err != nil || len(parts) != 2 || !bytes.Equal(parts[0], big[5:10]) || !bytes.Equal(parts[1], big[2000000:2001000]) {
					errs <- fmt.Errorf("multi-range: %v, %d parts", err, len(parts))
					return
				}
				checked.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d resets, %d checked downloads", resets.Load(), checked.Load())
	if checked.Load() < wantChecked || resets.Load() < wantResets {
		t.Fatalf("too little traffic in 60 s: %d resets, %d checked", resets.Load(), checked.Load())
	}
	// The server still answers, and (start's cleanup) holds no slot or connection.
	if resp, body := httpGetWithin(t, 5*time.Second, s.url+"/big.bin"); resp.StatusCode != 200 || !bytes.Equal(body, big) {
		t.Fatalf("after the resets: %d, %d bytes", resp.StatusCode, len(body))
	}
	waitFor(t, "descriptors of readers to close", func() bool { return s.c.Stats.OpenFiles.Load() <= 2 })
}

// manyRanges is a Range value of n ranges of size bytes, step bytes apart.
func manyRanges(n, step, size int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d", i*step, i*step+size-1)
	}
	return b.String()
}

// waitFor polls cond for up to five seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPathsNeverReachOtherTargets: every spelling of a path reaches the base as the
// one origin-form target the cache key is made of; "//host/…" never becomes an
// absolute-form request for another host, and climbing above the root is refused.
func TestPathsNeverReachOtherTargets(t *testing.T) {
	data := randomBytes(100 << 10)
	var mu sync.Mutex
	var seen []string
	mod := time.Unix(1_700_000_000, 0)
	b := handlerBase(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.Host+" "+r.RequestURI)
		mu.Unlock()
		if r.URL.Path != "/pub/10m.bin" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", mod, bytes.NewReader(data))
	})
	s := start(t, b, nil)
	baseHost := strings.TrimPrefix(b.url, "http://")
	for _, target := range []string{
		"/pub/10m.bin",
		"//pub/10m.bin",
		"/pub//10m.bin",
		"/pub/./10m.bin",
		"/x/../pub/10m.bin",
		"/pub%2F10m.bin",
		"/%2Fpub/10m.bin",
		"/%70ub/10m.bin",
		"http://evil.example/pub/10m.bin",
	} {
		t.Run(target, func(t *testing.T) {
			conn, br := dial(t, s.addr)
			resp, body := exchange(t, conn, br, "GET", "GET "+target+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 200 || !bytes.Equal(body, data) {
				t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
			}
		})
	}
	for _, target := range []string{"/../pub/10m.bin", "/pub/%2e%2e/%2e%2e/etc/passwd", "/%00"} {
		conn, br := dial(t, s.addr)
		if resp, _ := exchange(t, conn, br, "GET", "GET "+target+" HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 400 {
			t.Errorf("%s: status %d, want 400", target, resp.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, line := range seen {
		if line != "HEAD "+baseHost+" /pub/10m.bin" && line != "GET "+baseHost+" /pub/10m.bin" {
			t.Errorf("the base was asked %q", line)
		}
	}
	if len(seen) == 0 {
		t.Fatal("the base was never asked")
	}
}

// TestPipelineWithoutReadingIsClosed: a client that pipelines requests and never reads
// is closed once its unread input passes the bound, instead of growing the server.
func TestPipelineWithoutReadingIsClosed(t *testing.T) {
	b := newBase(t)
	s := start(t, b, nil)
	conn, err := dialPlainOrTLS(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	chunk := []byte(strings.Repeat("GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n", 1000))
	var sent int
	for sent < 1<<30 {
		n, err := conn.Write(chunk)
		sent += n
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the server neither read nor closed: %d bytes written", sent)
			}
			break // closed by the server: what we wanted
		}
	}
	// The kernel's buffers on both sides take a few MiB; the server itself holds at most
	// maxInbound plus one read.
	t.Logf("the server closed after %d bytes", sent)
	if sent > 64<<20 {
		t.Errorf("the server took %d bytes from a client that read nothing", sent)
	}
}

// slowRangeBase serves data: whole-file GETs slowly (the fill stays far behind), ranged
// GETs in 64 KiB chunks with a pause, counting the bytes ranged answers wrote.
func slowRangeBase(t *testing.T, data []byte, rangedBytes, rangedGets *atomic.Int64, rangedDone chan<- struct{}) *base {
	mod := time.Unix(1_700_000_000, 0)
	return handlerBase(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Last-Modified", mod.UTC().Format(http.TimeFormat))
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			return
		}
		rh := r.Header.Get("Range")
		if rh == "" {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			for i := 0; i < len(data); i += 256 << 10 {
				if _, err := w.Write(data[i:min(i+256<<10, len(data))]); err != nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			return
		}
		rangedGets.Add(1)
		var first, last int
		if _, err := fmt.Sscanf(rh, "bytes=%d-%d", &first, &last); err != nil {
			http.Error(w, "want bytes=N-M", 400)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(data)))
		w.Header().Set("Content-Length", strconv.Itoa(last-first+1))
		w.WriteHeader(206)
		defer func() {
			if rangedDone != nil {
				rangedDone <- struct{}{}
			}
		}()
		for i := first; i <= last; i += 64 << 10 {
			n, err := w.Write(data[i:min(i+64<<10, last+1)])
			rangedBytes.Add(int64(n))
			if err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// TestFarRangeWindowsFetchOnlyWhatIsAsked: a window asks the base for exactly the range
// the client gave, stops when its client leaves, and windows are capped per client.
func TestFarRangeWindowsFetchOnlyWhatIsAsked(t *testing.T) {
	data := randomBytes(48 << 20)
	from := 40 << 20

	t.Run("single bytes", func(t *testing.T) {
		var bytesOut, gets atomic.Int64
		s := start(t, slowRangeBase(t, data, &bytesOut, &gets, nil), func(_ *Config, l *limiter.Config, _ *cache.Config) { l.MaxDupes = 0 })
		for i := range 3 {
			at := from + i*1000
			resp, body := httpGetWithin(t, 10*time.Second, s.url+"/f.bin", "Range", fmt.Sprintf("bytes=%d-%d", at, at))
			if resp.StatusCode != 206 || !bytes.Equal(body, data[at:at+1]) {
				t.Fatalf("range %d: status %d, %d bytes", at, resp.StatusCode, len(body))
			}
		}
		if gets.Load() != 3 || bytesOut.Load() != 3 {
			t.Errorf("base sent %d bytes in %d ranged answers, want 3 in 3", bytesOut.Load(), gets.Load())
		}
	})

	t.Run("client leaves", func(t *testing.T) {
		var bytesOut, gets atomic.Int64
		done := make(chan struct{}, 1)
		s := start(t, slowRangeBase(t, data, &bytesOut, &gets, done), nil)
		conn, br := dial(t, s.addr)
		fmt.Fprintf(conn, "GET /f.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=%d-\r\n\r\n", from)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 206 {
			t.Fatalf("far range: %v", err)
		}
		got := make([]byte, 1000)
		if _, err := io.ReadFull(resp.Body, got); err != nil || !bytes.Equal(got, data[from:from+1000]) {
			t.Fatalf("first bytes: %v", err)
		}
		resetConn(conn)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the window kept fetching after its client left")
		}
		if n := bytesOut.Load(); n > int64(len(data)-from)/2 {
			t.Errorf("the window fetched %d of %d bytes for a client that read 1000", n, len(data)-from)
		}
		waitFor(t, "the window to end", func() bool { return s.c.Stats.Windows.Load() == 0 })
	})

	t.Run("capped per client", func(t *testing.T) {
		var bytesOut, gets atomic.Int64
		s := start(t, slowRangeBase(t, data, &bytesOut, &gets, nil), func(_ *Config, l *limiter.Config, _ *cache.Config) { l.MaxDupes = 0 })
		var wg sync.WaitGroup
		var peak atomic.Int64
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
					if n := s.c.Stats.Windows.Load(); n > peak.Load() {
						peak.Store(n)
					}
				}
			}
		}()
		for i := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				at := from + i*(1<<20)
				resp, body := httpGetWithin(t, 30*time.Second, s.url+"/f.bin", "Range", fmt.Sprintf("bytes=%d-%d", at, at+(512<<10)-1))
				if resp.StatusCode != 206 || !bytes.Equal(body, data[at:at+512<<10]) {
					t.Errorf("range at %d: status %d, %d bytes", at, resp.StatusCode, len(body))
				}
			}()
		}
		wg.Wait()
		close(stop)
		if peak.Load() > 2 || gets.Load() > 5 {
			t.Errorf("%d windows at once, %d ranged GETs: one client may have 2", peak.Load(), gets.Load())
		}
	})
}

// TestAnswersSurviveTheClose: an answer the server gives before closing reaches a
// client that is still sending (lingering close), and a method is refused as a method
// even when the request has a body.
func TestAnswersSurviveTheClose(t *testing.T) {
	b := newBase(t)
	b.write(t, "/big.bin", randomBytes(100<<10))
	s := start(t, b, nil)

	t.Run("431 after a 20 KB header line", func(t *testing.T) {
		conn, br := dial(t, s.addr)
		req := "GET /big.bin HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n"
		go conn.Write([]byte(req))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		if resp.StatusCode != 431 {
			t.Fatalf("status %d, want 431", resp.StatusCode)
		}
	})
	t.Run("405 for POST with a body", func(t *testing.T) {
		conn, br := dial(t, s.addr)
		go conn.Write([]byte("POST /big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("b", 100000)))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		io.ReadAll(resp.Body)
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("status %d, Allow %q; want 405 with GET, HEAD", resp.StatusCode, resp.Header.Get("Allow"))
		}
		if !closedByServer(t, conn, br) {
			t.Error("connection left open after a refused body")
		}
	})
	t.Run("lingering ends", func(t *testing.T) {
		conn, br := dial(t, s.addr)
		conn.Write([]byte("GET /x HTTP/1.0\r\n\r\n"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || !resp.Close {
			t.Fatalf("answer: %v, close %v", err, resp != nil && resp.Close)
		}
		io.ReadAll(resp.Body)
		// We keep the connection open and quiet: the server's half-close is seen
		// at once, and the server ends the connection within lingerTime.
		conn.SetReadDeadline(time.Now().Add(lingerTime + 2*time.Second))
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("bytes after the answer")
		}
	})
}

// TestHTTP10KeepAlive: an HTTP/1.0 client that asks for keep-alive (ab -k) gets it, from
// memory and from disk; one that does not gets its connection closed.
func TestHTTP10KeepAlive(t *testing.T) {
	b := newBase(t)
	small, big := randomBytes(1000), randomBytes(200<<10)
	b.write(t, "/s.bin", small)
	b.write(t, "/b.bin", big)
	s := start(t, b, func(c *Config, _ *limiter.Config, cc *cache.Config) { cc.Revalidate = time.Hour })
	httpGet(t, s.url+"/s.bin")
	httpGet(t, s.url+"/s.bin")
	conn, br := dial(t, s.addr)
	for i, path := range []string{"/s.bin", "/b.bin", "/s.bin", "/b.bin"} {
		resp, body := exchange(t, conn, br, "GET", "GET "+path+" HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		want := small
		if path == "/b.bin" {
			want = big
		}
		if resp.StatusCode != 200 || !bytes.Equal(body, want) || resp.Header.Get("Connection") != "keep-alive" {
			t.Fatalf("request %d %s: %d, %d bytes, Connection %q", i, path, resp.StatusCode, len(body), resp.Header.Get("Connection"))
		}
	}
	resp, _ := exchange(t, conn, br, "GET", "GET /s.bin HTTP/1.0\r\n\r\n")
	if !resp.Close || !closedByServer(t, conn, br) {
		t.Error("plain HTTP/1.0 request did not close")
	}
}

// TestSlowClientsHoldNoBuffers: many clients that stop reading mid-body (socket full)
// make the server hold no output of theirs: everything they still need is sent from the
// file when they read again.
func TestSlowClientsHoldNoBuffers(t *testing.T) {
	b := newBase(t)
	big := randomBytes(16 << 20) // more than loopback's socket buffers hold
	b.write(t, "/big.bin", big)
	s := start(t, b, func(_ *Config, l *limiter.Config, _ *cache.Config) { l.MaxDupes = 0 })
	httpGet(t, s.url+"/big.bin")
	var conns []net.Conn
	for range 30 {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte("GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
		conns = append(conns, conn)
	}
	time.Sleep(200 * time.Millisecond)
	for i, conn := range conns {
		if i%2 == 0 {
			resetConn(conn)
			continue
		}
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.Equal(body, big) {
			t.Fatalf("slow client %d: %v, %d bytes", i, err, len(body))
		}
		conn.Close()
	}
}
