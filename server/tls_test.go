package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// The HTTPS side of the tests. Every test that runs through start, dial, httpGet and
// curlArgs runs over TLS as well when tlsMode is set: TestOverTLS runs the suite's
// main tests that way, so that what works over HTTP is checked over HTTPS by the same
// code, with crypto/tls's client and curl.

// tlsMode makes start serve HTTPS, and the test clients speak it.
var tlsMode bool

// testCert is a self-signed ECDSA P-256 certificate for 127.0.0.1, ::1 and localhost;
// testCAFile is it in PEM, for curl's --cacert.
var (
	testCert   tls.Certificate
	testRoots  *x509.CertPool
	testCAFile string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "offload-tls-test")
	if err != nil {
		panic(err)
	}
	testCert, testRoots, testCAFile = makeTestCert(dir)
	// http.DefaultClient trusts the test certificate, for the suite's httpGet.
	http.DefaultTransport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: testRoots}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func makeTestCert(dir string) (tls.Certificate, *x509.CertPool, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "offload test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	file := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, file
}

// testTLSConfig is the server side: the test certificate.
func testTLSConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{testCert}}
}

// curlArgs prefixes a curl command's arguments with what it needs to trust the test
// certificate.
func curlArgs(args ...string) []string {
	return append([]string{"--cacert", testCAFile}, args...)
}

// TestOverTLS runs the main tests again over HTTPS.
func TestOverTLS(t *testing.T) {
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"ColdAndWarmDownloads", TestColdAndWarmDownloads},
		{"HeadDoesNotFill", TestHeadDoesNotFill},
		{"CurlResumeAndRanges", TestCurlResumeAndRanges},
		{"MultiRange", TestMultiRange},
		{"Conditionals", TestConditionals},
		{"AcceleratorCap", TestAcceleratorCap},
		{"KeepAliveAndPipelining", TestKeepAliveAndPipelining},
		{"MalformedRequests", TestMalformedRequests},
		{"RobotsAndMethods", TestRobotsAndMethods},
		{"SlowlorisAndStall", TestSlowlorisAndStall},
		{"ColdFileManyClientsOneGET", TestColdFileManyClientsOneGET},
		{"BaseStatusesRelayed", TestBaseStatusesRelayed},
		{"AccessLogAndMetrics", TestAccessLogAndMetrics},
		{"BaseDiesMidFill", TestBaseDiesMidFill},
		{"PipelinedFloodIsBounded", TestPipelinedFloodIsBounded},
		{"FarRangeOnColdFile", TestFarRangeOnColdFile},
		{"PipelineWithoutReadingIsClosed", TestPipelineWithoutReadingIsClosed},
		{"InputDoesNotRenewTheSendTimeout", TestInputDoesNotRenewTheSendTimeout},
		{"StalledReaderOfAFillIsDropped", TestStalledReaderOfAFillIsDropped},
		{"SlowReaderOfAClosingAnswerGetsItAll", TestSlowReaderOfAClosingAnswerGetsItAll},
		{"ColdPagesGoToTheDiskPool", TestColdPagesGoToTheDiskPool},
		{"DiskErrorEndsOneConnection", TestDiskErrorEndsOneConnection},
	}
	tlsMode = true
	defer func() { tlsMode = false }()
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

// tcpOf is the TCP connection under conn, which may be a TLS client.
func tcpOf(conn net.Conn) *net.TCPConn {
	if tc, ok := conn.(*tls.Conn); ok {
		return tc.NetConn().(*net.TCPConn)
	}
	return conn.(*net.TCPConn)
}

// TestACMEChallengeAnswered: an ACME CA's HTTP-01 request is answered from
// Config.ACMEChallenge, off the loop, before any limiter or cache.
func TestACMEChallengeAnswered(t *testing.T) {
	b := newBase(t)
	s := start(t, b, func(c *Config, _ *limiter.Config, _ *cache.Config) {
		c.ACMEChallenge = func(_ context.Context, token string) ([]byte, bool) {
			if token == "tok-1" {
				return []byte("tok-1.thumbprint"), true
			}
			return nil, false
		}
	})
	resp, body := httpGet(t, s.url+"/.well-known/acme-challenge/tok-1")
	if resp.StatusCode != 200 || string(body) != "tok-1.thumbprint" {
		t.Fatalf("challenge: %d %q", resp.StatusCode, body)
	}
	resp, _ = httpGet(t, s.url+"/.well-known/acme-challenge/other")
	if resp.StatusCode != 404 {
		t.Fatalf("unknown challenge: %d", resp.StatusCode)
	}
	if b.gets.Load()+b.heads.Load() != 0 {
		t.Errorf("the base was asked %d times for challenges", b.gets.Load()+b.heads.Load())
	}
}

