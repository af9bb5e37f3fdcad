package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/modoffload/offload/internal/pebbletest"
)

// TestDaemonACMEWithPebble runs `offload serve --acme-domain offload.test` against
// pebble, Let's Encrypt's ACME test CA, once where only TLS-ALPN-01 can succeed (on the
// daemon's HTTPS listener) and once where only HTTP-01 can (on its plain listener), then
// downloads a file over HTTPS and checks the chain against pebble's root.
func TestDaemonACMEWithPebble(t *testing.T) {
	b := startBase(t)
	body := make([]byte, 3<<20)
	rand.Read(body)
	if err := os.WriteFile(filepath.Join(b.dir, "big.bin"), body, 0o644); err != nil {
		t.Fatal(err)
	}
	port := func(addr string) int {
		_, p, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(p)
		return n
	}
	for _, tc := range []struct {
		name string
		alpn bool // the CA validates on the HTTPS listener; else on the plain one
	}{{"TLS-ALPN-01", true}, {"HTTP-01", false}} {
		t.Run(tc.name, func(t *testing.T) {
			httpAddr, tlsAddr := freePort(t, "127.0.0.1"), freePort(t, "127.0.0.1")
			closed := freePort(t, "127.0.0.1") // nothing listens there: that challenge fails at once
			var ca *pebbletest.CA
			if tc.alpn {
				ca = pebbletest.Start(t, port(closed), port(tlsAddr))
			} else {
				ca = pebbletest.Start(t, port(httpAddr), port(closed))
			}
			cache := filepath.Join(t.TempDir(), "cache")
			d := startDaemon(t, "--base", b.url, "--cache", cache, "--max-dupes", "0",
				"--listen", httpAddr, "--tls-listen", tlsAddr,
				"--acme-domain", "offload.test", "--acme-email", "hostmaster@offload.test",
				"--acme-ca", ca.DirURL, "--acme-ca-root", ca.RootsFile)

			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: ca.Roots},
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, tlsAddr) // offload.test:443 is the daemon
				},
			}}
			defer client.CloseIdleConnections()
			// The first handshake waits while the certificate is obtained.
			resp, err := client.Get("https://offload.test/big.bin")
			if err != nil {
				t.Fatalf("HTTPS download: %v\n%s", err, d.stderr)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || sha256.Sum256(got) != sha256.Sum256(body) {
				t.Fatalf("HTTPS download: %d, %d bytes, %v", resp.StatusCode, len(got), err)
			}
			leaf := resp.TLS.PeerCertificates[0]
			if !slices.Equal(leaf.DNSNames, []string{"offload.test"}) || len(resp.TLS.VerifiedChains) == 0 {
				t.Fatalf("certificate for %v, %d verified chains", leaf.DNSNames, len(resp.TLS.VerifiedChains))
			}
			if _, err := os.Stat(filepath.Join(cache, "acme", "offload.test")); err != nil {
				t.Errorf("the certificate is not kept in the ACME folder: %v", err)
			}
		})
	}
}
