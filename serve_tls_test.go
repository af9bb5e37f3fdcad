package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeSelfSigned writes a self-signed certificate for names, valid until notAfter,
// and its key, as dir/file.pem and dir/file.key.
func writeSelfSigned(t *testing.T, dir, file string, names []string, notAfter time.Time) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    notAfter.Add(-48 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certPath, keyPath = filepath.Join(dir, file+".pem"), filepath.Join(dir, file+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestServeTLSSettingsErrors(t *testing.T) {
	dir := t.TempDir()
	later := time.Now().Add(24 * time.Hour)
	cert, key := writeSelfSigned(t, dir, "good", []string{"dl.example.test"}, later)
	_, otherKey := writeSelfSigned(t, dir, "other", []string{"dl.example.test"}, later)
	expired, expiredKey := writeSelfSigned(t, dir, "expired", []string{"dl.example.test"}, time.Now().Add(-time.Hour))
	missing := filepath.Join(dir, "missing.pem")
	conf := filepath.Join(dir, "tls.conf")
	os.WriteFile(conf, []byte("base = http://x\ntls-listen = 127.0.0.1:0\ntls-cert = "+missing+"\ntls-key = "+key+"\n"), 0o644)
	base := []string{"serve", "--base", "http://x", "--cache", dir}
	tls := with(base, "--tls-listen", "127.0.0.1:0")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"tls-listen without certificates", tls, []string{"--tls-listen needs certificates"}},
		{"tls-listen not an address", with(base, "--tls-listen", "443", "--tls-cert", cert, "--tls-key", key), []string{`--tls-listen "443"`}},
		{"certificate without tls-listen", with(base, "--tls-cert", cert, "--tls-key", key), []string{"need --tls-listen"}},
		{"acme-domain without tls-listen", with(base, "--acme-domain", "dl.example.test"), []string{"need --tls-listen"}},
		{"more certificates than keys", with(tls, "--tls-cert", cert, "--tls-cert", cert, "--tls-key", key), []string{"in pairs: 2 certificates, 1 keys"}},
		{"a key without its certificate", with(tls, "--tls-key", key), []string{"in pairs"}},
		{"key of another certificate", with(tls, "--tls-cert", cert, "--tls-key", otherKey), []string{otherKey, "does not match"}},
		{"second pair bad", with(tls, "--tls-cert", cert, "--tls-key", key, "--tls-cert", expired, "--tls-key", expiredKey), []string{expired, "expired on"}},
		{"certificate missing", with(tls, "--tls-cert", missing, "--tls-key", key), []string{missing}},
		{"certificate missing, from a config file", []string{"serve", "--config", conf}, []string{missing}},
		{"acme settings without a domain", with(tls, "--tls-cert", cert, "--tls-key", key, "--acme-email", "a@example.test"), []string{"need --acme-domain"}},
		{"acme wildcard", with(tls, "--acme-domain", "*.example.test"), []string{"wildcards"}},
		{"acme CA roots missing", with(tls, "--acme-domain", "dl.example.test", "--acme-ca-root", missing), []string{missing}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(offloadBin, tc.args...).CombinedOutput()
			var ee *exec.ExitError
			if !errorsAs(err, &ee) || ee.ExitCode() != 2 {
				t.Errorf("exit %v, want 2\n%s", err, out)
			}
			for _, w := range append(tc.want, "offload serve: ") {
				if !strings.Contains(string(out), w) {
					t.Errorf("output %q lacks %q", out, w)
				}
			}
		})
	}
}

// with is a followed by more, in a new array (the cases must not share one).
func with(a []string, more ...string) []string { return append(slices.Clip(a), more...) }

func TestServeTLSSettingsFromConfigFile(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir, "a", []string{"a.example.test"}, time.Now().Add(time.Hour))
	cert2, key2 := writeSelfSigned(t, dir, "b", []string{"b.example.test"}, time.Now().Add(time.Hour))
	roots := filepath.Join(dir, "roots.pem")
	pemData, _ := os.ReadFile(cert)
	os.WriteFile(roots, pemData, 0o644)
	conf := filepath.Join(dir, "offload.conf")
	os.WriteFile(conf, []byte(strings.Join([]string{
		"base = http://base.example", "cache = " + filepath.Join(dir, "cache"),
		"tls-listen = 127.0.0.1:8443", "tls-listen = [::1]:8443",
		"tls-cert = " + cert, "tls-key = " + key, "tls-cert = " + cert2, "tls-key = " + key2,
		"acme-domain = dl.example.test", "acme-domain = dl2.example.test", "acme-email = hostmaster@example.test",
		"acme-ca = https://127.0.0.1:14000/dir", "acme-ca-root = " + roots, ""}, "\n")), 0o644)
	cfg, err := parseServeConfig([]string{"--config", conf}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.TLSListen, ",") != "127.0.0.1:8443,[::1]:8443" || strings.Join(cfg.TLSCert, ",") != cert+","+cert2 ||
		strings.Join(cfg.TLSKey, ",") != key+","+key2 || strings.Join(cfg.ACMEDomain, ",") != "dl.example.test,dl2.example.test" ||
		cfg.ACMEEmail != "hostmaster@example.test" || cfg.ACMECA != "https://127.0.0.1:14000/dir" || cfg.ACMECARoot != roots {
		t.Fatalf("config read as %+v", cfg)
	}
	if cfg.certs == nil || !cfg.certs.ACME() {
		t.Fatal("certificates not loaded")
	}
	if want := filepath.Join(dir, "cache", "acme"); cfg.ACMEDir != want {
		t.Errorf("ACME folder %q, want %q", cfg.ACMEDir, want)
	}
	// Flags win over the file, lists whole.
	cfg, err = parseServeConfig([]string{"--config", conf, "--tls-cert", cert2, "--tls-key", key2, "--acme-dir", filepath.Join(dir, "acme")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.TLSCert, ",") != cert2 || cfg.ACMEDir != filepath.Join(dir, "acme") {
		t.Fatalf("flags over the config file: %+v", cfg)
	}
}

