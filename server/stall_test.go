package server

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// TestInputDoesNotRenewTheSendTimeout: a client that reads nothing but sends a byte
// now and then is dropped after the send timeout all the same: only bytes the client
// accepts count as progress.
func TestInputDoesNotRenewTheSendTimeout(t *testing.T) {
	b := newBase(t)
	b.write(t, "/m.bin", randomBytes(60<<10))
	s := start(t, b, func(c *Config, _ *limiter.Config, cc *cache.Config) {
		c.Timeout = time.Second
		cc.Revalidate = time.Hour
	})
	httpGet(t, s.url+"/m.bin")
	httpGet(t, s.url+"/m.bin") // in memory now
	conn, err := dialPlainOrTLS(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Enough answers to fill the socket buffers on both sides, never read.
	conn.Write([]byte(strings.Repeat("GET /m.bin HTTP/1.1\r\nHost: x\r\n\r\n", 400)))
	start := time.Now()
	for time.Since(start) < 8*time.Second {
		time.Sleep(300 * time.Millisecond)
		if _, err := conn.Write([]byte("G")); err != nil {
			t.Logf("closed after %v", time.Since(start).Round(100*time.Millisecond))
			return
		}
	}
	t.Fatal("a client that trickles input but reads nothing was never dropped")
}

// TestStalledReaderOfAFillIsDropped: clients that never read a file being filled from a
// slow base are dropped by the send timeout too, after the fill ends, instead of
// holding their slot and a drain forever.
func TestStalledReaderOfAFillIsDropped(t *testing.T) {
	data := randomBytes(24 << 20) // more than loopback's socket buffers hold
	mod := time.Unix(1_700_000_000, 0)
	b := handlerBase(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Last-Modified", mod.UTC().Format(http.TimeFormat))
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		if r.Method == http.MethodHead {
			return
		}
		for i := 0; i < len(data); i += 256 << 10 {
			if _, err := w.Write(data[i:min(i+256<<10, len(data))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond)
		}
	})
	s := start(t, b, func(c *Config, l *limiter.Config, _ *cache.Config) {
		c.Timeout = time.Second
		l.MaxDupes = 0
	})
	var conns []net.Conn
	for range 20 {
		conn, err := dialPlainOrTLS(s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte("GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
		conns = append(conns, conn)
	}
	// The fill takes about 1 s; every reader stalls once the socket buffers are full
	// and must be gone within the timeout (plus the sweeper's period) after that.
	began := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for s.Downloads() == 0 { // the requests are in: otherwise zero says nothing
		if time.Now().After(deadline) {
			t.Fatal("the requests never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for s.Downloads() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d downloads still held by clients that read nothing", s.Downloads())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("all dropped %v after the requests", time.Since(began).Round(100*time.Millisecond))
	// And they were cut, not finished: the server could not have sent 3 MiB each.
	br := bufio.NewReader(conns[0])
	conns[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err == nil {
		n, _ := br.Discard(len(data))
		resp.Body.Close()
		if n >= len(data) {
			t.Error("a stalled reader got the whole body")
		}
	}
}

// TestSlowReaderOfAClosingAnswerGetsItAll: an answer after which the server closes
// (HTTP/1.0) reaches a slow reader whole, however long past the lingering time it
// takes, as long as the reader makes progress within the send timeout.
func TestSlowReaderOfAClosingAnswerGetsItAll(t *testing.T) {
	b := newBase(t)
	body := randomBytes(60 << 10)
	b.write(t, "/m.bin", body)
	s := start(t, b, func(c *Config, _ *limiter.Config, cc *cache.Config) {
		c.Timeout = 2 * time.Second
		cc.Revalidate = time.Hour
	})
	httpGet(t, s.url+"/m.bin")
	httpGet(t, s.url+"/m.bin") // in memory now
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		return nil
	}}
	var conn net.Conn
	var err error
	if tlsMode {
		conn, err = tls.DialWithDialer(&d, "tcp", s.addr, &tls.Config{RootCAs: testRoots})
	} else {
		conn, err = d.Dial("tcp", s.addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /m.bin HTTP/1.0\r\n\r\n"))
	var got []byte
	buf := make([]byte, 2048)
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		time.Sleep(250 * time.Millisecond)
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	took := time.Since(start)
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(resp.Body)
	if !bytes.Equal(rest, body) {
		t.Fatalf("got %d of %d body bytes in %v", len(rest), len(body), took)
	}
	t.Logf("whole body in %v (lingering time %v)", took.Round(100*time.Millisecond), lingerTime)
	if took < lingerTime {
		t.Logf("the reader was faster than the lingering time: the test proved less than it should")
	}
}

// TestAskAgainAtOnce: a client that has every byte of a download and asks for the file
// again at once, on a new connection, is never refused as a download accelerator (the
// slot is freed before the last byte goes out), from disk, from memory, and for a
// multi-range answer.
func TestAskAgainAtOnce(t *testing.T) {
	b := newBase(t)
	b.write(t, "/d.bin", randomBytes(200<<10))
	b.write(t, "/m.bin", randomBytes(20<<10))
	s := start(t, b, func(_ *Config, l *limiter.Config, cc *cache.Config) {
		l.MaxDupes = 1
		cc.Revalidate = time.Hour
	})
	for _, tc := range []struct{ path, rng string }{{"/d.bin", ""}, {"/m.bin", ""}, {"/d.bin", "bytes=0-9,100000-100099"}} {
		for i := range 60 {
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			req, _ := http.NewRequest("GET", s.url+tc.path, nil)
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 && resp.StatusCode != 206 {
				t.Fatalf("%s %s, request %d: %d", tc.path, tc.rng, i, resp.StatusCode)
			}
		}
	}
}
