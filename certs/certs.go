// Package certs provides the HTTPS listeners' certificates: pairs of files chosen by
// SNI and reloaded on SIGHUP, and certificates obtained and renewed from an ACME CA.
//
// ACME is golang.org/x/crypto/acme/autocert rather than caddyserver/certmagic: it is part
// of the Go project's x/crypto, which the TLS code depends on anyway, it is small enough
// to read, and it brings no further dependency tree (certmagic brings its own ACME
// client, zap, a DNS library and more), while it does all this server needs: TLS-ALPN-01
// through GetCertificate, HTTP-01 through a handler, a folder cache, background renewal.
package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// Config says where certificates come from: files, an ACME CA, or both. At least one
// pair or one ACME domain is required.
type Config struct {
	// Pairs are certificate and key files. The first is the default: it is served when
	// no pair's names match the client's SNI, or the client sends none.
	Pairs []Pair
	// ACMEDomains turns ACME on: the names to obtain certificates for, and the only
	// names a certificate is asked for (autocert's host policy).
	ACMEDomains []string
	// ACMEEmail is the contact address registered with the CA; may be empty.
	ACMEEmail string
	// ACMECA is the CA's directory URL; empty: Let's Encrypt's production directory.
	ACMECA string
	// ACMEDir is the folder that keeps the ACME account key and the certificates;
	// required with ACMEDomains. It should survive restarts: a CA limits how often it
	// issues a certificate for the same names.
	ACMEDir string
	// ACMECARoots is a PEM file of extra roots to trust when talking to the CA (a
	// private CA, a test CA); the system's roots are trusted as well.
	ACMECARoots string
}

// Pair names a certificate file (PEM, the leaf first, then its intermediates) and the
// file of its private key.
type Pair struct {
	Cert, Key string
}

// Store serves certificates to TLS handshakes. Its methods are safe for concurrent use.
type Store struct {
	pairs []Pair
	files atomic.Pointer[fileSet] // nil when there are no pairs; replaced whole by Reload

	acme      *autocert.Manager // nil when ACME is off
	acmeNames map[string]bool   // ACMEDomains in the form ServerName is compared in
	http01    http.Handler      // autocert's HTTP-01 handler
	acmeHost  string            // a name the host policy admits, as the Host of HTTP-01 lookups
}

// New loads and checks the certificate files and prepares ACME. An error names the file
// or the setting at fault.
func New(cfg Config) (*Store, error) {
	if len(cfg.Pairs) == 0 && len(cfg.ACMEDomains) == 0 {
		return nil, errors.New("certs: no certificate: give a certificate and key file, or ACME domains")
	}
	s := &Store{pairs: cfg.Pairs}
	if len(cfg.Pairs) > 0 {
		set, err := loadFiles(cfg.Pairs)
		if err != nil {
			return nil, err
		}
		s.files.Store(set)
	}
	if len(cfg.ACMEDomains) > 0 {
		if err := s.setupACME(cfg); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// TLSConfig returns a new tls.Config for the HTTPS listeners: TLS 1.2 and 1.3 with Go's
// default cipher suites, ALPN http/1.1 (and acme-tls/1 for TLS-ALPN-01 when ACME is
// on), session tickets with Go's rotating keys, and certificates from GetCertificate,
// so that reloads and renewals take effect without a restart.
func (s *Store) TLSConfig() *tls.Config {
	protos := []string{"http/1.1"}
	if s.acme != nil {
		protos = append(protos, acme.ALPNProto)
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		MaxVersion:     tls.VersionTLS13,
		NextProtos:     protos,
		GetCertificate: s.GetCertificate,
	}
}

// GetCertificate chooses the certificate for a handshake: a name among the ACME domains
// (and every TLS-ALPN-01 challenge for one) goes to ACME; otherwise the first file
// certificate whose names and key the client supports, or else the first pair. With
// ACME alone, every handshake goes to ACME. It may block: a certificate not yet obtained
// is obtained from the CA during the handshake (minutes at worst), and a cached one is
// read from the ACME folder.
func (s *Store) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	set := s.files.Load()
	if s.acme != nil && (set == nil || s.acmeNames[canonicalName(hello.ServerName)]) {
		return s.acme.GetCertificate(hello)
	}
	if set == nil {
		return nil, errors.New("certs: no certificate") // New refuses such a Store
	}
	return set.choose(hello), nil
}

// Reload reads every certificate pair again and serves the new set from the next
// handshake on; connections already open keep going. On any error it keeps the set it
// had and returns the error, which names the file. Without pairs it does nothing.
func (s *Store) Reload() error {
	if len(s.pairs) == 0 {
		return nil
	}
	set, err := loadFiles(s.pairs)
	if err != nil {
		return err
	}
	s.files.Store(set)
	return nil
}

// ACMEChallenge answers an ACME HTTP-01 challenge: given the token of a request for
// /.well-known/acme-challenge/TOKEN, it returns the key authorization to send with a
// 200, or ok false (send a 404). It has the signature of server.Config.ACMEChallenge.
// It may block on the ACME folder; with ACME off it answers ok false.
func (s *Store) ACMEChallenge(ctx context.Context, token string) (keyAuth []byte, ok bool) {
	if s.http01 == nil || !validToken(token) {
		return nil, false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, challengePath+token, nil)
	if err != nil {
		return nil, false
	}
	// autocert checks the request's Host against its host policy; the token alone
	// identifies the challenge, so any admitted name will do.
	req.Host = s.acmeHost
	var w memResponse
	s.http01.ServeHTTP(&w, req)
	if w.status != http.StatusOK {
		return nil, false
	}
	return w.body, true
}

// ACME reports whether certificates come from an ACME CA.
func (s *Store) ACME() bool { return s.acme != nil }

// canonicalName is a server name as ACMEDomains are kept: lower case, no final dot.
func canonicalName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
