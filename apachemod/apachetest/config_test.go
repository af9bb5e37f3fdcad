package apachetest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modoffload/offload/redirect"
)

// TestConfigTestNamesMistakes: what used to pass configtest and then never match is
// refused with a message naming it; what only needs saying is a warning (items 10, 12, 13).
func TestConfigTestNamesMistakes(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	refused := []struct{ conf, want string }{
		{`OffloadExcludeUserAgent Mozilla/5.0 (compatible; Googlebot/2.1)`, "looks like a piece of one User-Agent split at its spaces"},
		{`OffloadExcludeUserAgent *Googlebot* Wget`, "'Wget' looks like a piece of one User-Agent"},
		{"OffloadExcludeAddress 10.0.0.300", "'10.0.0.300' is not an IP address"},
		{"OffloadExcludeAddress 10.0.0.0-10.0.0.255", "ranges are not supported"},
		{"OffloadExcludeAddress 10.0.*.256", "'256' is not a number from 0 to 255"},
		{"OffloadExcludeAddress 10.0.0.1/33", "is not an address/prefix"},
		{"OffloadExcludeAddress example.org", "is not an IP address"},
		{"OffloadHost 127.0.0.2:8081\nOffloadHost 127.0.0.2:8081", "listed twice in the same scope"},
		{"OffloadHost 127.0.0.2\nOffloadHost http://127.0.0.2:80 2", "listed twice in the same scope"},
	}
	for _, tc := range refused {
		out, ok := a.configTest(t, so, tc.conf)
		if ok || !strings.Contains(out, tc.want) {
			t.Errorf("%q: configtest ok=%v, output %q lacks %q", tc.conf, ok, out, tc.want)
		}
	}
	accepted := []struct{ conf, warning string }{
		{`OffloadExcludeUserAgent "Mozilla/5.0 (compatible; Googlebot/2.1)"`, ""},
		{`OffloadExcludeUserAgent *Googlebot* *bingbot* "*Yandex Bot*"`, ""},
		{`OffloadExcludeUserAgent Wget`, ""},
		{"OffloadExcludeAddress 10.0.0.1 10.1.* 192.168.0.0/16 ::1 2001:db8::/32 10.0.0.1?", ""},
		{"OffloadHost 127.0.0.2:8081\nOffloadHost 127.0.0.2:8082\nOffloadHost https://127.0.0.2:8081", ""},
		{"OffloadEngine On", "OffloadEngine On in the main server config without any OffloadHost"},
		{"<Directory /srv>\nOffloadEngine On\n</Directory>", "OffloadEngine On in <Directory /srv/> of the main server config without any OffloadHost"},
		{"OffloadEngine On\nOffloadHost no-such-host.invalid:8081", "OffloadHost no-such-host.invalid:8081: cannot resolve 'no-such-host.invalid' now; Apache starts anyway"},
	}
	for _, tc := range accepted {
		out, ok := a.configTest(t, so, tc.conf)
		if !ok || !strings.Contains(out, tc.warning) {
			t.Errorf("%q: configtest ok=%v, output %q, want it accepted with %q", tc.conf, ok, out, tc.warning)
		}
		if tc.warning == "" && strings.Contains(out, "offload:") {
			t.Errorf("%q: unexpected warning %q", tc.conf, out)
		}
	}
	if out, _ := a.configTest(t, so, "<Directory /srv>\nOffloadEngine On\n</Directory>\nOffloadHost 127.0.0.2"); strings.Contains(out, "without any OffloadHost") {
		t.Errorf("a directory inheriting the server's hosts was warned about: %q", out)
	}
}

