package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestHostileLoad runs the built daemon against many hostile clients at once — resets at
// every point of plain, single- and multi-range downloads, pipelining without reading,
// far ranges of cold files abandoned at once, oversized and malformed heads, slowloris,
// readers that stall until the send timeout, and over HTTPS: resets mid-body,
// ClientHellos cut short and stalled, garbage instead of a ClientHello or after a good
// handshake, handshakes closed at once, slowloris after the handshake, pipelining
// without reading, stalled readers — while well-behaved clients over HTTP and HTTPS on
// the same server check the sha256 of every body they get. It passes when the daemon is
// alive, no well-behaved client saw a wrong byte, the daemon's peak RSS stayed under the
// bound, every hostile client the daemon must cut was cut in time, and afterwards
// /metrics and /proc show no connection, download, window or data-file descriptor left
// open, and the handshakes counted.
//
// OFFLOAD_HOSTILE_DURATION sets how long the clients run (default 20s; the issue asks
// for one 10-minute run before a release: OFFLOAD_HOSTILE_DURATION=10m).
func TestHostileLoad(t *testing.T) {
	dur := 20 * time.Second
	if v := os.Getenv("OFFLOAD_HOSTILE_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("OFFLOAD_HOSTILE_DURATION: %v", err)
		}
		dur = d
	}
	if testing.Short() {
		dur = 5 * time.Second
	}
	files := map[string][]byte{
		"/big.bin":    randomData(8 << 20),
		"/medium.bin": randomData(300 << 10),
		"/small.bin":  randomData(2000),
	}
	b := startHostileBase(t, files)
	cacheDir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, t.TempDir(), "offload", []string{"offload.test"}, time.Now().Add(24*time.Hour))
	tlsAddr := freePort(t, "127.0.0.1")
	// The daemon's send timeout. A client it must drop for reading nothing is checked
	// twice that long after its request: the timeout runs from the last byte the client
	// accepted, which under load on two cores comes a while after the request. At 3 s,
	// well-behaved clients starved of CPU by -race and the other test packages went that
	// long without reading and were cut (a CI run: one 8 MiB body ended at 6.3 MiB).
	const sendTimeout = 6 * time.Second
	d := startDaemon(t, "--base", b.url, "--cache", cacheDir, "--cache-size", "2G", "--timeout", sendTimeout.String(), "--loops", "2",
		"--tls-listen", tlsAddr, "--tls-cert", certFile, "--tls-key", keyFile)
	pid := d.cmd.Process.Pid
	addr := strings.TrimPrefix(d.url, "http://")
	certPEM, _ := os.ReadFile(certFile)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	tlsCfg := &tls.Config{RootCAs: roots, ServerName: "offload.test"}
	hello := clientHelloRecord(t)
	fdsIdle := countFDs(t, pid)

	// The peak RSS while the clients run.
	var peakRSS atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if kb := rssKiB(pid); kb > peakRSS.Load() {
				peakRSS.Store(kb)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	var counts sync.Map // kind → *atomic.Int64
	count := func(kind string) {
		v, _ := counts.LoadOrStore(kind, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	// cut records hostile clients that the daemon failed to cut in time.
	cut := make(chan string, 64)
	failedToCut := func(what string) {
		select {
		case cut <- what:
		default:
		}
	}
	kinds := 0
	hostile := func(n int, kind string, fn func(rng *rand.Rand, local string)) {
		kinds++
		block := kinds
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), uint64(block)))
				local := fmt.Sprintf("127.0.%d.%d", block, 10+i) // an address of its own
				for time.Now().Before(deadline) {
					fn(rng, local)
					count(kind)
				}
			}()
		}
	}
	dialTo := func(local, addr string) (net.Conn, error) {
		dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 2 * time.Second}
		return dl.Dial("tcp", addr)
	}
	dialFrom := func(local string) (net.Conn, error) { return dialTo(local, addr) }
	// dialTLS returns an HTTPS connection, its handshake done, and the TCP one under it.
	dialTLS := func(local string) (*tls.Conn, *net.TCPConn, error) {
		raw, err := dialTo(local, tlsAddr)
		if err != nil {
			return nil, nil, err
		}
		conn := tls.Client(raw, tlsCfg)
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if err := conn.Handshake(); err != nil {
			raw.Close()
			return nil, nil, err
		}
		conn.SetDeadline(time.Time{})
		return conn, raw.(*net.TCPConn), nil
	}
	resetHeads := []string{
		"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99,100000-299999,1000000-7999999\r\n\r\n",
		"GET /medium.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-\r\n\r\n",
		"GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /medium.bin HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /small.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-10,20-30,40-50\r\n\r\n",
		"HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	hostile(6, "reset mid-body", func(rng *rand.Rand, local string) {
		conn, err := dialFrom(local)
		if err != nil {
			return
		}
		h := resetHeads[rng.IntN(len(resetHeads))]
		switch rng.IntN(4) {
		case 0:
			conn.Write([]byte(h[:rng.IntN(len(h))]))
		case 1:
			conn.Write([]byte(h))
		default:
			conn.Write([]byte(h))
			conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			io.CopyN(io.Discard, conn, int64(rng.IntN(4<<20)))
		}
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	})
	hostile(2, "pipeline without reading", func(rng *rand.Rand, local string) {
		conn, err := dialFrom(local)
		if err != nil {
			return
		}
		defer conn.Close()
		// Requests answered at once (robots.txt), or after asking the base.
		burst := []byte(strings.Repeat("GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n", 1000))
		if rng.IntN(2) == 0 {
			burst = []byte(strings.Repeat("GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n", 500))
		}
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for sent := 0; sent < 512<<20; {
			n, err := conn.Write(burst)
			sent += n
			if err != nil {
				return
			}
		}
	})
	var cold atomic.Int64
	hostile(2, "far range abandoned", func(rng *rand.Rand, local string) {
		conn, err := dialFrom(local)
		if err != nil {
			return
		}
		at := 40<<20 + rng.IntN(8<<20)
		rangeHdr := fmt.Sprintf("bytes=%d-%d", at, at)
		if rng.IntN(2) == 0 {
			rangeHdr = fmt.Sprintf("bytes=%d-", at)
		}
		fmt.Fprintf(conn, "GET /cold/%d.bin HTTP/1.1\r\nHost: x\r\nRange: %s\r\n\r\n", cold.Add(1), rangeHdr)
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.CopyN(io.Discard, conn, 2000)
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	})
	badHeads := []string{
		"GET /big.bin HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n",
		"GET /" + strings.Repeat("p", 9000) + " HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /big.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
		"POST /big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("b", 100000),
		"GET //evil/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage that looks like TLS\r\n\r\n",
		"GET /big.bin HTTP/2.0\r\n\r\n",
	}
	hostile(2, "oversized or malformed head", func(rng *rand.Rand, local string) {
		conn, err := dialFrom(local)
		if err != nil {
			return
		}
		defer conn.Close()
		go conn.Write([]byte(badHeads[rng.IntN(len(badHeads))]))
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		io.Copy(io.Discard, conn)
	})
	hostile(1, "slowloris", func(rng *rand.Rand, local string) {
		var conns []net.Conn
		for range 20 {
			if c, err := dialFrom(local); err == nil {
				conns = append(conns, c)
			}
		}
		head := "GET /big.bin HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"
		for i := 0; i < len(head) && time.Now().Before(deadline); i++ {
			for _, c := range conns {
				c.Write([]byte{head[i]})
			}
			time.Sleep(500 * time.Millisecond)
		}
		for _, c := range conns {
			c.Close()
		}
	})
	hostile(2, "stalled reader", func(rng *rand.Rand, local string) {
		conn, err := dialFrom(local)
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte("GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
		// Never read: the daemon's send timeout (3 s) must end it.
		conn.SetReadDeadline(time.Now().Add(8 * time.Second))
		time.Sleep(4 * time.Second)
		if _, err := io.Copy(io.Discard, conn); err != nil {
			return
		}
	})

	// Over HTTPS.
	hostile(4, "TLS reset mid-body", func(rng *rand.Rand, local string) {
		conn, raw, err := dialTLS(local)
		if err != nil {
			return
		}
		h := resetHeads[rng.IntN(len(resetHeads))]
		switch rng.IntN(4) {
		case 0:
			conn.Write([]byte(h[:rng.IntN(len(h))]))
		case 1:
			conn.Write([]byte(h))
		default:
			conn.Write([]byte(h))
			conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			io.CopyN(io.Discard, conn, int64(rng.IntN(4<<20)))
		}
		raw.SetLinger(0)
		raw.Close()
	})
	// The daemon's head timeout, which bounds a handshake too.
	const headTimeout = 10 * time.Second
	hostile(1, "ClientHello cut short and stalled", func(rng *rand.Rand, local string) {
		var conns []net.Conn
		for range 10 {
			if c, err := dialTo(local, tlsAddr); err == nil {
				conns = append(conns, c)
				if rng.IntN(2) == 0 {
					c.Write(hello[:1+rng.IntN(len(hello)-1)]) // cut inside its record
				} else {
					split := splitHello(hello, 1+rng.IntN(300))
					c.Write(split[:rng.IntN(len(split)-5)+5]) // some records of it, not all
				}
			}
		}
		if time.Until(deadline) < headTimeout+2*time.Second {
			// Too late to wait for the head timeout: the checks afterwards see to these.
			time.Sleep(time.Until(deadline))
			for _, c := range conns {
				c.Close()
			}
			return
		}
		began := time.Now()
		for _, c := range conns {
			c.SetReadDeadline(began.Add(headTimeout + 2*time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				failedToCut(fmt.Sprintf("a ClientHello stalled %v: %v", time.Since(began).Round(time.Second), err))
			}
			c.Close()
		}
	})
	hostile(2, "garbage instead of a ClientHello", func(rng *rand.Rand, local string) {
		raw, err := dialTo(local, tlsAddr)
		if err != nil {
			return
		}
		defer raw.Close()
		junk := make([]byte, 1+rng.IntN(3000))
		for i := range junk {
			junk[i] = byte(rng.Uint32())
		}
		switch rng.IntN(4) {
		case 0:
			junk[0] = 0x16 // looks like a handshake record
		case 1:
			copy(junk, "GET /small.bin HTTP/1.1\r\n") // plain HTTP: a 400
		}
		go raw.Write(junk)
		// Cut at once, or at the head timeout if it looks like the start of a record;
		// one that would wait past the load's end is left to the checks afterwards.
		wait := headTimeout + 2*time.Second
		verify := time.Until(deadline) > wait
		if !verify {
			wait = max(time.Until(deadline), 100*time.Millisecond)
		}
		raw.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.Copy(io.Discard, raw); verify && err != nil && !errors.Is(err, syscall.ECONNRESET) {
			failedToCut(fmt.Sprintf("garbage instead of a ClientHello: %v", err))
		}
	})
	var helloThenGarbage atomic.Int64
	hostile(1, "ClientHello then garbage", func(rng *rand.Rand, local string) {
		raw, err := dialTo(local, tlsAddr)
		if err != nil {
			return
		}
		defer raw.Close()
		// The client's Finished should follow the ClientHello, as an encrypted record:
		// one that cannot be decrypted fails the handshake.
		junk := append(append([]byte(nil), hello...), 0x17, 3, 3, 0, 32)
		for range 32 {
			junk = append(junk, byte(rng.Uint32()))
		}
		raw.Write(junk)
		raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, raw); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			failedToCut(fmt.Sprintf("a ClientHello then garbage: %v", err))
			return
		}
		helloThenGarbage.Add(1)
	})
	hostile(2, "garbage records after a good handshake", func(rng *rand.Rand, local string) {
		conn, raw, err := dialTLS(local)
		if err != nil {
			return
		}
		defer raw.Close()
		// Before any request, after an answer, or in the middle of one, which the
		// client then stops reading (the daemon reads the garbage only after it).
		when := rng.IntN(3)
		switch when {
		case 1:
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			conn.Write([]byte("GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
			if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
				io.Copy(io.Discard, resp.Body)
			}
		case 2:
			conn.Write([]byte("GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
			conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			io.CopyN(io.Discard, conn, int64(rng.IntN(1<<20)))
		}
		// Whole records, so that the daemon need not wait for more: of a random type,
		// or application data that does not decrypt.
		n := 1 + rng.IntN(2000)
		rec := []byte{byte(20 + rng.IntN(5)), 3, 3, byte(n >> 8), byte(n)}
		for range n {
			rec = append(rec, byte(rng.Uint32()))
		}
		raw.Write(rec)
		if when == 2 {
			time.Sleep(2 * sendTimeout)
		}
		raw.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, raw); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			failedToCut(fmt.Sprintf("garbage records after a handshake (%d): %v", when, err))
		}
	})
	hostile(2, "TLS handshake then close", func(rng *rand.Rand, local string) {
		_, raw, err := dialTLS(local)
		if err != nil {
			return
		}
		if rng.IntN(2) == 0 {
			raw.SetLinger(0)
		}
		raw.Close()
	})
	hostile(1, "TLS slowloris", func(rng *rand.Rand, local string) {
		var conns []*tls.Conn
		for range 10 {
			if c, raw, err := dialTLS(local); err == nil {
				conns = append(conns, c)
				defer raw.Close()
			}
		}
		began := time.Now()
		head := "GET /big.bin HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"
		for i := 0; i < len(head) && time.Now().Before(deadline); i++ {
			for _, c := range conns {
				c.Write([]byte{head[i]})
			}
			time.Sleep(500 * time.Millisecond)
		}
		if time.Since(began) < headTimeout+2*time.Second {
			return
		}
		for _, c := range conns { // closed at the head timeout since their first byte
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					failedToCut(fmt.Sprintf("a TLS slowloris open %v; the daemon's side: %s",
						time.Since(began).Round(time.Second), serverSide(c.LocalAddr().String(), tlsAddr)))
				}
			}
		}
	})
	hostile(2, "TLS pipeline without reading", func(rng *rand.Rand, local string) {
		conn, raw, err := dialTLS(local)
		if err != nil {
			return
		}
		defer raw.Close()
		burst := []byte(strings.Repeat("GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n", 1000))
		if rng.IntN(2) == 0 {
			burst = []byte(strings.Repeat("GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n", 500))
		}
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for sent := 0; sent < 512<<20; {
			n, err := conn.Write(burst)
			sent += n
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					failedToCut(fmt.Sprintf("a TLS client pipelining without reading, after %d bytes", sent))
				}
				return
			}
		}
	})
	hostile(2, "stalled TLS reader", func(rng *rand.Rand, local string) {
		conn, raw, err := dialTLS(local)
		if err != nil {
			return
		}
		defer raw.Close()
		conn.Write([]byte("GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
		// Never read: the daemon's send timeout must end it, as for plain HTTP.
		time.Sleep(2 * sendTimeout)
		raw.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := io.Copy(io.Discard, raw)
		if ne, ok := err.(net.Error); ok && ne.Timeout() || n >= int64(len(files["/big.bin"])) {
			failedToCut(fmt.Sprintf("a stalled TLS reader: %d bytes, %v", n, err))
		}
	})

	// Well-behaved clients, over HTTP and HTTPS, check every byte.
	var good, bad, goodTLSConns atomic.Int64
	errs := make(chan string, 64)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := fmt.Sprintf("127.0.250.%d", 10+i)
			url, tr := d.url, &http.Transport{
				DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}).DialContext,
			}
			if i >= 4 {
				url, tr.TLSClientConfig = "https://"+tlsAddr, tlsCfg
			}
			client := &http.Client{Timeout: 30 * time.Second, Transport: tr}
			defer client.CloseIdleConnections()
			paths := []string{"/big.bin", "/medium.bin", "/small.bin"}
			for j := 0; time.Now().Before(deadline); j++ {
				path := paths[(i+j)%len(paths)]
				want := files[path]
				var fresh bool
				req, _ := http.NewRequest("GET", url+path, nil)
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					GotConn: func(info httptrace.GotConnInfo) { fresh = !info.Reused },
				}))
				lo, hi := 0, len(want)
				if j%4 == 3 {
					lo, hi = len(want)/3, len(want)/3+len(want)/4+1
					req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", lo, hi-1))
				}
				resp, err := client.Do(req)
				if err != nil {
					bad.Add(1)
					select {
					case errs <- fmt.Sprintf("%s: %v", path, err):
					default:
					}
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || (resp.StatusCode != 200 && resp.StatusCode != 206) || sha256.Sum256(body) != sha256.Sum256(want[lo:hi]) {
					bad.Add(1)
					select {
					case errs <- fmt.Sprintf("%s%s (bytes %d-%d): status %d, %d bytes, err %v: WRONG BODY", url, path, lo, hi, resp.StatusCode, len(body), err):
					default:
					}
					continue
				}
				good.Add(1)
				if fresh && resp.TLS != nil {
					goodTLSConns.Add(1) // its handshake done on the daemon's side too
				}
			}
		}()
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	close(errs)
	close(cut)

	var summary []string
	counts.Range(func(k, v any) bool {
		summary = append(summary, fmt.Sprintf("%s %d", k, v.(*atomic.Int64).Load()))
		return true
	})
	t.Logf("%v: %d checked bodies good, %d bad; hostile: %s; peak RSS %d MiB",
		dur, good.Load(), bad.Load(), strings.Join(summary, ", "), peakRSS.Load()>>10)
	for e := range errs {
		t.Error(e)
	}
	if bad.Load() > 0 {
		t.Logf("the daemon's log:\n%s", d.stderr)
	}
	for e := range cut {
		t.Errorf("not cut in time: %s", e)
	}
	if d.cmd.ProcessState != nil || d.cmd.Process.Signal(syscallZero) != nil {
		t.Fatalf("the daemon died: %s", d.stderr)
	}
	if good.Load() == 0 {
		t.Fatal("no well-behaved download completed")
	}
	// The bound: the Go runtime and caches idle at about 12 MiB; each connection costs a
	// few KiB, at most 64 KiB of unread input and one answer; pooled buffers come and go.
	const maxRSSMiB = 200
	if peakRSS.Load()>>10 > maxRSSMiB {
		t.Errorf("peak RSS %d MiB, over the %d MiB bound", peakRSS.Load()>>10, maxRSSMiB)
	}
	// Afterwards nothing is left open: connections and downloads at once (lingering
	// closes end within 5 s, slowloris heads within the 10 s head timeout), data files
	// once idle descriptors expire (10 s).
	waitMetrics(t, d, 40*time.Second, map[string]float64{
		"offload_active_connections": 0,
		"offload_active_downloads":   0,
		"offload_upstream_windows":   0,
		"offload_open_files":         0,
	})
	// The kernel's view: no data file open, and no client socket of the daemon's port
	// in any state but LISTEN and TIME_WAIT (which holds no descriptor). Connections to
	// the base stay in the upstream pool, so the plain count may grow by those.
	if files := openFilesUnder(t, pid, cacheDir); len(files) > 0 {
		t.Errorf("data files still open after the load: %v", files)
	}
	for _, a := range []string{addr, tlsAddr} {
		if n := clientSockets(t, a); n > 0 {
			t.Errorf("%d client sockets of the daemon's %s still open after the load", n, a)
		}
	}
	// Every handshake begun was counted: at least those of the well-behaved clients'
	// connections as done, and those a bad record ended as failed.
	m := scrape(t, d)
	ok, failed := m[`offload_tls_handshakes_total{result="ok"}`], m[`offload_tls_handshakes_total{result="failed"}`]
	t.Logf("TLS handshakes: %v ok, %v failed", ok, failed)
	if ok < float64(goodTLSConns.Load()) || failed < float64(helloThenGarbage.Load()) || failed == 0 {
		t.Errorf("TLS handshakes counted %v ok and %v failed; the clients saw at least %d done and %d failed",
			ok, failed, goodTLSConns.Load(), helloThenGarbage.Load())
	}
	t.Logf("descriptors: %d before the load, %d after (with the upstream pool)", fdsIdle, countFDs(t, pid))
	// And the daemon still serves every byte right, over HTTP and HTTPS.
	httpsClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer httpsClient.CloseIdleConnections()
	for path, want := range files {
		if sum, status := sha(t, d.url+path); status != 200 || sum != sha256.Sum256(want) {
			t.Errorf("%s after the load: status %d, body differs", path, status)
		}
		resp, err := httpsClient.Get("https://" + tlsAddr + path)
		if err != nil {
			t.Errorf("%s over HTTPS after the load: %v", path, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, want) {
			t.Errorf("%s over HTTPS after the load: status %d, %v, body differs", path, resp.StatusCode, err)
		}
	}
}

