package server

import (
	"context"
	"fmt"
	"io"
	"strings"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
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
