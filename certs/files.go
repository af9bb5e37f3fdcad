package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"time"
)

// fileSet is the certificates of every pair, in the order given; never changed once
// built, so handshakes read it without a lock.
type fileSet struct {
	certs []*tls.Certificate
}

// choose returns the first certificate the client supports (its names for the SNI, its
// key type and signature), as crypto/tls itself chooses among Config.Certificates; the
// first pair when none fits.
func (f *fileSet) choose(hello *tls.ClientHelloInfo) *tls.Certificate {
	for _, c := range f.certs {
		if hello.SupportsCertificate(c) == nil {
			return c
		}
	}
	return f.certs[0]
}

func loadFiles(pairs []Pair) (*fileSet, error) {
	set := &fileSet{certs: make([]*tls.Certificate, 0, len(pairs))}
	now := time.Now()
	for _, p := range pairs {
		c, err := loadPair(p, now)
		if err != nil {
			return nil, err
		}
		set.certs = append(set.certs, c)
	}
	return set, nil
}

// loadPair reads and checks one pair; its errors name the file at fault.
func loadPair(p Pair, now time.Time) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(p.Cert)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	keyPEM, err := os.ReadFile(p.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	// Parse the certificates first, so that a fault in them is blamed on their file
	// and not on the key (tls.X509KeyPair does not say which file it disliked).
	var leaf *x509.Certificate
	rest := certPEM
	for n := 0; ; n++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if n == 0 {
				return nil, fmt.Errorf("certs: %s: no PEM certificate in it", p.Cert)
			}
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, fmt.Errorf("certs: %s: text after the last PEM block is not PEM", p.Cert)
			}
			break
		}
		if b.Type != "CERTIFICATE" {
			if isKeyBlock(b.Type) {
				return nil, fmt.Errorf("certs: %s: holds a private key (%s) where a certificate belongs; the key goes in its own file", p.Cert, b.Type)
			}
			return nil, fmt.Errorf("certs: %s: PEM block %d is %q, want CERTIFICATE", p.Cert, n+1, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: %s: certificate %d: %w", p.Cert, n+1, err)
		}
		if n == 0 {
			leaf = c
		}
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("certs: %s: expired on %s", p.Cert, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("certs: %s: not valid before %s", p.Cert, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 {
		return nil, fmt.Errorf("certs: %s: names no host (no DNS or IP subject alternative name; clients ignore the common name)", p.Cert)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if bytes.Contains(keyPEM, []byte("ENCRYPTED")) {
			return nil, fmt.Errorf("certs: %s: the key is encrypted; give it without a passphrase", p.Key)
		}
		return nil, fmt.Errorf("certs: %s (the key of %s): %s", p.Key, p.Cert, strings.TrimPrefix(err.Error(), "tls: "))
	}
	kp.Leaf = leaf
	return &kp, nil
}

func isKeyBlock(typ string) bool {
	switch typ {
	case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
		return true
	}
	return false
}