// clientHelloRecord is the first record crypto/tls's client sends: its ClientHello.
func clientHelloRecord(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: "offload.test"}).Handshake()
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

// splitHello is a ClientHello record's message cut into records of at most size bytes,
// as TLS allows.
func splitHello(rec []byte, size int) []byte {
	var out []byte
	for msg := rec[5:]; len(msg) > 0; {
		k := min(size, len(msg))
		out = append(out, rec[0], rec[1], rec[2], byte(k>>8), byte(k))
		out = append(out, msg[:k]...)
		msg = msg[k:]
	}
	return out
}

var syscallZero = syscall.Signal(0)

// startHostileBase serves files, and /cold/N.bin: 48 MiB generated from N, whose whole
// GET trickles (the fill stays far behind) and whose ranges come at once.
func startHostileBase(t *testing.T, files map[string][]byte) *testBase {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &testBase{url: "http://" + ln.Addr().String()}
	mod := time.Unix(1_700_000_000, 0)
	const coldSize = 48 << 20
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Mod-Offload-Bypass") != "true" {
			http.Error(w, "not from offload", 400)
			return
		}
		if n, ok := strings.CutPrefix(r.URL.Path, "/cold/"); ok {
			seed, _ := strconv.Atoi(strings.TrimSuffix(n, ".bin"))
			w.Header().Set("ETag", fmt.Sprintf(`"cold-%d"`, seed))
			content := &patternReader{seed: byte(seed), size: coldSize}
			if r.Method == "GET" && r.Header.Get("Range") == "" {
				w.Header().Set("Content-Length", strconv.Itoa(coldSize))
				w.Header().Set("Last-Modified", mod.UTC().Format(http.TimeFormat))
				buf := make([]byte, 256<<10)
				for off := 0; off < coldSize; off += len(buf) {
					content.ReadAt(buf, int64(off))
					if _, err := w.Write(buf); err != nil {
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
				return
			}
			http.ServeContent(w, r, "", mod, io.NewSectionReader(content, 0, coldSize))
			return
		}
		data, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method == "GET" {
			b.gets.Add(1)
		}
		w.Header().Set("ETag", fmt.Sprintf(`"%x"`, sha256.Sum256(data)))
		http.ServeContent(w, r, "", mod, bytes.NewReader(data))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

// patternReader is size bytes that depend on their offset and seed.
type patternReader struct {
	seed byte
	size int64
}

func (p *patternReader) ReadAt(b []byte, off int64) (int, error) {
	n := 0
	for ; n < len(b) && off+int64(n) < p.size; n++ {
		x := off + int64(n)
		b[n] = byte(x) ^ byte(x>>8) ^ byte(x>>16) ^ p.seed
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func randomData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

func rssKiB(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb
		}
	}
	return 0
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// openFilesUnder lists the files under dir that process pid has open.
func openFilesUnder(t *testing.T, pid int, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, e := range ents {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil && strings.HasPrefix(target, dir) {
			open = append(open, target)
		}
	}
	return open
}

// clientSockets counts the TCP sockets whose local end is addr (host:port) in a state
// that holds a descriptor: everything but LISTEN (0A) and TIME_WAIT (06).
func clientSockets(t *testing.T, addr string) int {
	t.Helper()
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		_, lp, _ := strings.Cut(f[1], ":")
		if p, err := strconv.ParseInt(lp, 16, 32); err == nil && int(p) == port && f[3] != "0A" && f[3] != "06" {
			n++
		}
	}
	return n
}

// serverSide says what ss knows of the daemon's end (at addr) of the client's
// connection from local, for a failure message.
func serverSide(local, addr string) string {
	out, err := exec.Command("ss", "-tnieo", "state", "all", "src", addr, "dst", local).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ss: %v: %s", err, out)
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

// waitMetrics polls the admin listener until each named metric has its value.
func waitMetrics(t *testing.T, d *daemon, within time.Duration, want map[string]float64) {
	t.Helper()
	var last map[string]float64
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		last = scrape(t, d)
		ok := true
		for k, v := range want {
			if last[k] != v {
				ok = false
			}
		}
		if ok {
			return
		}
	}
	for k, v := range want {
		if last[k] != v {
			t.Errorf("%s = %v after the load, want %v", k, last[k], v)
		}
	}
}

// scrape reads the metrics of the admin listener, labelled ones by their whole name
// (name{label="value"}).
func scrape(t *testing.T, d *daemon) map[string]float64 {
	t.Helper()
	resp, err := http.Get(d.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if f, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				m[line[:i]] = f
			}
		}
	}
	return m
}