// TestPlainHTTPToTLSPort: a plain request on the HTTPS port gets a clear 400 in plain
// HTTP, and the connection ends; garbage that is neither gets closed.
func TestPlainHTTPToTLSPort(t *testing.T) {
	b := newBase(t)
	tlsMode = true
	s := start(t, b, nil)
	tlsMode = false
	conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	all, err := io.ReadAll(conn)
	if err != nil || !strings.HasPrefix(string(all), "HTTP/1.1 400 ") || !strings.Contains(string(all), "HTTPS") {
		t.Fatalf("plain request to the TLS port: %v %q", err, all)
	}
	conn2, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	conn2.SetDeadline(time.Now().Add(10 * time.Second))
	conn2.Write([]byte{0x01, 0x02, 0x03, 0x04, 0x05})
	if all, err := io.ReadAll(conn2); err != nil || len(all) != 0 {
		t.Fatalf("garbage to the TLS port: %v %q", err, all)
	}
}

// TestTLSTrimFindsItsFields: trimTLS knows crypto/tls's buffers in this Go release, and
// a trimmed connection goes on working (the download test over TLS reads after it).
func TestTLSTrimFindsItsFields(t *testing.T) {
	if len(tlsBufferOffsets) != 2 {
		t.Fatalf("crypto/tls's rawInput and hand not found (%d of 2): trimTLS does nothing with this Go", len(tlsBufferOffsets))
	}
}

// clientHello is the first record crypto/tls's client sends: its ClientHello.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: "localhost"}).Handshake()
	rec := make([]byte, 5)
	if _, err := io.ReadFull(b, rec); err != nil {
		t.Fatal(err)
	}
	rec = append(rec, make([]byte, int(rec[3])<<8|int(rec[4]))...)
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

// splitRecord is a handshake record's message cut into records of at most size bytes.
func splitRecord(rec []byte, size int) []byte {
	var out []byte
	for msg := rec[5:]; len(msg) > 0; {
		k := min(size, len(msg))
		out = append(out, rec[0], rec[1], rec[2], byte(k>>8), byte(k))
		out = append(out, msg[:k]...)
		msg = msg[k:]
	}
	return out
}

// splitHelloConn is a client connection that sends its ClientHello split into records
// of 200 bytes, as TLS allows (RFC 8446 5.1).
type splitHelloConn struct {
	net.Conn
	sent bool
}

