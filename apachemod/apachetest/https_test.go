package apachetest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestThroughApacheToHTTPSOffload: a base whose OffloadHost is an https:// address
// sends the client there, and the offload server's HTTPS listener serves the bytes:
// curl follows the 307 to https://, trusts the offload host's certificate, and gets
// the file byte for byte.
func TestThroughApacheToHTTPSOffload(t *testing.T) {
	need(t, "curl")
	so := buildModule(t)
	bin := filepath.Join(t.TempDir(), "offload")
	if out, err := exec.Command("go", "build", "-o", bin, "../..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	a := newApache(t)
	dir := t.TempDir()
	cert, key := ipCertificate(t, dir, net.IPv4(127, 0, 0, 2))
	plain := fmt.Sprintf("127.0.0.2:%d", freePort(t))
	secure := fmt.Sprintf("127.0.0.2:%d", freePort(t))
	cmd := exec.Command(bin, "serve", "--base", a.url, "--listen", plain, "--tls-listen", secure,
		"--tls-cert", cert, "--tls-key", key, "--cache", t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	data := make([]byte, 3<<20+7)
	rand.Read(data)
	a.write(t, "/pub/secure.bin", data)
	a.start(t, so, fmt.Sprintf("OffloadEngine On\nOffloadHost https://%s\n", secure))
	waitListening(t, secure)
	for _, round := range []string{"cold", "warm"} {
		out := filepath.Join(t.TempDir(), "out")
		eff, err := exec.Command("curl", "-sS", "-f", "-L", "--cacert", cert, "-o", out, "-w", "%{url_effective}",
			a.url+"/pub/secure.bin").Output()
		if err != nil {
			t.Fatalf("%s: curl -L: %v\n%s", round, err, stderr.String())
		}
		if string(eff) != "https://"+secure+"/pub/secure.bin" {
			t.Errorf("%s: ended at %s, want the HTTPS offload host", round, eff)
		}
		if got, _ := os.ReadFile(out); sha256.Sum256(got) != sha256.Sum256(data) {
			t.Fatalf("%s: bytes differ (%d of %d)", round, len(got), len(data))
		}
	}
}

// ipCertificate writes a self-signed certificate for ip and its key into dir.
func ipCertificate(t *testing.T, dir string, ip net.IP) (certPath, keyPath string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: ip.String()},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{ip},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(k)
	certPath, keyPath = filepath.Join(dir, "offload.pem"), filepath.Join(dir, "offload.key")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certPath, keyPath
}
