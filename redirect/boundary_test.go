package redirect

import (
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// Tests of the values at a bound and one past it, and of the second variant of cases
// the main tests cover.

func TestParseHostBounds(t *testing.T) {
	tests := []struct {
		spec   string
		ok     bool
		scheme string
		addr   string
		weight int
	}{
		{"h", true, "http", "h", 1},
		{"h 1", true, "http", "h", 1},
		{"h 100", true, "http", "h", 100},
		{"h 0", false, "", "", 0},
		{"h 101", false, "", "", 0},
		{"h -1", false, "", "", 0},
		{"h 1.5", false, "", "", 0},
		{"HTTPS://h:8443 2", true, "https", "h:8443", 2},
		{"http://h", true, "http", "h", 1},
		{"ftp://h", false, "", "", 0},
		{"https://", false, "", "", 0},
		{"h/x", false, "", "", 0},
		{"u@h", false, "", "", 0},
		{"h 1 2", false, "", "", 0},
		{"", false, "", "", 0},
	}
	for _, tc := range tests {
		h, err := ParseHost(tc.spec)
		if (err == nil) != tc.ok {
			t.Errorf("ParseHost(%q): %v, want ok %v", tc.spec, err, tc.ok)
			continue
		}
		if tc.ok && (h.Scheme != tc.scheme || h.Addr != tc.addr || h.Weight != tc.weight) {
			t.Errorf("ParseHost(%q) = %+v, want %s %s %d", tc.spec, h, tc.scheme, tc.addr, tc.weight)
		}
	}
}

// TestMinSizeTwins: the default bound exactly and one byte under it; a bound of 0 takes
// even an empty file, a bound of 1 does not.
func TestMinSizeTwins(t *testing.T) {
	dir := t.TempDir()
	for name, size := range map[string]int{"at.bin": DefaultMinSize, "under.bin": DefaultMinSize - 1, "empty.bin": 0, "one.bin": 1} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		minSize int64
		path    string
		want    bool
	}{
		{DefaultMinSize, "/at.bin", true},
		{DefaultMinSize, "/under.bin", false},
		{0, "/empty.bin", true},
		{1, "/empty.bin", false},
		{1, "/one.bin", true},
	}
	for _, tc := range tests {
		rd, err := New(Config{Hosts: []string{"127.0.0.2:8081"}, MinSize: tc.minSize, Files: os.DirFS(dir).(fs.StatFS),
			Resolve: func(string) ([]string, error) { return []string{"127.0.0.2"}, nil }})
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("GET", tc.path, nil)
		r.RemoteAddr = "198.51.100.7:5000"
		if _, ok := rd.Target(r); ok != tc.want {
			t.Errorf("MinSize %d, %s: offloaded %v, want %v", tc.minSize, tc.path, ok, tc.want)
		}
	}
}

// TestAddressTwins: exclusions and the offload hosts' own addresses hold for IPv4-mapped
// IPv6 peers too, and a CIDR holds up to its last address and not one past it.
func TestAddressTwins(t *testing.T) {
	rd := newTestRedirector(t, func(c *Config) {
		c.ExcludeAddresses = []string{"10.9.*", "192.168.0.0/16"}
		c.Resolve = func(h string) ([]string, error) { return []string{h}, nil }
	})
	tests := []struct {
		remote string
		want   bool
	}{
		{"198.51.100.7:5000", true},
		{"[::ffff:198.51.100.7]:5000", true},
		{"10.9.1.1:5000", false},
		{"[::ffff:10.9.1.1]:5000", false},
		{"10.90.1.1:5000", true}, // "10.9.*" is not "10.9*"
		{"192.168.255.255:5000", false},
		{"192.168.0.0:5000", false},
		{"192.169.0.0:5000", true},
		{"192.167.255.255:5000", true},
		{"[::ffff:192.168.1.1]:5000", false},
		{"127.0.0.2:40000", false}, // an offload host
		{"[::ffff:127.0.0.2]:40000", false},
		{"127.0.0.4:40000", true},
	}
	for _, tc := range tests {
		r := httptest.NewRequest("GET", "/big.iso", nil)
		r.RemoteAddr = tc.remote
		if _, ok := rd.Target(r); ok != tc.want {
			t.Errorf("from %s: offloaded %v, want %v", tc.remote, ok, tc.want)
		}
	}
}