func (c *splitHelloConn) Write(p []byte) (int, error) {
	if c.sent || len(p) < 5 || p[0] != 0x16 || len(p) != 5+(int(p[3])<<8|int(p[4])) {
		return c.Conn.Write(p)
	}
	c.sent = true
	if _, err := c.Conn.Write(splitRecord(p, 200)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// TestTLSHalfClientHello: clients that send part of a ClientHello and stall are closed
// at the head timeout, and meanwhile hold no goroutine (a handshake starts only once
// the whole ClientHello is here), whether the hello is cut inside its record or split
// over several records of which only the first came. Its twin: a whole ClientHello
// split over records is served.
func TestTLSHalfClientHello(t *testing.T) {
	const headTimeout = time.Second
	tlsMode = true
	s := start(t, newBase(t), func(c *Config, _ *limiter.Config, _ *cache.Config) { c.HeaderTimeout = headTimeout })
	tlsMode = false
	hello := clientHello(t)
	split := splitRecord(hello, 200)
	for _, tc := range []struct {
		name string
		sent []byte
	}{
		{"cut inside its record", hello[:len(hello)/2]},
		{"split over records, the first only", split[:205]},
		{"split over records, all but the last", split[:len(split)-10]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			time.Sleep(100 * time.Millisecond) // the last case's connections are gone
			before := runtime.NumGoroutine()
			began := time.Now()
			var conns []net.Conn
			for range 20 {
				conn, err := net.Dial("tcp", s.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.Write(tc.sent)
				conns = append(conns, conn)
			}
			time.Sleep(headTimeout / 2)
			if during := runtime.NumGoroutine(); during > before+5 {
				t.Errorf("%d goroutines while 20 clients stall in their ClientHello, %d before", during, before)
			}
			for _, conn := range conns {
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadAll(conn); err != nil {
					t.Fatalf("not closed: %v", err)
				}
			}
			if took := time.Since(began); took < headTimeout || took > headTimeout+2*time.Second {
				t.Errorf("closed after %v; the head timeout is %v", took, headTimeout)
			}
		})
	}
	t.Run("split over records, whole", func(t *testing.T) {
		raw, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn := tls.Client(&splitHelloConn{Conn: raw}, &tls.Config{RootCAs: testRoots, ServerName: "localhost"})
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("a ClientHello over several records: %v", err)
		}
	})
}

func TestHelloScan(t *testing.T) {
	hello := clientHello(t)
	for _, tc := range []struct {
		name      string
		buf       []byte
		here, bad bool
	}{
		{"one record", hello, true, false},
		{"one record and more", append(append([]byte(nil), hello...), 0x14, 3, 3, 0, 1, 1), true, false},
		{"a record header only", hello[:5], false, false},
		{"cut inside its record", hello[:len(hello)-1], false, false},
		{"records of one byte", splitRecord(hello, 1), true, false},
		{"records of one byte, the last missing", splitRecord(hello, 1)[:6*(len(hello)-5)-6], false, false},
		{"message header split over records", splitRecord(hello, 3)[:8+3], false, false},
		{"an empty record", []byte{0x16, 3, 1, 0, 0}, false, true},
		{"a record over 16 KiB", []byte{0x16, 3, 1, 0x40, 1}, false, true},
		{"a message over 16 KiB", []byte{0x16, 3, 1, 0, 4, 1, 0, 0x40, 1}, false, true},
		{"not a handshake record after the first", append(splitRecord(hello, 100)[:105], 0x17, 3, 3, 0, 1, 0), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var all helloScan
			if here, bad := all.more(tc.buf); here != tc.here || bad != tc.bad {
				t.Errorf("all at once: here %v bad %v, want %v %v", here, bad, tc.here, tc.bad)
			}
			var h helloScan
			for i := range len(tc.buf) {
				if here, bad := h.more(tc.buf[:i+1]); here || bad {
					if here != tc.here || bad != tc.bad {
						t.Errorf("a byte at a time, at %d of %d: here %v bad %v, want %v %v", i+1, len(tc.buf), here, bad, tc.here, tc.bad)
					}
					return
				}
			}
			if tc.here || tc.bad {
				t.Errorf("a byte at a time: neither here nor bad, want %v %v", tc.here, tc.bad)
			}
		})
	}
	// Each record is read once: a hello trickled a byte at a time in records of one
	// byte costs the loop its length, not its square (1.8 s for 64 KiB when each call
	// read every record again).
	n := maxClientHello - 4
	msg := append([]byte{1, 0, byte(n >> 8), byte(n)}, make([]byte, n)...)
	tiny := splitRecord(append([]byte{0x16, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...), 1)[:maxInbound]
	began := time.Now()
	var h helloScan
	for i := range len(tiny) {
		h.more(tiny[:i+1])
	}
	if took := time.Since(began); took > 500*time.Millisecond {
		t.Errorf("%d bytes of one-byte records, a byte at a time: %v", len(tiny), took)
	}
}

// handshakes reads offload_tls_handshakes_total{result=result}.
func handshakes(t *testing.T, s *Server, result string) float64 {
	t.Helper()
	families, err := s.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "offload_tls_handshakes_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestTLSHandshakesCounted: every handshake begun is counted once, as ok or failed,
// however it ends: done, refused by crypto/tls, or cut by the client's reset midway
// (which closes the connection before the loop hears how the handshake went).
func TestTLSHandshakesCounted(t *testing.T) {
	tlsMode = true
	s := start(t, newBase(t), nil)
	tlsMode = false
	hello := clientHello(t)
	for _, tc := range []struct {
		name   string
		result string
		client func(t *testing.T)
	}{
		{"done", "ok", func(t *testing.T) {
			conn, err := dialTLS(s.addr)
			if err != nil {
				t.Fatal(err)
			}
			conn.Close()
		}},
		{"garbage after the hello", "failed", func(t *testing.T) {
			conn, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write(append(append([]byte(nil), hello...), 0x16, 3, 3, 0, 4, 0xff, 0xff, 0xff, 0xff))
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.ReadAll(conn)
		}},
		{"reset before the client's Finished", "failed", func(t *testing.T) {
			raw, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			// The client checks the server's certificate once the server's whole flight
			// is in, before it sends its Finished: the server waits for that then.
			checking := make(chan struct{})
			cut := make(chan struct{})
			conn := tls.Client(raw, &tls.Config{RootCAs: testRoots, ServerName: "localhost",
				VerifyConnection: func(tls.ConnectionState) error { close(checking); <-cut; return io.EOF }})
			done := make(chan struct{})
			go func() { conn.Handshake(); close(done) }()
			<-checking
			resetConn(raw)
			close(cut)
			<-done
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := handshakes(t, s.Server, tc.result) + 1
			tc.client(t)
			waitFor(t, "the handshake counted", func() bool { return handshakes(t, s.Server, tc.result) == want })
		})
	}
}

// dialTLS opens an HTTPS connection to the test server, handshake done.
func dialTLS(addr string) (*tls.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{RootCAs: testRoots, ServerName: "localhost"})
}

// dialTLSSmall opens an HTTPS connection whose receive buffer is small from the start.
// (Shrinking it later, once the window has grown, makes Linux pace the sender by its
// zero-window probes, about 150 KB/s, over HTTP as over HTTPS.)
func dialTLSSmall(t *testing.T, addr string, rcvbuf int) *tls.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
		return nil
	}}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: testRoots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestTLSIdleAfterHandshake: a client that completes its handshake and sends no request
