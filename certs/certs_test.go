package certs

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testCA is a throwaway CA that signs the tests' certificates.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
	pem  []byte
}

var serial atomic.Int64

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: "offload test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leafOpts varies a leaf certificate from the default (ECDSA, valid now).
type leafOpts struct {
	rsa       bool
	notBefore time.Time
	notAfter  time.Time
	ips       []net.IP
}

// issue writes a leaf for names (and its key) into dir as NAME.pem and NAME.key and
// returns the pair and the leaf's serial number.
func (ca *testCA) issue(t *testing.T, dir, file string, names []string, o leafOpts) (Pair, *big.Int) {
	t.Helper()
	var key crypto.Signer
	var err error
	if o.rsa {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(time.Hour)
	}
	sn := big.NewInt(serial.Add(1))
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: file},
		DNSNames:     names,
		IPAddresses:  o.ips,
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := Pair{Cert: filepath.Join(dir, file+".pem"), Key: filepath.Join(dir, file+".key")}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.pem...)
	writeFile(t, p.Cert, chain)
	writeFile(t, p.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return p, sn
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	// Write and rename, as a certificate renewal tool does, so a reload never reads
	// half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startTLS serves cfg on 127.0.0.1 with an echo of each line; it returns the address.
func startTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// dial handshakes with addr and returns the connection and the leaf's serial number.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, *big.Int) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial %s (SNI %q): %v", addr, cfg.ServerName, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.ConnectionState().PeerCertificates[0].SerialNumber
}

func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("write on an open connection: %v", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("echo on an open connection: %q, %v", got, err)
	}
}

func TestSNIChoosesByTheCertificatesNames(t *testing.T) {
	ca, dir := newTestCA(t), t.TempDir()
	a, snA := ca.issue(t, dir, "a", []string{"a.test", "www.a.test"}, leafOpts{})
	b, snB := ca.issue(t, dir, "b", []string{"b.test", "*.b.test"}, leafOpts{})
	ip, snIP := ca.issue(t, dir, "ip", []string{"ip.test"}, leafOpts{ips: []net.IP{net.IPv4(127, 0, 0, 1)}})
	s, err := New(Config{Pairs: []Pair{a, b, ip}})
	if err != nil {
		t.Fatal(err)
	}
	addr := startTLS(t, s.TLSConfig())
	tests := []struct {
		name   string
		sni    string
		want   *big.Int
		verify bool // the client checks the chain and the name
	}{
		{"first pair's name", "a.test", snA, true},
		{"first pair's second name", "www.a.test", snA, true},
		{"upper case", "B.TEST", snB, true},
		{"wildcard", "dl.b.test", snB, true},
		{"a later pair", "ip.test", snIP, true},
		{"no name matches: the first pair", "other.test", snA, false},
		{"no SNI: the first pair", "", snA, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: tc.sni, RootCAs: ca.pool, InsecureSkipVerify: !tc.verify}
			c, got := dial(t, addr, cfg)
			if got.Cmp(tc.want) != 0 {
				t.Errorf("SNI %q: got certificate %v, want %v", tc.sni, got, tc.want)
			}
			echo(t, c, "hello")
		})
	}
}

func TestSNIChoosesAKeyTheClientSupports(t *testing.T) {
	ca, dir := newTestCA(t), t.TempDir()
	ec, snEC := ca.issue(t, dir, "ec", []string{"dl.test"}, leafOpts{})
	rs, snRSA := ca.issue(t, dir, "rsa", []string{"dl.test"}, leafOpts{rsa: true})
	s, err := New(Config{Pairs: []Pair{ec, rs}})
	if err != nil {
		t.Fatal(err)
	}
	addr := startTLS(t, s.TLSConfig())
	if _, got := dial(t, addr, &tls.Config{ServerName: "dl.test", RootCAs: ca.pool}); got.Cmp(snEC) != 0 {
		t.Errorf("a modern client got %v, want the ECDSA certificate %v", got, snEC)
	}
	// A TLS 1.2 client with RSA key exchange suites only cannot use an ECDSA key.
	rsaOnly := &tls.Config{ServerName: "dl.test", RootCAs: ca.pool, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}
	if _, got := dial(t, addr, rsaOnly); got.Cmp(snRSA) != 0 {
		t.Errorf("an RSA-only client got %v, want the RSA certificate %v", got, snRSA)
	}
}

