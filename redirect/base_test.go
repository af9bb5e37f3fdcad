package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBook collects what a Redirector logs.
type logBook struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBook) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logBook) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

func TestMinSizeBoundary(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "exact.bin"), make([]byte, 6000), 0o644)
	os.WriteFile(filepath.Join(dir, "under.bin"), make([]byte, 5999), 0o644)
	rd, err := New(Config{Hosts: []string{"127.0.0.2:8081"}, MinSize: 6000, Files: os.DirFS(dir).(fs.StatFS)})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{"/exact.bin": true, "/under.bin": false} {
		r, _ := http.NewRequest("GET", p, nil)
		r.RequestURI, r.RemoteAddr = p, "198.51.100.7:5000"
		if _, ok := rd.Target(r); ok != want {
			t.Errorf("%s: offloaded=%v, want %v", p, ok, want)
		}
	}
}

func TestMimeExclusionWithParameters(t *testing.T) {
	rd := newTestRedirector(t, func(c *Config) { c.ExcludeMimeTypes = []string{"text/plain"} })
	r, _ := http.NewRequest("GET", "/small.txt", nil)
	r.RequestURI = "/small.txt"
	rd.minSize = 0 // small.txt is "text/plain; charset=utf-8" to package mime
	if _, ok := rd.Target(r); ok {
		t.Errorf("text/plain did not exclude text/plain; charset=utf-8")
	}
}

func TestServerNames(t *testing.T) {
	rd := newTestRedirector(t, func(c *Config) { c.ServerNames = []string{"www.example.org", "example.org"} })
	for host, want := range map[string]bool{"www.example.org": true, "EXAMPLE.org:8080": true, "other.example.org": false, "": false} {
		r, _ := http.NewRequest("GET", "/big.iso", nil)
		r.RequestURI, r.Host, r.RemoteAddr = "/big.iso", host, "198.51.100.7:5000"
		if _, ok := rd.Target(r); ok != want {
			t.Errorf("Host %q: offloaded=%v, want %v", host, ok, want)
		}
	}
}

// TestUnresolvableHost: a name that does not resolve at start leaves the Redirector
// working, is logged, and is recognised once it resolves.
func TestUnresolvableHost(t *testing.T) {
	var book logBook
	var mu sync.Mutex
	dnsUp := false
	rd := newTestRedirector(t, func(c *Config) {
		c.Hosts = []string{"offload1.example.org:8081"}
		c.Logf = book.logf
		c.Resolve = func(string) ([]string, error) {
			mu.Lock()
			defer mu.Unlock()
			if !dnsUp {
				return nil, errors.New("DNS is down")
			}
			return []string{"192.0.2.9"}, nil
		}
	})
	if book.count("cannot resolve it now (DNS is down)") != 1 {
		t.Errorf("not logged: %q", book.lines)
	}
	r, _ := http.NewRequest("GET", "/big.iso", nil)
	r.RequestURI, r.RemoteAddr = "/big.iso", "198.51.100.7:5000"
	if target, ok := rd.Target(r); !ok || target != "http://offload1.example.org:8081/big.iso" {
		t.Errorf("with DNS down: %q %v", target, ok)
	}
	mu.Lock()
	dnsUp = true
	mu.Unlock()
	rd.mu.Lock()
	rd.unresolved["offload1.example.org"] = time.Time{} // its minute is up
	rd.mu.Unlock()
	r.RemoteAddr = "192.0.2.9:4000"
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := rd.Target(r); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the offload host's own request is still redirected after its name resolved")
		}
	}
}

// TestAbsoluteForm: an absolute-form request line gives a Location of the path only.
func TestAbsoluteForm(t *testing.T) {
	rd := newTestRedirector(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rd.Handler(http.NotFoundHandler())}
	go srv.Serve(ln)
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET http://%s/a%%20b.iso HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", ln.Addr(), ln.Addr())
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := rd.Hosts()[rd.Pick("/a%20b.iso")].URL("/a%20b.iso")
	if resp.StatusCode != 307 || resp.Header.Get("Location") != want || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("absolute-form: %d %q %q, want 307 %q no-store", resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Cache-Control"), want)
	}
}

