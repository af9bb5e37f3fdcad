package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modoffload/offload/internal/pebbletest"
)

// The end-to-end ACME test runs pebble, Let's Encrypt's ACME test CA (package
// pebbletest), and obtains certificates for offload.test through TLS-ALPN-01 and through
// HTTP-01 from Stores serving real listeners.

// quietLog drops net/http's log of failed handshakes (the refused TLS-ALPN-01 ones).
func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }

// acmeServer is what the daemon does with a Store, on real sockets: a TLS listener
// made with tls.NewListener and the Store's config, and a plain HTTP listener that
// answers /.well-known/acme-challenge/ with ACMEChallenge. Which Store serves, and
// whether TLS-ALPN-01 is answered, change between the subtests.
type acmeServer struct {
	store       atomic.Pointer[Store]
	refuseALPN  atomic.Bool  // fail every acme-tls/1 handshake, so the CA must use HTTP-01
	http01Asked atomic.Int64 // challenge requests on the plain listener
	http01Found atomic.Int64 // those answered with a key authorization
	tlsAddr     string
	httpPort    int
	tlsPort     int
}

func startACMEServer(t *testing.T) *acmeServer {
	t.Helper()
	s := &acmeServer{}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.tlsAddr, s.tlsPort = raw.Addr().String(), raw.Addr().(*net.TCPAddr).Port
	ln := tls.NewListener(raw, &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if s.refuseALPN.Load() && slices.Contains(hello.SupportedProtos, "acme-tls/1") {
			return nil, errors.New("test: TLS-ALPN-01 refused")
		}
		return s.store.Load().TLSConfig(), nil
	}})
	tlsSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "offload over TLS\n")
	}), ErrorLog: quietLog()}
	go tlsSrv.Serve(ln)
	t.Cleanup(func() { tlsSrv.Close() })

	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.httpPort = plain.Addr().(*net.TCPAddr).Port
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.URL.Path, "/.well-known/acme-challenge/")
		if !ok {
			http.NotFound(w, r)
			return
		}
		s.http01Asked.Add(1)
		keyAuth, ok := s.store.Load().ACMEChallenge(r.Context(), token)
		if !ok {
			http.NotFound(w, r)
			return
		}
		s.http01Found.Add(1)
		w.Write(keyAuth)
	})}
	go httpSrv.Serve(plain)
	t.Cleanup(func() { httpSrv.Close() })
	return s
}

// handshake dials the TLS listener as a browser would for name, trusting roots.
func (s *acmeServer) handshake(t *testing.T, name string, roots *x509.CertPool) tls.ConnectionState {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{ServerName: name, RootCAs: roots,
		NextProtos: []string{"h2", "http/1.1"}}}
	// The first handshake for an ACME name waits while the certificate is obtained.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", s.tlsAddr)
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	defer c.Close()
	st := c.(*tls.Conn).ConnectionState()
	if st.NegotiatedProtocol != "http/1.1" {
		t.Errorf("ALPN %q, want http/1.1", st.NegotiatedProtocol)
	}
	return st
}

func TestACMEWithPebble(t *testing.T) {
	srv := startACMEServer(t)
	ca := pebbletest.Start(t, srv.httpPort, srv.tlsPort)
	newStore := func(t *testing.T, dir, caURL string, pairs ...Pair) *Store {
		t.Helper()
		s, err := New(Config{Pairs: pairs, ACMEDomains: []string{"offload.test"}, ACMEEmail: "hostmaster@offload.test",
			ACMECA: caURL, ACMEDir: dir, ACMECARoots: ca.RootsFile})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	checkIssued := func(t *testing.T, st tls.ConnectionState) {
		t.Helper()
		leaf := st.PeerCertificates[0]
		if !slices.Equal(leaf.DNSNames, []string{"offload.test"}) || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) < 3 {
			t.Fatalf("certificate for %v, verified chains %d (want leaf, pebble's intermediate, its root)", leaf.DNSNames, len(st.VerifiedChains))
		}
	}

	t.Run("TLS-ALPN-01, beside a certificate from files", func(t *testing.T) {
		fileCA, dir := newTestCA(t), t.TempDir()
		pair, fileSerial := fileCA.issue(t, dir, "files", []string{"files.test"}, leafOpts{})
		acmeDir := filepath.Join(t.TempDir(), "acme")
		srv.refuseALPN.Store(false)
		srv.store.Store(newStore(t, acmeDir, ca.DirURL, pair))
		asked := srv.http01Asked.Load()

		st := srv.handshake(t, "offload.test", ca.Roots) // verified against pebble's root
		checkIssued(t, st)
		if n := srv.http01Asked.Load() - asked; n != 0 {
			t.Errorf("the CA asked the plain listener %d times; TLS-ALPN-01 comes first", n)
		}
		// The name from files still gets its own certificate, and an unknown one the
		// first pair: ACME is for its domains only.
		for _, name := range []string{"files.test", "other.test"} {
			roots := fileCA.pool
			if name == "other.test" {
				roots = nil
			}
			d := &tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: roots, InsecureSkipVerify: roots == nil}}
			c, err := d.DialContext(context.Background(), "tcp", srv.tlsAddr)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if got := c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(fileSerial) != 0 {
				t.Errorf("%s: certificate %v, want the file's %v", name, got, fileSerial)
			}
			c.Close()
		}

		// A restart finds the certificate in the ACME folder and asks the CA nothing
		// (this Store's CA cannot be reached).
		srv.store.Store(newStore(t, acmeDir, "https://127.0.0.1:1/dir", pair))
		again := srv.handshake(t, "offload.test", ca.Roots)
		if again.PeerCertificates[0].SerialNumber.Cmp(st.PeerCertificates[0].SerialNumber) != 0 {
			t.Errorf("after a restart: certificate %v, want the kept %v", again.PeerCertificates[0].SerialNumber, st.PeerCertificates[0].SerialNumber)
		}
	})

	t.Run("HTTP-01", func(t *testing.T) {
		srv.refuseALPN.Store(true) // TLS-ALPN-01 fails, autocert goes on to HTTP-01
		srv.store.Store(newStore(t, filepath.Join(t.TempDir(), "acme"), ca.DirURL))
		found := srv.http01Found.Load()

		st := srv.handshake(t, "offload.test", ca.Roots)
		checkIssued(t, st)
		if srv.http01Found.Load() == found {
			t.Error("issued without the plain listener answering an HTTP-01 challenge")
		}
	})
}