func TestTLSConfig(t *testing.T) {
	ca, dir := newTestCA(t), t.TempDir()
	a, _ := ca.issue(t, dir, "a", []string{"a.test"}, leafOpts{})
	s, err := New(Config{Pairs: []Pair{a}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.TLSConfig()
	if cfg.MinVersion != tls.VersionTLS12 || cfg.MaxVersion != tls.VersionTLS13 || cfg.CipherSuites != nil ||
		!slices.Equal(cfg.NextProtos, []string{"http/1.1"}) || cfg.SessionTicketsDisabled {
		t.Fatalf("TLSConfig: versions %x-%x, suites %v, ALPN %v, tickets off %v", cfg.MinVersion, cfg.MaxVersion,
			cfg.CipherSuites, cfg.NextProtos, cfg.SessionTicketsDisabled)
	}
	addr := startTLS(t, cfg)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		c, _ := dial(t, addr, &tls.Config{ServerName: "a.test", RootCAs: ca.pool, MinVersion: v, MaxVersion: v,
			NextProtos: []string{"h2", "http/1.1"}})
		if st := c.ConnectionState(); st.Version != v || st.NegotiatedProtocol != "http/1.1" {
			t.Errorf("version %x: negotiated %x, ALPN %q", v, st.Version, st.NegotiatedProtocol)
		}
	}
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "a.test", RootCAs: ca.pool, MaxVersion: tls.VersionTLS11})
	if err == nil {
		c.Close()
		t.Error("a TLS 1.1 client was served")
	}
	// Session resumption: the second connection resumes the first's session.
	cache := tls.NewLRUClientSessionCache(4)
	for i := range 2 {
		c, _ := dial(t, addr, &tls.Config{ServerName: "a.test", RootCAs: ca.pool, ClientSessionCache: cache})
		echo(t, c, "x") // TLS 1.3 tickets arrive after the handshake
		if got := c.ConnectionState().DidResume; got != (i == 1) {
			t.Errorf("connection %d: resumed %v", i+1, got)
		}
	}

	acmeOn, err := New(Config{ACMEDomains: []string{"offload.test"}, ACMEDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if got := acmeOn.TLSConfig().NextProtos; !slices.Equal(got, []string{"http/1.1", "acme-tls/1"}) {
		t.Errorf("with ACME, ALPN %v", got)
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	ca, dir := newTestCA(t), t.TempDir()
	good, _ := ca.issue(t, dir, "good", []string{"a.test"}, leafOpts{})
	other, _ := ca.issue(t, dir, "other", []string{"a.test"}, leafOpts{})
	expired, _ := ca.issue(t, dir, "expired", []string{"a.test"},
		leafOpts{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)})
	future, _ := ca.issue(t, dir, "future", []string{"a.test"}, leafOpts{notBefore: time.Now().Add(24 * time.Hour), notAfter: time.Now().Add(48 * time.Hour)})
	noName, _ := ca.issue(t, dir, "noname", nil, leafOpts{})
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("this is no certificate\n"))
	truncated := filepath.Join(dir, "truncated.pem")
	pemData, _ := os.ReadFile(good.Cert)
	writeFile(t, truncated, pemData[:len(pemData)/3])
	badDER := filepath.Join(dir, "baddér.pem")
	writeFile(t, badDER, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}))
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		pair Pair
		want []string // in the error
	}{
		{"cert file missing", Pair{missing, good.Key}, []string{missing, "no such file"}},
		{"key file missing", Pair{good.Cert, missing}, []string{missing, "no such file"}},
		{"cert is not PEM", Pair{garbage, good.Key}, []string{garbage, "no PEM certificate"}},
		{"cert cut short", Pair{truncated, good.Key}, []string{truncated}},
		{"cert is not DER", Pair{badDER, good.Key}, []string{badDER, "certificate 1"}},
		{"key where the cert goes", Pair{good.Key, good.Key}, []string{good.Key, "private key"}},
		{"key is not PEM", Pair{good.Cert, garbage}, []string{garbage, good.Cert}},
		{"key of another certificate", Pair{good.Cert, other.Key}, []string{other.Key, good.Cert, "does not match"}},
		{"expired", expired, []string{expired.Cert, "expired on"}},
		{"not yet valid", future, []string{future.Cert, "not valid before"}},
		{"no names", noName, []string{noName.Cert, "names no host"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The bad pair second: the error must not depend on being first.
			_, err := New(Config{Pairs: []Pair{good, tc.pair}})
			if err == nil {
				t.Fatalf("%+v loaded", tc.pair)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Errorf("no source at all: %v", err)
	}
}

func TestReloadKeepsTheOldSetOnErrorAndSwitchesOnSuccess(t *testing.T) {
	ca, dir := newTestCA(t), t.TempDir()
	a, snA := ca.issue(t, dir, "a", []string{"a.test"}, leafOpts{})
	s, err := New(Config{Pairs: []Pair{a}})
	if err != nil {
		t.Fatal(err)
	}
	addr := startTLS(t, s.TLSConfig())
	client := &tls.Config{ServerName: "a.test", RootCAs: ca.pool}
	before, got := dial(t, addr, client)
	if got.Cmp(snA) != 0 {
		t.Fatalf("got %v, want %v", got, snA)
	}

	// A broken file: the error names it, the old certificate is still served.
	writeFile(t, a.Cert, []byte("-----BEGIN CERTIFICATE-----\nbroken\n"))
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), a.Cert) {
		t.Fatalf("reload of a broken file: %v", err)
	}
	if _, got := dial(t, addr, client); got.Cmp(snA) != 0 {
		t.Fatalf("after a failed reload: %v, want the old %v", got, snA)
	}
	// A new certificate whose old key is still in place does not match: also kept.
	_, _ = ca.issue(t, dir, "renewed", []string{"a.test"}, leafOpts{})
	renewedCert, _ := os.ReadFile(filepath.Join(dir, "renewed.pem"))
	writeFile(t, a.Cert, renewedCert)
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), a.Key) {
		t.Fatalf("reload of a certificate without its key: %v", err)
	}
	if _, got := dial(t, addr, client); got.Cmp(snA) != 0 {
		t.Fatalf("after a failed reload: %v, want the old %v", got, snA)
	}
	echo(t, before, "still here")

	// The renewed pair in place: new handshakes get it, the open connection goes on.
	_, snB := ca.issue(t, dir, "a", []string{"a.test"}, leafOpts{})
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, got := dial(t, addr, client); got.Cmp(snB) != 0 {
		t.Fatalf("after the reload: %v, want the new %v", got, snB)
	}
	echo(t, before, "and still here")
	if got := before.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(snA) != 0 {
		t.Errorf("the open connection's certificate changed to %v", got)
	}
}

func TestACMESettingsErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "roots.txt")
	writeFile(t, notPEM, []byte("no roots here"))
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no folder", Config{ACMEDomains: []string{"a.test"}}, "folder"},
		{"wildcard", Config{ACMEDomains: []string{"*.a.test"}, ACMEDir: dir}, "wildcards"},
		{"address", Config{ACMEDomains: []string{"192.0.2.1"}, ACMEDir: dir}, "an address"},
		{"one label", Config{ACMEDomains: []string{"localhost"}, ACMEDir: dir}, "fully qualified"},
		{"bad character", Config{ACMEDomains: []string{"a_b/c.test"}, ACMEDir: dir}, `"a_b/c.test"`},
		{"CA over http", Config{ACMEDomains: []string{"a.test"}, ACMEDir: dir, ACMECA: "http://ca.test/dir"}, "https://"},
		{"bad email", Config{ACMEDomains: []string{"a.test"}, ACMEDir: dir, ACMEEmail: "nobody"}, "email"},
		{"roots missing", Config{ACMEDomains: []string{"a.test"}, ACMEDir: dir, ACMECARoots: filepath.Join(dir, "none.pem")}, "none.pem"},
		{"roots not PEM", Config{ACMEDomains: []string{"a.test"}, ACMEDir: dir, ACMECARoots: notPEM}, notPEM},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

func TestACMEChallengeReadsAutocertsTokens(t *testing.T) {
	dir := t.TempDir()
	s, err := New(Config{ACMEDomains: []string{"Offload.Test."}, ACMEDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	// autocert keeps an HTTP-01 key authorization under TOKEN+http-01 while the CA may
	// ask for it (and in memory; the file is what another process would see).
	writeFile(t, filepath.Join(dir, "tok_EN-1+http-01"), []byte("tok_EN-1.thumbprint"))
	ctx := context.Background()
	if got, ok := s.ACMEChallenge(ctx, "tok_EN-1"); !ok || string(got) != "tok_EN-1.thumbprint" {
		t.Errorf("known token: %q, %v", got, ok)
	}
	for _, tok := range []string{"unknown", "", "../tok_EN-1", "tok_EN-1/x", "tok%2F"} {
		if got, ok := s.ACMEChallenge(ctx, tok); ok {
			t.Errorf("token %q answered %q", tok, got)
		}
	}
	ca, fdir := newTestCA(t), t.TempDir()
	a, _ := ca.issue(t, fdir, "a", []string{"a.test"}, leafOpts{})
	filesOnly, err := New(Config{Pairs: []Pair{a}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := filesOnly.ACMEChallenge(ctx, "tok_EN-1"); ok || filesOnly.ACME() {
		t.Error("a store without ACME answered a challenge")
	}
}