// TestUnresolvableHostDoesNotStopApache: a DNS outage at boot leaves the base site up and
// offloading (item 13); OffloadEngine On with no host says so in the debug log (item 10).
func TestUnresolvableHostDoesNotStopApache(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	a.write(t, "big.iso", bytes.Repeat([]byte("b"), 10000))
	a.write(t, "nohost/big.iso", bytes.Repeat([]byte("b"), 10000))
	a.start(t, so, fmt.Sprintf(`OffloadEngine On
OffloadHost no-such-host.invalid:8081
OffloadDebug On
<Directory "%s/nohost">
  OffloadHost 127.0.0.9
</Directory>
`, a.docroot))
	if resp := get(t, "GET", a.url+"/big.iso", ""); resp.StatusCode != 307 || resp.Header.Get("Location") != "http://no-such-host.invalid:8081/big.iso" {
		t.Errorf("with an unresolvable host: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	log, _ := os.ReadFile(filepath.Join(a.dir, "error.log"))
	if !strings.Contains(string(log), "cannot resolve 'no-such-host.invalid' now") {
		t.Errorf("no warning about the unresolvable host in the error log:\n%s", log)
	}

	b := newApache(t)
	b.write(t, "big.iso", bytes.Repeat([]byte("b"), 10000))
	b.start(t, so, "OffloadEngine On\nOffloadDebug On\n")
	if resp := get(t, "GET", b.url+"/big.iso", ""); resp.StatusCode != 200 {
		t.Errorf("no host: %d", resp.StatusCode)
	}
	log, _ = os.ReadFile(filepath.Join(b.dir, "error.log"))
	if !strings.Contains(string(log), "not offloading /big.iso: OffloadEngine On but no OffloadHost here") {
		t.Errorf("OffloadDebug said nothing about the missing OffloadHost:\n%s", log)
	}
}

// TestHostDownFileForms: the host-down file takes what an admin copies from OffloadHost,
// and says once what it cannot read or match (item 11).
func TestHostDownFileForms(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	a.write(t, "big.iso", bytes.Repeat([]byte("b"), 10000))
	down := filepath.Join(a.dir, "down")
	specs := []string{"127.0.0.2:8081", "https://127.0.0.3:8443 2"}
	// One child process, so "logged once" means once in the log.
	a.start(t, so, fmt.Sprintf(`StartServers 1
ServerLimit 1
ThreadsPerChild 8
MaxRequestWorkers 8
OffloadEngine On
OffloadHost %s
OffloadHost %s
OffloadHostDownFile %s
`, specs[0], specs[1], down))
	hs := hosts(specs...)
	p := "/big.iso"
	first := redirect.PickHash(hs, nil, p)
	other := hs[1-first].URL(p)
	mtime := time.Now()
	write := func(text string, mode os.FileMode) {
		t.Helper()
		os.Remove(down)
		if err := os.WriteFile(down, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		mtime = mtime.Add(2 * time.Second)
		os.Chtimes(down, mtime, mtime)
	}
	forms := map[int][]string{
		0: {"127.0.0.2:8081", "http://127.0.0.2:8081", "http://127.0.0.2:8081/", "127.0.0.2:8081 1", "127.0.0.2", "  127.0.0.2:8081\t# for maintenance"},
		1: {"127.0.0.3:8443", "https://127.0.0.3:8443", "https://127.0.0.3:8443 2", "127.0.0.3", "https://127.0.0.3:8443/"},
	}
	for _, form := range forms[first] {
		write("# down\n"+form+"\n", 0o644)
		if resp := get(t, "GET", a.url+p, ""); resp.Header.Get("Location") != other {
			t.Errorf("down file line %q: Location %q, want %q", form, resp.Header.Get("Location"), other)
		}
	}
	// Lines that name no host, and names that only look alike, take nothing out.
	for _, form := range []string{"127.0.0.2:8082", "https://127.0.0.2:8081", "127.0.0.22", "offload1"} {
		if first != 0 {
			break
		}
		write(form+"\n", 0o644)
		if resp := get(t, "GET", a.url+p, ""); resp.Header.Get("Location") != hs[first].URL(p) {
			t.Errorf("down file line %q took the host out: Location %q", form, resp.Header.Get("Location"))
		}
	}
	write("no-such-offload-host:1\n", 0o644)
	for range 3 {
		get(t, "GET", a.url+p, "")
	}
	if os.Geteuid() == 0 {
		write(hs[first].Addr+"\n", 0o600) // root's, and Apache's children are www-data
		for range 3 {
			if resp := get(t, "GET", a.url+p, ""); resp.StatusCode != 307 {
				t.Errorf("unreadable down file: %d", resp.StatusCode)
			}
		}
	}
	time.Sleep(200 * time.Millisecond)
	log, _ := os.ReadFile(filepath.Join(a.dir, "error.log"))
	if n := strings.Count(string(log), "'no-such-offload-host:1' names no OffloadHost"); n != 1 {
		t.Errorf("an unmatched line was logged %d times, want once:\n%s", n, log)
	}
	if os.Geteuid() == 0 {
		if n := strings.Count(string(log), "cannot read it (Apache's user must be able to)"); n != 1 {
			t.Errorf("an unreadable down file was logged %d times, want once:\n%s", n, log)
		}
	} else {
		t.Log("not root: the unreadable-file case needs Apache's children to run as another user")
	}
}
