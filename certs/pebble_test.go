package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The end-to-end ACME test runs pebble, Let's Encrypt's ACME test CA, with
// pebble-challtestsrv as its DNS server (every name resolves to 127.0.0.1), and obtains
// certificates for offload.test through TLS-ALPN-01 and through HTTP-01 from Stores
// serving real listeners. scripts/test installs both programs into .tools/bin.

// pebbleTool finds one of pebble's programs: in the repository's .tools/bin (where
// scripts/test installs them), on PATH, or in $HOME/go/bin.
func pebbleTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := filepath.Abs(filepath.Join("..", ".tools", "bin", name)); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		if p := filepath.Join(home, "go", "bin", name); fileExists(p) {
			return p
		}
	}
	msg := name + " is not installed: scripts/test installs it into .tools/bin (go install github.com/letsencrypt/pebble/v2/cmd/" +
		name + "@VERSION, the version pinned there)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// freeTCPPort reserves nothing: it returns a port that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// freeDNSPort is a port free for both UDP and TCP.
func freeDNSPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

// startProcess runs a program until the test ends; its output is shown if the test fails.
func startProcess(t *testing.T, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(name), out.String())
		}
	})
}

// lockedBuffer collects a child's output while the test may read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// quietLog drops net/http's log of failed handshakes (the refused TLS-ALPN-01 ones).
func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }

// pebbleCA is a running pebble.
type pebbleCA struct {
	dirURL    string
	rootsFile string         // PEM of the test CA that signed pebble's own HTTPS certificate
	roots     *x509.CertPool // pebble's issuing root, which the certificates it issues chain to
}

// startPebble runs pebble-challtestsrv as a DNS server that answers 127.0.0.1 for every
// name, and pebble validating challenges on httpPort and tlsPort of that address.
func startPebble(t *testing.T, httpPort, tlsPort int) *pebbleCA {
	t.Helper()
	pebble, challsrv := pebbleTool(t, "pebble"), pebbleTool(t, "pebble-challtestsrv")
	dir := t.TempDir()

	// pebble's own HTTPS certificate, from a CA of the test's: the Stores trust it
	// through ACMECARoots, as an operator would a private CA.
	ca := newTestCA(t)
	pair, _ := ca.issue(t, dir, "pebble", []string{"localhost"}, leafOpts{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	rootsFile := filepath.Join(dir, "test-ca.pem")
	writeFile(t, rootsFile, ca.pem)

	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freeDNSPort(t))
	startProcess(t, nil, challsrv, "-dnsserver", dnsAddr, "-management", fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t)),
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "") // no AAAA: pebble would try ::1 first

	acmeAddr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	mgmtAddr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	var cfg struct {
		Pebble map[string]any `json:"pebble"`
	}
	cfg.Pebble = map[string]any{
		"listenAddress":           acmeAddr,
		"managementListenAddress": mgmtAddr,
		"certificate":             pair.Cert,
		"privateKey":              pair.Key,
		"httpPort":                httpPort,
		"tlsPort":                 tlsPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
	}
	data, _ := json.Marshal(cfg)
	confFile := filepath.Join(dir, "pebble.json")
	writeFile(t, confFile, data)
	startProcess(t, []string{
		"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after up to 15 s
		"PEBBLE_WFE_NONCEREJECT=0", // reject no good nonce (it rejects 5 % by default)
		"PEBBLE_AUTHZREUSE=0",      // each order validates afresh
	}, pebble, "-config", confFile, "-dnsserver", dnsAddr)

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}}
	t.Cleanup(client.CloseIdleConnections)
	p := &pebbleCA{dirURL: "https://" + acmeAddr + "/dir", rootsFile: rootsFile}
	waitUntil(t, "pebble answers", func() bool {
		resp, err := client.Get(p.dirURL)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dnsAddr)
	}}
	waitUntil(t, "the DNS server answers offload.test with 127.0.0.1", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		addrs, err := resolver.LookupHost(ctx, "offload.test")
		return err == nil && slices.Equal(addrs, []string{"127.0.0.1"})
	})

	// pebble makes a new root at every start and serves it on its management port.
	resp, err := client.Get("https://" + mgmtAddr + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	p.roots = x509.NewCertPool()
	if err != nil || resp.StatusCode != 200 || !p.roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("pebble's root: %d %q %v", resp.StatusCode, rootPEM, err)
	}
	return p
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

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
	ca := startPebble(t, srv.httpPort, srv.tlsPort)
	newStore := func(t *testing.T, dir, caURL string, pairs ...Pair) *Store {
		t.Helper()
		s, err := New(Config{Pairs: pairs, ACMEDomains: []string{"offload.test"}, ACMEEmail: "hostmaster@offload.test",
			ACMECA: caURL, ACMEDir: dir, ACMECARoots: ca.rootsFile})
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
		srv.store.Store(newStore(t, acmeDir, ca.dirURL, pair))
		asked := srv.http01Asked.Load()

		st := srv.handshake(t, "offload.test", ca.roots) // verified against pebble's root
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
		again := srv.handshake(t, "offload.test", ca.roots)
		if again.PeerCertificates[0].SerialNumber.Cmp(st.PeerCertificates[0].SerialNumber) != 0 {
			t.Errorf("after a restart: certificate %v, want the kept %v", again.PeerCertificates[0].SerialNumber, st.PeerCertificates[0].SerialNumber)
		}
	})

	t.Run("HTTP-01", func(t *testing.T) {
		srv.refuseALPN.Store(true) // TLS-ALPN-01 fails, autocert goes on to HTTP-01
		srv.store.Store(newStore(t, filepath.Join(t.TempDir(), "acme"), ca.dirURL))
		found := srv.http01Found.Load()

		st := srv.handshake(t, "offload.test", ca.roots)
		checkIssued(t, st)
		if srv.http01Found.Load() == found {
			t.Error("issued without the plain listener answering an HTTP-01 challenge")
		}
	})
}