func TestRequestTwins(t *testing.T) {
	rd := newTestRedirector(t, nil)
	tests := []struct {
		name   string
		method string
		target string
		hdr    []string
		want   bool
	}{
		{"GET", "GET", "/big.iso", nil, true},
		{"HEAD", "HEAD", "/big.iso", nil, false},
		{"trailing slash on a file", "GET", "/big.iso/", nil, false},
		{"dot segments", "GET", "/sub/../big.iso", nil, true},
		{"bypass any value", "GET", "/big.iso", []string{"X-Mod-Offload-Bypass", "0"}, false},
		{"bearer authorization", "GET", "/big.iso", []string{"Authorization", "Bearer x"}, false},
		{"user agent not excluded", "GET", "/big.iso", []string{"User-Agent", "curl/8"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			r.RemoteAddr = "198.51.100.7:5000"
			for i := 0; i+1 < len(tc.hdr); i += 2 {
				r.Header.Set(tc.hdr[i], tc.hdr[i+1])
			}
			if _, ok := rd.Target(r); ok != tc.want {
				t.Errorf("offloaded %v, want %v", ok, tc.want)
			}
		})
	}
}

// TestPickTwins: ties go to the host listed first; with every host down there is none;
// time mode takes the hosts that are up in turn, skipping the ones down.
func TestPickTwins(t *testing.T) {
	a, b, c := Host{Scheme: "http", Addr: "a", Weight: 1}, Host{Scheme: "http", Addr: "b", Weight: 1}, Host{Scheme: "http", Addr: "c", Weight: 1}
	same := []Host{a, a, a}
	for _, p := range []string{"/x", "/y", "/z"} {
		if got := PickHash(same, nil, p); got != 0 {
			t.Errorf("tie on %s: picked %d, want the first", p, got)
		}
	}
	downB := func(h Host) bool { return h.Addr == "b" }
	allDown := func(Host) bool { return true }
	if got := PickHash([]Host{a, b}, allDown, "/x"); got != -1 {
		t.Errorf("all down: PickHash %d", got)
	}
	if got := PickTime([]Host{a, b}, allDown, 7); got != -1 {
		t.Errorf("all down: PickTime %d", got)
	}
	for _, p := range vectorPaths {
		if got := PickHash([]Host{a, b, c}, downB, p); got == 1 {
			t.Fatalf("%s: picked the host that is down", p)
		}
		if got := PickHash([]Host{b}, nil, p); got != 0 {
			t.Fatalf("one host: picked %d", got)
		}
	}
	hosts := []Host{a, b, c}
	for sec, want := range map[int64]int{0: 0, 1: 1, 2: 2, 3: 0, 4: 1} {
		if got := PickTime(hosts, nil, sec); got != want {
			t.Errorf("time %d: picked %d, want %d", sec, got, want)
		}
	}
	for sec, want := range map[int64]int{0: 0, 1: 2, 2: 0, 3: 2} {
		if got := PickTime(hosts, downB, sec); got != want {
			t.Errorf("time %d with b down: picked %d, want %d", sec, got, want)
		}
	}
}

func TestWildcardTwins(t *testing.T) {
	tests := []struct {
		p, s string
		want bool
	}{
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"a?c", "abbc", false},
		{"a*c", "ac", true}, {"a*c", "abbc", true}, {"a*c", "abcd", false},
		{"ABC", "abc", true}, {"abc", "ABD", false},
		{"*.iso", "x.ISO", true}, {"*.iso", "x.iso.txt", false},
		{"**", "", true}, {"?", "", false},
	}
	for _, tc := range tests {
		if got := wildcardMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("match(%q, %q) = %v, want %v", tc.p, tc.s, got, tc.want)
		}
	}
}
