// Package pebbletest runs pebble, Let's Encrypt's ACME test CA, with pebble-challtestsrv
// as its DNS server, for the tests of ACME: every name resolves to 127.0.0.1 and
// challenges are validated on the ports the test gives.
//
// scripts/test installs both programs into the repository's .tools/bin. A test that
// needs them is skipped when they are missing, except under CI, where it fails.
package pebbletest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// CA is a running pebble.
type CA struct {
	// DirURL is the ACME directory URL.
	DirURL string
	// RootsFile is a PEM file of the root that signed pebble's own HTTPS certificate:
	// what a client of the ACME API must trust (certs.Config.ACMECARoots).
	RootsFile string
	// Roots holds pebble's issuing root, which the certificates it issues chain to.
	Roots *x509.CertPool
}

// Start runs pebble-challtestsrv and pebble until the test ends; pebble validates
// HTTP-01 on 127.0.0.1:httpPort and TLS-ALPN-01 on 127.0.0.1:tlsPort, at once (no
// random delay), and each order afresh (no reuse of an earlier authorization).
func Start(t testing.TB, httpPort, tlsPort int) *CA {
	t.Helper()
	pebble, challsrv := tool(t, "pebble"), tool(t, "pebble-challtestsrv")
	dir := t.TempDir()

	certFile, keyFile, rootsPEM, roots := serverCert(t, dir)
	rootsFile := filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(rootsFile, rootsPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freeDNSPort(t))
	run(t, nil, challsrv, "-dnsserver", dnsAddr, "-management", freeAddr(t),
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "") // no AAAA: pebble would try ::1 first

	acmeAddr, mgmtAddr := freeAddr(t), freeAddr(t)
	conf, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":           acmeAddr,
		"managementListenAddress": mgmtAddr,
		"certificate":             certFile,
		"privateKey":              keyFile,
		"httpPort":                httpPort,
		"tlsPort":                 tlsPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"retryAfter":              map[string]int{"authz": 1, "order": 1},
	}})
	confFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, []string{
		"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after up to 15 s
		"PEBBLE_WFE_NONCEREJECT=0", // reject no good nonce (it rejects 5 % by default)
		"PEBBLE_AUTHZREUSE=0",      // each order validates afresh
	}, pebble, "-config", confFile, "-dnsserver", dnsAddr)

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer client.CloseIdleConnections()
	ca := &CA{DirURL: "https://" + acmeAddr + "/dir", RootsFile: rootsFile}
	waitUntil(t, "pebble answers", func() bool {
		resp, err := client.Get(ca.DirURL)
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
	ca.Roots = x509.NewCertPool()
	if err != nil || resp.StatusCode != 200 || !ca.Roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("pebble's root: %d %q %v", resp.StatusCode, rootPEM, err)
	}
	return ca
}

// tool finds one of pebble's programs: in the repository's .tools/bin (where
// scripts/test installs them), on PATH, or in $HOME/go/bin.
func tool(t testing.TB, name string) string {
	t.Helper()
	var places []string
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				places = append(places, filepath.Join(d, ".tools", "bin", name))
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		places = append(places, p)
	}
	if home, err := os.UserHomeDir(); err == nil {
		places = append(places, filepath.Join(home, "go", "bin", name))
	}
	for _, p := range places {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
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

// serverCert makes pebble's own HTTPS certificate (localhost, 127.0.0.1) and the root
// that signed it.
func serverCert(t testing.TB, dir string) (certFile, keyFile string, rootPEM []byte, roots *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebbletest root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "pebble.pem"), filepath.Join(dir, "pebble.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(caCert)
	return certFile, keyFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), roots
}

// run starts a program that runs until the test ends; its output is logged if the
// test fails.
func run(t testing.TB, env []string, name string, args ...string) {
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

// freeAddr is a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// freeDNSPort is a port free for both UDP and TCP.
func freeDNSPort(t testing.TB) int {
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

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
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
