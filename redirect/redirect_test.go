package redirect

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newTestRedirector(t *testing.T, mut func(*Config)) *Redirector {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "big.iso"), make([]byte, 10000), 0o644)
	os.WriteFile(filepath.Join(dir, "small.txt"), make([]byte, 100), 0o644)
	os.WriteFile(filepath.Join(dir, "movie.mp4"), make([]byte, 10000), 0o644)
	os.WriteFile(filepath.Join(dir, "a b.iso"), make([]byte, 10000), 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	cfg := Config{
		Hosts:   []string{"127.0.0.2:8081", "https://127.0.0.3:8443 2"},
		MinSize: DefaultMinSize,
		Files:   os.DirFS(dir).(fs.StatFS),
	}
	if mut != nil {
		mut(&cfg)
	}
	rd, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rd
}

func TestChecklist(t *testing.T) {
	rd := newTestRedirector(t, func(c *Config) {
		c.ExcludeMimeTypes = []string{"video/*"}
		c.ExcludeUserAgents = []string{"*Googlebot*"}
		c.ExcludeAddresses = []string{"10.9.*", "192.168.0.0/16"}
	})
	tests := []struct {
		name   string
		method string
		target string
		remote string
		hdr    []string
		want   bool
	}{
		{"big file", "GET", "/big.iso", "198.51.100.7:5000", nil, true},
		{"escaped name", "GET", "/a%20b.iso", "198.51.100.7:5000", nil, true},
		{"HEAD", "HEAD", "/big.iso", "198.51.100.7:5000", nil, false},
		{"POST", "POST", "/big.iso", "198.51.100.7:5000", nil, false},
		{"query", "GET", "/big.iso?x=1", "198.51.100.7:5000", nil, false},
		{"empty query", "GET", "/big.iso?", "198.51.100.7:5000", nil, false},
		{"small", "GET", "/small.txt", "198.51.100.7:5000", nil, false},
		{"missing", "GET", "/nope.iso", "198.51.100.7:5000", nil, false},
		{"directory", "GET", "/sub/", "198.51.100.7:5000", nil, false},
		{"bypass header", "GET", "/big.iso", "198.51.100.7:5000", []string{"X-Mod-Offload-Bypass", "true"}, false},
		{"authorization", "GET", "/big.iso", "198.51.100.7:5000", []string{"Authorization", "Basic eDp5"}, false},
		{"from an offload host", "GET", "/big.iso", "127.0.0.3:40000", nil, false},
		{"excluded type", "GET", "/movie.mp4", "198.51.100.7:5000", nil, false},
		{"excluded agent", "GET", "/big.iso", "198.51.100.7:5000", []string{"User-Agent", "Mozilla/5.0 (compatible; googlebot/2.1)"}, false},
		{"excluded address wildcard", "GET", "/big.iso", "10.9.1.1:5000", nil, false},
		{"excluded address CIDR", "GET", "/big.iso", "192.168.4.4:5000", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			r.RemoteAddr = tc.remote
			for i := 0; i+1 < len(tc.hdr); i += 2 {
				r.Header.Set(tc.hdr[i], tc.hdr[i+1])
			}
			target, ok := rd.Target(r)
			if ok != tc.want {
				t.Fatalf("offloaded=%v (%q), want %v", ok, target, tc.want)
			}
		})
	}
}

func TestRedirectOverRealSocket(t *testing.T) {
	rd := newTestRedirector(t, nil)
	served := false
	srv := httptest.NewServer(rd.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served = true })))
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(srv.URL + "/a%20b.iso")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := rd.Hosts()[rd.Pick("/a%20b.iso")].URL("/a%20b.iso")
	if resp.StatusCode != 307 || resp.Header.Get("Location") != want {
		t.Fatalf("got %d %q, want 307 %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
	resp, _ = client.Get(srv.URL + "/small.txt")
	resp.Body.Close()
	if resp.StatusCode != 200 || !served {
		t.Fatalf("small file not passed through: %d", resp.StatusCode)
	}
}

func TestHostDownFile(t *testing.T) {
	down := filepath.Join(t.TempDir(), "down")
	rd := newTestRedirector(t, func(c *Config) { c.HostDownFile = down })
	// Find a path the second host owns.
	var p string
	for _, cand := range vectorPaths {
		if rd.Pick(cand) == 1 {
			p = cand
			break
		}
	}
	if p == "" {
		t.Fatal("no vector path on host 1")
	}
	os.WriteFile(down, []byte("# maintenance\n127.0.0.3:8443\n"), 0o644)
	if got := rd.Pick(p); got != 0 {
		t.Fatalf("host marked down still picked (%d)", got)
	}
	os.WriteFile(down, []byte("127.0.0.3:8443\n127.0.0.2:8081\n"), 0o644)
	os.Chtimes(down, time.Now().Add(time.Second), time.Now().Add(time.Second))
	if got := rd.Pick(p); got != -1 {
		t.Fatalf("all down: picked %d", got)
	}
	os.Remove(down)
	if got := rd.Pick(p); got != 1 {
		t.Fatalf("file removed, host back: picked %d", got)
	}
}

func TestPickTime(t *testing.T) {
	now := time.Unix(1000, 0)
	rd := newTestRedirector(t, func(c *Config) { c.Pick = "time"; c.Now = func() time.Time { return now } })
	a := rd.Pick("/x")
	now = now.Add(time.Second)
	b := rd.Pick("/x")
	if a == b || a < 0 || b < 0 {
		t.Fatalf("time mode did not rotate: %d then %d", a, b)
	}
}

func TestConfigErrors(t *testing.T) {
	files := os.DirFS(t.TempDir()).(fs.StatFS)
	for _, cfg := range []Config{
		{Files: files},
		{Hosts: []string{"ftp://x"}, Files: files},
		{Hosts: []string{"x 0"}, Files: files},
		{Hosts: []string{"x"}, Files: files, Pick: "random"},
		{Hosts: []string{"x"}, Files: files, ExcludeAddresses: []string{"10.0.0.0/99"}},
		{Hosts: []string{"x"}, Files: files, ExcludeAddresses: []string{"10.0.0.300"}},
		{Hosts: []string{"x"}, Files: files, ExcludeAddresses: []string{"10.0.0.0-10.0.0.255"}},
		{Hosts: []string{"x"}, Files: files, ExcludeAddresses: []string{"10.0.*.256"}},
		{Hosts: []string{"x"}, Files: files, ExcludeAddresses: []string{"example.org"}},
		{Hosts: []string{"x:8081", "x:8081"}, Files: files},
		{Hosts: []string{"x", "http://x:80 2"}, Files: files},
	} {
		cfg.Resolve = func(string) ([]string, error) { return []string{"192.0.2.1"}, nil }
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