func TestServeSIGHUPReloadsCertificates(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir, "a", []string{"a.example.test"}, time.Now().Add(time.Hour))
	b := startBase(t)
	tlsAddr := freePort(t, "127.0.0.1")
	d := startDaemon(t, "--base", b.url, "--cache", filepath.Join(dir, "cache"),
		"--tls-listen", tlsAddr, "--tls-cert", cert, "--tls-key", key)
	good, _ := os.ReadFile(cert)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(good)
	handshake := func() *tls.Conn {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tlsAddr,
			&tls.Config{ServerName: "a.example.test", RootCAs: roots})
		if err != nil {
			t.Fatalf("HTTPS handshake: %v\n%s", err, d.stderr)
		}
		return c
	}
	// get asks for /robots.txt, which the daemon answers itself, on a kept-alive connection.
	get := func(c *tls.Conn, br *bufio.Reader) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /robots.txt HTTP/1.1\r\nHost: a.example.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("on a connection opened before the reloads: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("robots.txt: %d", resp.StatusCode)
		}
	}
	waitFor(t, func() bool { c, err := net.Dial("tcp", tlsAddr); c.Close(); return err == nil })
	open := handshake()
	defer open.Close()
	openBR := bufio.NewReader(open)
	get(open, openBR)
	first := open.ConnectionState().PeerCertificates[0].SerialNumber

	os.WriteFile(cert, []byte("not a certificate\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool {
		return strings.Contains(d.stderr.String(), "SIGHUP: certs: "+cert+": no PEM certificate in it (still serving the certificates loaded before)")
	})
	if c := handshake(); c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(first) != 0 {
		t.Error("a failed reload changed the certificate")
	} else {
		c.Close()
	}

	// A renewed certificate with a new key, written as a renewal tool does.
	newCert, newKey := writeSelfSigned(t, dir, "renewed", []string{"a.example.test"}, time.Now().Add(2*time.Hour))
	os.Rename(newKey, key)
	os.Rename(newCert, cert)
	renewed, _ := os.ReadFile(cert)
	roots.AppendCertsFromPEM(renewed)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Contains(d.stderr.String(), "SIGHUP: reloaded 1 certificates") })
	c := handshake()
	defer c.Close()
	if c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(first) == 0 {
		t.Error("still the old certificate after the reload")
	}
	get(open, openBR) // the connection from before both reloads still works
}

func TestServeKeepsTheACMEFolderInTheCache(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	b := startBase(t)
	args := []string{"--base", b.url, "--cache", cache, "--tls-listen", freePort(t, "127.0.0.1"),
		"--acme-domain", "dl.example.test", "--acme-ca", "https://127.0.0.1:1/dir"} // the CA is asked at the first handshake only
	d := startDaemon(t, args...)
	acmeDir := filepath.Join(cache, "acme")
	st, err := os.Stat(acmeDir)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("ACME folder: %v, %v", st, err)
	}
	// What autocert keeps there is no cache entry: a restart, whose cache scan removes
	// files that are not entries, must leave it.
	kept := []string{"acme_account+key", "dl.example.test"}
	for _, name := range kept {
		if err := os.WriteFile(filepath.Join(acmeDir, name), []byte("-----BEGIN EC PRIVATE KEY-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.cmd.Process.Kill()
	d.cmd.Wait()
	startDaemon(t, args...)
	for _, name := range kept {
		if _, err := os.Stat(filepath.Join(acmeDir, name)); err != nil {
			t.Errorf("after a restart: %v", err)
		}
	}
}

func TestPrivilegeDropHandsOverTheACMEFolder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: drops to nobody (CI runs scripts/test as root)")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	// Not under t.TempDir(), whose parent is closed to other users.
	dir, err := os.MkdirTemp("", "offload-acme-privdrop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	b := startBase(t)
	acmeDir := filepath.Join(dir, "acme")
	startDaemon(t, "--base", b.url, "--cache", filepath.Join(dir, "cache"), "--user", "nobody",
		"--tls-listen", freePort(t, "127.0.0.1"), "--acme-domain", "dl.example.test", "--acme-dir", acmeDir)
	st, err := os.Stat(acmeDir)
	if err != nil {
		t.Fatal(err)
	}
	if uid := strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid)); uid != nobody.Uid {
		t.Errorf("ACME folder owned by uid %s, want nobody's %s", uid, nobody.Uid)
	}
}