// TestHostDownFileForms: entries as copied from Hosts take the host out; what cannot be
// read or matched is logged once per change.
func TestHostDownFileForms(t *testing.T) {
	var book logBook
	down := filepath.Join(t.TempDir(), "down")
	rd := newTestRedirector(t, func(c *Config) { c.HostDownFile = down; c.Logf = book.logf })
	p := "/pub/a.iso"
	first := rd.Pick(p)
	mtime := time.Now()
	write := func(text string) {
		t.Helper()
		os.WriteFile(down, []byte(text), 0o644)
		mtime = mtime.Add(2 * time.Second)
		os.Chtimes(down, mtime, mtime)
	}
	forms := [][]string{
		{"127.0.0.2:8081", "http://127.0.0.2:8081", "http://127.0.0.2:8081/", "127.0.0.2:8081 1", "127.0.0.2", " 127.0.0.2:8081 # maintenance"},
		{"127.0.0.3:8443", "https://127.0.0.3:8443", "https://127.0.0.3:8443 2", "127.0.0.3", "https://127.0.0.3:8443/"},
	}
	for _, form := range forms[first] {
		write("# down\n" + form + "\n")
		if got := rd.Pick(p); got != 1-first {
			t.Errorf("line %q: picked %d, want %d", form, got, 1-first)
		}
	}
	for _, form := range []string{"127.0.0.2:8082", "https://127.0.0.2:8081", "127.0.0.22", "http://127.0.0.3:8443"} {
		write(form + "\n")
		if got := rd.Pick(p); got != first {
			t.Errorf("line %q took host %d out", form, first)
		}
	}
	write("no-such-offload-host:1\n")
	for range 3 {
		rd.Pick(p)
	}
	if n := book.count(`"no-such-offload-host:1" names no offload host`); n != 1 {
		t.Errorf("unmatched line logged %d times, want once: %q", n, book.lines)
	}
	if os.Geteuid() != 0 {
		write(rd.hosts[first].Addr + "\n")
		os.Chmod(down, 0)
		mtime = mtime.Add(2 * time.Second)
		os.Chtimes(down, mtime, mtime)
		for range 3 {
			rd.Pick(p)
		}
		if n := book.count("cannot read it"); n != 1 {
			t.Errorf("unreadable file logged %d times, want once: %q", n, book.lines)
		}
	}
}

// offloadStandIn is an HTTP server on addr that answers /robots.txt as offload serve does,
// and can be stopped and started again on the same address.
type offloadStandIn struct {
	addr string
	srv  *http.Server
}

func (o *offloadStandIn) start(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ln, err = net.Listen("tcp", o.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	o.addr = ln.Addr().String()
	o.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "User-agent: *\nDisallow: /\n")
	})}
	go o.srv.Serve(ln)
}

func (o *offloadStandIn) stop() { o.srv.Close() }

// TestProbeMovesRedirects: with ProbeInterval, a host that stops answering loses its
// files to the others within the interval and gets them back after it starts again.
func TestProbeMovesRedirects(t *testing.T) {
	hosts := []*offloadStandIn{{addr: "127.0.0.2:0"}, {addr: "127.0.0.3:0"}}
	for _, h := range hosts {
		h.start(t)
		defer h.stop()
	}
	var book logBook
	const interval = 100 * time.Millisecond
	rd := newTestRedirector(t, func(c *Config) {
		c.Hosts = []string{hosts[0].addr, hosts[1].addr}
		c.ProbeInterval, c.ProbeTimeout, c.Logf = interval, 500*time.Millisecond, book.logf
	})
	defer rd.Close()
	var p string
	for _, cand := range vectorPaths {
		if rd.Pick(cand) == 0 {
			p = cand
			break
		}
	}
	waitPick := func(want int, what string) {
		t.Helper()
		start := time.Now()
		for rd.Pick(p) != want {
			if time.Since(start) > interval+time.Second {
				t.Fatalf("%s: still picking %d after %v", what, rd.Pick(p), time.Since(start))
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("%s: moved in %v", what, time.Since(start).Round(time.Millisecond))
	}
	hosts[0].stop()
	waitPick(1, "host 0 stopped")
	hosts[0].start(t)
	waitPick(0, "host 0 back")
	if book.count("is down, out of rotation") != 1 || book.count("answers again") != 1 {
		t.Errorf("log: %q", book.lines)
	}
}
