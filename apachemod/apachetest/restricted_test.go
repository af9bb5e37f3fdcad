package apachetest

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// restrictedApache is a base with two address-restricted folders and one offload host on
// 127.0.0.1 (so requests of an offload server on this machine come from its address):
// /lan admits 127.0.0.10 and the offload host's own address, /only10 admits 127.0.0.10.
// extra is more configuration, e.g. mod_remoteip's.
func restrictedApache(t *testing.T, offloadAddr string, extra ...string) (*apache, []byte) {
	t.Helper()
	so := buildModule(t)
	a := newApache(t)
	a.mods = []string{"authz_host", "remoteip"}
	data := bytes.Repeat([]byte("r"), 30000)
	for _, p := range []string{"lan/f.bin", "only10/f.bin", "pub/f.bin"} {
		a.write(t, p, data)
	}
	a.start(t, so, fmt.Sprintf(`OffloadEngine On
OffloadHost %s
<Directory "%[2]s/lan">
  Require ip 127.0.0.10 127.0.0.1
</Directory>
<Directory "%[2]s/only10">
  Require ip 127.0.0.10
</Directory>
%[3]s
`, offloadAddr, a.docroot, strings.Join(extra, "\n")))
	return a, data
}

// TestForwardedForFromOffloadHosts: the base applies its access rules to the client an
// offload host asks for (X-Forwarded-For, trusted from offload hosts only), item 9's
// half of the contract that is the base's.
func TestForwardedForFromOffloadHosts(t *testing.T) {
	t.Run("module", func(t *testing.T) { testForwardedFor(t) })
	// An admin who also made mod_remoteip trust the offload host: the same answers.
	t.Run("with mod_remoteip", func(t *testing.T) {
		testForwardedFor(t, "RemoteIPHeader X-Forwarded-For", "RemoteIPInternalProxy 127.0.0.1")
	})
}

func testForwardedFor(t *testing.T, extra ...string) {
	a, _ := restrictedApache(t, "127.0.0.1:8081", extra...)
	bypass := []string{"X-Mod-Offload-Bypass", "true"}
	tests := []struct {
		name, path, from, xff string
		status                int
	}{
		{"offload host for a refused client", "/lan/f.bin", "127.0.0.1", "127.0.0.11", 403},
		{"offload host for an admitted client", "/lan/f.bin", "127.0.0.1", "127.0.0.10", 200},
		{"offload host for an admitted client, not admitting the host", "/only10/f.bin", "127.0.0.1", "127.0.0.10", 200},
		{"the last address counts", "/lan/f.bin", "127.0.0.1", "127.0.0.10, 127.0.0.11", 403},
		{"offload host naming no client", "/lan/f.bin", "127.0.0.1", "", 200},
		{"offload host naming nonsense", "/lan/f.bin", "127.0.0.1", "unknown", 400},
		{"a client claiming to be forwarded", "/lan/f.bin", "127.0.0.11", "127.0.0.10", 403},
		{"a public file for anyone", "/pub/f.bin", "127.0.0.1", "192.0.2.7", 200},
	}
	for _, tc := range tests {
		hdr := bypass
		if tc.xff != "" {
			hdr = append([]string{"X-Forwarded-For", tc.xff}, bypass...)
		}
		for _, method := range []string{"HEAD", "GET"} {
			if resp := get(t, method, a.url+tc.path, tc.from, hdr...); resp.StatusCode != tc.status {
				t.Errorf("%s: %s %s from %s, X-Forwarded-For %q: %d, want %d", tc.name, method, tc.path, tc.from, tc.xff, resp.StatusCode, tc.status)
			}
		}
	}
}

// TestRestrictedThroughOffload: with a real offload server, a file restricted by address
// is served through it to the clients the base admits and to no one else (item 9).
func TestRestrictedThroughOffload(t *testing.T) {
	for _, revalidate := range []string{"0s", "1h"} {
		t.Run("revalidate "+revalidate, func(t *testing.T) {
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			a, data := restrictedApache(t, addr)
			o := startOffload(t, addr, a.url, "--revalidate", revalidate, "--max-dupes", "0")
			// Admitted on the base, not matching the offload host's address: the 307 must
			// not lead to a refusal.
			for range 2 {
				status, body, at := followFrom(t, a.url+"/only10/f.bin", "127.0.0.10", "")
				if status != 200 || !bytes.Equal(body, data) || !strings.Contains(at, o.addr) {
					t.Errorf("admitted client via the offload host: %d, %d bytes, ended at %s", status, len(body), at)
				}
			}
			// Now cached; a client the base refuses must be refused by the offload host as
			// well, though the rule admits the offload host's own address.
			if status, _, at := followFrom(t, a.url+"/lan/f.bin", "127.0.0.10", ""); status != 200 || !strings.Contains(at, o.addr) {
				t.Errorf("admitted client for /lan: %d at %s", status, at)
			}
			// Nor does a refused client get in by claiming an admitted address.
			resp, body := getBody(t, "http://"+o.addr+"/lan/f.bin", "127.0.0.11", "X-Forwarded-For", "127.0.0.10")
			if resp.StatusCode != 403 || body == string(data) {
				t.Errorf("refused client claiming to be 127.0.0.10: %d", resp.StatusCode)
			}
			for _, p := range []string{"/lan/f.bin", "/only10/f.bin"} {
				status, body, _ := followFrom(t, "http://"+o.addr+p, "127.0.0.11", "")
				if status != 403 || bytes.Equal(body, data) {
					t.Errorf("refused client straight to the offload host for %s: %d, %d bytes", p, status, len(body))
				}
				if status, _, _ := followFrom(t, a.url+p, "127.0.0.11", ""); status != 403 {
					t.Errorf("refused client on the base for %s: %d", p, status)
				}
			}
		})
	}
}
