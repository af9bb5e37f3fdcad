package server

import (
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestTLSVersionsAndResumption: TLS 1.2 and 1.3 clients download the same bytes through
// the loop's record handling (1.2's explicit nonces, 1.3's record padding are crypto/tls's,
// the sizing and the partial writes ours); TLS 1.1 is refused; a second connection
// resumes the first one's session from its ticket; a client offering h2 gets http/1.1.
func TestTLSVersionsAndResumption(t *testing.T) {
	b := newBase(t)
	data := randomBytes(3<<20 + 17)
	b.write(t, "/v.bin", data)
	tlsMode = true
	s := start(t, b, nil)
	tlsMode = false
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cache := tls.NewLRUClientSessionCache(4)
		var states []tls.ConnectionState
		for i := 0; i < 2; i++ {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: testRoots, MinVersion: v, MaxVersion: v,
				ClientSessionCache: cache, NextProtos: []string{"h2", "http/1.1"}}}
			client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
			resp, err := client.Get(s.url + "/v.bin")
			if err != nil {
				t.Fatalf("TLS %x: %v", v, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, data) {
				t.Fatalf("TLS %x: status %d, %d bytes, %v", v, resp.StatusCode, len(body), err)
			}
			states = append(states, *resp.TLS)
			tr.CloseIdleConnections()
		}
		if states[0].Version != v || states[0].NegotiatedProtocol != "http/1.1" {
			t.Errorf("TLS %x: negotiated version %x, ALPN %q", v, states[0].Version, states[0].NegotiatedProtocol)
		}
		if states[0].DidResume || !states[1].DidResume {
			t.Errorf("TLS %x: resumed %v then %v, want false then true", v, states[0].DidResume, states[1].DidResume)
		}
	}
	conn, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: testRoots, MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 client was served")
	}
}
