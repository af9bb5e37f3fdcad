package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
	"golang.org/x/net/idna"
)

// challengePath is where an ACME CA asks for an HTTP-01 key authorization (RFC 8555 §8.3).
const challengePath = "/.well-known/acme-challenge/"

// setupACME checks the ACME settings and prepares autocert's manager. Nothing is asked
// of the CA here: the account is registered and certificates are obtained at first use.
func (s *Store) setupACME(cfg Config) error {
	if cfg.ACMEDir == "" {
		return fmt.Errorf("certs: ACME needs a folder for its account key and certificates")
	}
	s.acmeNames = map[string]bool{}
	var names []string
	for _, d := range cfg.ACMEDomains {
		n, err := acmeName(d)
		if err != nil {
			return err
		}
		if !s.acmeNames[n] {
			s.acmeNames[n] = true
			names = append(names, n)
		}
	}
	ca := cfg.ACMECA
	if ca == "" {
		ca = acme.LetsEncryptURL
	}
	if u, err := url.Parse(ca); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("certs: ACME CA %q: want the https:// URL of its directory", ca)
	}
	if cfg.ACMEEmail != "" && (!strings.Contains(cfg.ACMEEmail, "@") || strings.ContainsAny(cfg.ACMEEmail, " \t<>:")) {
		return fmt.Errorf("certs: ACME email %q: want an address such as hostmaster@example.org", cfg.ACMEEmail)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.ACMECARoots != "" {
		pool, err := rootsWith(cfg.ACMECARoots)
		if err != nil {
			return err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	s.acme = &autocert.Manager{
		// Asking for ACME is accepting the CA's terms: there is no one to prompt.
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(cfg.ACMEDir),
		HostPolicy: autocert.HostWhitelist(names...),
		Email:      cfg.ACMEEmail,
		Client:     &acme.Client{DirectoryURL: ca, HTTPClient: &http.Client{Transport: tr}},
	}
	// Calling HTTPHandler is also what tells autocert it may use HTTP-01 (after
	// TLS-ALPN-01, which it tries first).
	s.http01 = s.acme.HTTPHandler(http.NotFoundHandler())
	s.acmeHost = names[0]
	return nil
}

// acmeName checks one ACME domain and returns it as handshakes' names are compared.
func acmeName(d string) (string, error) {
	if strings.Contains(d, "*") {
		return "", fmt.Errorf("certs: ACME domain %q: wildcards need DNS-01, which is not supported; name each host", d)
	}
	n, err := idna.Lookup.ToASCII(canonicalName(strings.TrimSpace(d)))
	switch {
	case err != nil:
		return "", fmt.Errorf("certs: ACME domain %q: %v", d, err)
	case net.ParseIP(n) != nil:
		return "", fmt.Errorf("certs: ACME domain %q: an address, not a name", d)
	case !strings.Contains(n, "."):
		return "", fmt.Errorf("certs: ACME domain %q: want a fully qualified name such as offload.example.org", d)
	}
	return n, nil
}

// rootsWith is the system's roots plus those of a PEM file.
func rootsWith(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("certs: ACME CA roots: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool() // no system roots here: only the file's
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("certs: ACME CA roots: %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// validToken admits an ACME token: base64url characters only (RFC 8555 §8.1), so that
// it cannot name another path.
func validToken(t string) bool {
	if t == "" || len(t) > 256 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// memResponse is the http.ResponseWriter that ACMEChallenge hands autocert's handler:
// it keeps the status and body in memory.
type memResponse struct {
	header http.Header
	status int
	body   []byte
}

func (w *memResponse) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *memResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *memResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, p...)
	return len(p), nil
}