// is closed at the idle timeout (not the longer head timeout); its twin, which asks
// within it, is answered.
func TestTLSIdleAfterHandshake(t *testing.T) {
	const idleTimeout = 500 * time.Millisecond
	tlsMode = true
	s := start(t, newBase(t), func(c *Config, _ *limiter.Config, _ *cache.Config) {
		c.IdleTimeout, c.HeaderTimeout = idleTimeout, 10*time.Second
	})
	tlsMode = false
	idle := dialTLSSmall(t, s.addr, 64<<10)
	began := time.Now()
	asks := dialTLSSmall(t, s.addr, 64<<10)
	time.Sleep(idleTimeout / 2)
	asks.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(asks, "GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(asks), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a request within the idle timeout: %v", err)
	}
	idle.SetReadDeadline(time.Now().Add(8 * time.Second))
	if n, err := io.Copy(io.Discard, idle); err != nil || n != 0 {
		t.Fatalf("idle after its handshake: %d bytes, %v", n, err)
	}
	if took := time.Since(began); took < idleTimeout || took > idleTimeout+2*time.Second {
		t.Errorf("closed %v after its handshake; the idle timeout is %v", took, idleTimeout)
	}
}

// TestTLSStalledReaderDropped: an HTTPS client that stops reading a big body is dropped
// at the send timeout, as a plain one is; its twin, which reads a little within every
// timeout, gets the whole body however long it takes.
func TestTLSStalledReaderDropped(t *testing.T) {
	const timeout = time.Second
	tlsMode = true
	b := newBase(t)
	data := randomBytes(6 << 20)
	b.write(t, "/big.bin", data)
	s := start(t, b, func(c *Config, l *limiter.Config, _ *cache.Config) {
		c.Timeout = timeout
		l.MaxDupes = 0
	})
	tlsMode = false
	httpGet(t, s.url+"/big.bin") // cached
	http.DefaultClient.CloseIdleConnections()

	slow := dialTLSSmall(t, s.addr, 16<<10)
	stalled := dialTLSSmall(t, s.addr, 16<<10)
	fmt.Fprintf(stalled, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	began := time.Now()
	fmt.Fprintf(slow, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	slowBody := make(chan []byte, 1)
	go func() {
		slow.SetReadDeadline(time.Now().Add(60 * time.Second))
		br := bufio.NewReader(slow)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			slowBody <- nil
			return
		}
		var got []byte
		buf := make([]byte, 512<<10)
		for {
			// Half a timeout between reads, each of at most 512 KiB: 6 MiB take 6 s.
			time.Sleep(timeout / 2)
			n, err := io.ReadFull(resp.Body, buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		slowBody <- got
	}()
	// The stalled one is gone within the timeout (and the sweeper's period) once its
	// socket is full, which takes a moment: its slot is free, its connection closed.
	waitFor(t, "the stalled reader dropped", func() bool { return s.cfg.Limiter.Conns() == 1 })
	if took := time.Since(began); took < timeout || took > timeout+2*time.Second {
		t.Errorf("the stalled reader dropped %v after its request; the send timeout is %v", took, timeout)
	} else {
		t.Logf("the stalled reader dropped %v after its request", took.Round(10*time.Millisecond))
	}
	stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := io.Copy(io.Discard, stalled); n >= int64(len(data)) {
		t.Errorf("the stalled reader got %d bytes: the whole body", n)
	}
	if got := <-slowBody; !bytes.Equal(got, data) {
		t.Errorf("the slow reader got %d of %d bytes, or other bytes", len(got), len(data))
	}
}

// TestTLSShutdownWaitsForDownload: Shutdown lets an HTTPS download under way run to its
// last byte, then closes its connection and returns.
func TestTLSShutdownWaitsForDownload(t *testing.T) {
	tlsMode = true
	b := newBase(t)
	data := randomBytes(8 << 20)
	b.write(t, "/dl.bin", data)
	s := start(t, b, noCap)
	tlsMode = false
	httpGetWithin(t, 20*time.Second, s.url+"/dl.bin") // cached

	conn := dialTLSSmall(t, s.addr, 64<<10)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "GET /dl.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("download: %v", err)
	}
	waitFor(t, "the download under way", func() bool { return s.Downloads() == 1 })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	// Read slowly: 256 KiB every 50 ms, about 1.6 s in all.
	var got []byte
	buf := make([]byte, 256<<10)
	for {
		n, err := io.ReadFull(resp.Body, buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
		if len(got) == 4<<20 {
			select {
			case <-done:
				t.Fatal("Shutdown returned halfway through a download")
			default:
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("download under way at Shutdown: %d of %d bytes, or other bytes", len(got), len(data))
	}
	if n, err := br.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("after the download: %d bytes, %v; want the connection closed", n, err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the download ended")
	}
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestTLSHandshakesCutAtEveryPoint: clients that reset or close at every point of the
// handshake — right after their ClientHello, once the server's flight is in, right
// after their Finished — leave nothing behind: no handshake goroutine, no duplicate
// of a socket, no connection.
func TestTLSHandshakesCutAtEveryPoint(t *testing.T) {
	tlsMode = true
	s := start(t, newBase(t), nil)
	tlsMode = false
	hello := clientHello(t)
	time.Sleep(100 * time.Millisecond)
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	// Each cut readies the close of raw; after runs once raw is closed.
	cuts := []func(raw net.Conn) (after func()){
		func(raw net.Conn) func() { raw.Write(hello); return func() {} }, // after the ClientHello
		func(raw net.Conn) func() { // once the server's flight is in
			checking, cut := make(chan struct{}), make(chan struct{})
			conn := tls.Client(raw, &tls.Config{RootCAs: testRoots, ServerName: "localhost",
				VerifyConnection: func(tls.ConnectionState) error { close(checking); <-cut; return io.EOF }})
			go conn.Handshake()
			<-checking
			return func() { close(cut) }
		},
		func(raw net.Conn) func() { // after the Finished
			tls.Client(raw, &tls.Config{RootCAs: testRoots, ServerName: "localhost"}).Handshake()
			return func() {}
		},
	}
	var wg sync.WaitGroup
	for i := range 150 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Error(err)
				return
			}
			after := cuts[i%len(cuts)](raw)
			if i%2 == 0 {
				resetConn(raw)
			} else {
				raw.Close()
			}
			after()
		}()
	}
	wg.Wait()
	waitFor(t, "every connection closed", func() bool { return s.cfg.Limiter.Conns() == 0 })
	// A handshake goroutine may still be busy (signing, say) when its connection
	// closes: it ends, and closes its duplicate of the socket, soon after.
	waitFor(t, "every handshake goroutine ended", func() bool {
		return runtime.NumGoroutine() <= goroutines+2 && openFDs(t) <= fds
	})
}
