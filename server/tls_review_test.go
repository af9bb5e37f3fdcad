package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// Findings of an attacker's review of the HTTPS path, each a test that failed before
// its fix.

// TestTLSCloseNotifyThenFlood: a client that sends part of a head, then close_notify,
// then raw bytes: nothing read gnet's input after the close_notify, so every byte
// piled up in the server's memory until the head timeout (127 MiB in 4 s). Now the
// connection is closed at once: the head can never be finished.
func TestTLSCloseNotifyThenFlood(t *testing.T) {
	for _, notify := range []bool{false, true} {
		t.Run(fmt.Sprint("close_notify=", notify), func(t *testing.T) {
			tlsMode = true
			s := start(t, newBase(t), func(c *Config, _ *limiter.Config, _ *cache.Config) { c.HeaderTimeout = 10 * time.Second })
			tlsMode = false
			raw, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			tc := tls.Client(raw, &tls.Config{RootCAs: testRoots, ServerName: "localhost"})
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(tc, "GET /x HTTP/1.1\r\nHost: a\r\n")
			if notify {
				tc.CloseWrite()
			}
			time.Sleep(100 * time.Millisecond)
			junk := make([]byte, 256<<10)
			sent := 0
			raw.SetWriteDeadline(time.Now().Add(3 * time.Second))
			for sent < 1<<30 {
				n, err := raw.Write(junk)
				sent += n
				if err != nil {
					break
				}
			}
			// Without close_notify the junk is a bad record: closed at once too.
			if sent > 16<<20 {
				t.Errorf("the server took %d MiB of junk from one client before it closed", sent>>20)
			}
		})
	}
}

// TestTLSHandshakeGate: handshakes that block in GetCertificate (ACME obtaining a
// certificate can take minutes) outlive their connections, each holding a goroutine and
// a duplicate of its socket. Clients that send a ClientHello and reset at once piled
// them up without bound. Now at most maxHandshakes run; the others wait holding no
// goroutine or descriptor, and go on once places are free.
func TestTLSHandshakeGate(t *testing.T) {
	release := make(chan struct{})
	tlsMode = true
	s := start(t, newBase(t), func(c *Config, _ *limiter.Config, _ *cache.Config) {
		c.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			<-release
			return &testCert, nil
		}}
	})
	tlsMode = false
	const places = 8
	s.handshakes.mu.Lock()
	s.handshakes.max = places
	s.handshakes.mu.Unlock()
	hello := clientHello(t)
	time.Sleep(100 * time.Millisecond)
	g0, f0 := runtime.NumGoroutine(), openFDs(t)
	for range 100 {
		raw, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		raw.Write(hello)
		time.Sleep(2 * time.Millisecond)
		resetConn(raw)
	}
	waitFor(t, "every connection closed", func() bool { return s.cfg.Limiter.Conns() == 0 })
	g1, f1 := runtime.NumGoroutine(), openFDs(t)
	t.Logf("goroutines %d -> %d, descriptors %d -> %d with every connection closed", g0, g1, f0, f1)
	if f1-f0 > places+4 || g1-g0 > places+4 {
		t.Errorf("closed connections' handshakes hold %d descriptors and %d goroutines (at most %d may run)", f1-f0, g1-g0, places)
	}
	// The gate is still full, and the closed connections that waited in it leave its
	// queue at the sweeper's next turn.
	waitFor(t, "the closed waiters dropped", func() bool {
		s.handshakes.mu.Lock()
		defer s.handshakes.mu.Unlock()
		return len(s.handshakes.waiting) == 0
	})
	// A client that asks meanwhile waits for a place, and is served once the
	// certificate is there.
	got := make(chan error, 1)
	go func() {
		raw, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			got <- err
			return
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(8 * time.Second))
		tc := tls.Client(raw, &tls.Config{RootCAs: testRoots, ServerName: "localhost"})
		fmt.Fprintf(tc, "GET /robots.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
		b, err := io.ReadAll(tc)
		if err == nil && len(b) < 12 || err == nil && string(b[9:12]) != "200" {
			err = errors.New("answer: " + string(b))
		}
		got <- err
	}()
	time.Sleep(300 * time.Millisecond)
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("a client that waited for a place: %v", err)
	}
	waitFor(t, "the handshake goroutines gone", func() bool { return runtime.NumGoroutine() <= g0+2 })
}
