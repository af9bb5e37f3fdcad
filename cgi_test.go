package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cgiBase is the base server of the CGI tests: the files of a folder (with an ETag and
// a fixed modification time, ranges and conditionals by net/http), and paths that
// answer as bases refuse: 410, 403, 401, a redirect, and dynamic content. Whole-file
// GETs of files under /slow/ trickle, 64 KiB every 20 ms. It counts GETs and HEADs
// per path.
type cgiBase struct {
	url string
	dir string

	mu     sync.Mutex
	gets   map[string]int
	heads  map[string]int
	ranged map[string]int // GETs with a Range header
}

// cgiModTime is every file's modification time on the base.
var cgiModTime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func startCGIBase(t *testing.T, listen string) *cgiBase {
	t.Helper()
	b := &cgiBase{dir: t.TempDir(), gets: map[string]int{}, heads: map[string]int{}, ranged: map[string]int{}}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	b.url = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: b}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

// etagOf is the ETag the base sends for a file's contents.
func etagOf(data []byte) string {
	return fmt.Sprintf(`"%x"`, sha256.Sum256(data))[:18] + `"`
}

func (b *cgiBase) write(t *testing.T, name string, data []byte) {
	t.Helper()
	p := filepath.Join(b.dir, filepath.FromSlash(name))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, cgiModTime, cgiModTime)
}

func (b *cgiBase) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Mod-Offload-Bypass") != "true" || !strings.HasPrefix(r.UserAgent(), "offload/") {
		http.Error(w, "not from offload", 400)
		return
	}
	b.mu.Lock()
	switch r.Method {
	case http.MethodGet:
		b.gets[r.URL.Path]++
		if r.Header.Get("Range") != "" {
			b.ranged[r.URL.Path]++
		}
	case http.MethodHead:
		b.heads[r.URL.Path]++
	}
	b.mu.Unlock()
	switch r.URL.Path {
	case "/gone.iso":
		http.Error(w, "gone", http.StatusGone)
		return
	case "/forbidden.iso":
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	case "/private.iso":
		w.Header().Set("WWW-Authenticate", `Basic realm="members"`)
		http.Error(w, "log in", http.StatusUnauthorized)
		return
	case "/moved.iso":
		http.Redirect(w, r, "http://elsewhere.example/new.iso", http.StatusMovedPermanently)
		return
	case "/broken.iso":
		// A base that fails: the connection ends before any answer.
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
		return
	case "/dynamic.php":
		w.Header().Set("Content-Type", "text/html")
		if r.Method == http.MethodGet {
			w.Write([]byte("<p>made just now</p>"))
			w.(http.Flusher).Flush()
		}
		return
	}
	data, err := os.ReadFile(filepath.Join(b.dir, filepath.FromSlash(r.URL.Path)))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", etagOf(data))
	if strings.HasPrefix(r.URL.Path, "/slow/") && r.Method == http.MethodGet && r.Header.Get("Range") == "" {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Header().Set("Last-Modified", cgiModTime.Format(http.TimeFormat))
		for i := 0; i < len(data); i += 64 << 10 {
			if _, err := w.Write(data[i:min(i+64<<10, len(data))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
		return
	}
	http.ServeContent(w, r, r.URL.Path, cgiModTime, bytes.NewReader(data))
}

// rangedOf is how many GETs with a Range header the base has had for path.
func (b *cgiBase) rangedOf(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ranged[path]
}

// headsOf is how many HEADs the base has had for path.
func (b *cgiBase) headsOf(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.heads[path]
}

// getsOf is how many GETs the base has had for path.
func (b *cgiBase) getsOf(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gets[path]
}

// cgiCase is one request of the list both offload serve and offload cgi answer.
type cgiCase struct {
	name string
	// req is the request head and body, "Connection: close" and the end of the head
	// added; {host}, {etag} (of /pub/big.bin) and {lm} are filled in.
	req string
	// gets is the path whose base GETs are counted around the request, with want how
	// many it must cost each front end (-1: not checked).
	gets string
	want int
	// takeover: in Apache, the fill an earlier case's range started is stopped with that
	// answer (see runCGI), so this case may cost the CGI program one ranged GET more.
	takeover bool
	// apache: the answer comes from Apache itself, before any CGI program runs (its
	// path rules): only the status is compared with offload serve's.
	apache bool
	// noCGI: no web server can hand this request to a CGI program (a NUL cannot be in
	// an environment variable): not compared, the answers are logged.
	noCGI bool
}

// cgiCases is the request list; data are the files it needs on the base.
func cgiCases() (cases []cgiCase, files map[string][]byte) {
	rng := rand.New(rand.NewPCG(7, 7))
	big := make([]byte, 3<<20+123)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	other := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB
	small := []byte(strings.Repeat("small file, kept in memory.\n", 40))
	files = map[string][]byte{"/pub/big.bin": big, "/pub/other.bin": other, "/pub/small.txt": small, "/pub/empty.bin": {}}
	get := func(target string, hdr ...string) string {
		return "GET " + target + " HTTP/1.1\r\nHost: {host}\r\n" + strings.Join(hdr, "")
	}
	return []cgiCase{
		{name: "cold GET", req: get("/pub/big.bin"), gets: "/pub/big.bin", want: 1},
		{name: "warm GET", req: get("/pub/big.bin"), gets: "/pub/big.bin", want: 0},
		{name: "HEAD", req: "HEAD /pub/big.bin HTTP/1.1\r\nHost: {host}\r\n", gets: "/pub/big.bin", want: 0},
		{name: "range", req: get("/pub/big.bin", "Range: bytes=100-199\r\n")},
		{name: "range to the end", req: get("/pub/big.bin", "Range: bytes=3145000-\r\n")},
		{name: "suffix range", req: get("/pub/big.bin", "Range: bytes=-500\r\n")},
		{name: "multi range", req: get("/pub/big.bin", "Range: bytes=0-9,1000-1999,-7\r\n")},
		{name: "unsatisfiable range", req: get("/pub/big.bin", "Range: bytes=5000000-\r\n")},
		{name: "malformed range", req: get("/pub/big.bin", "Range: bytes=abc\r\n")},
		{name: "If-None-Match matches", req: get("/pub/big.bin", "If-None-Match: {etag}\r\n")},
		{name: "If-None-Match differs", req: get("/pub/big.bin", "If-None-Match: \"other\"\r\n")},
		{name: "If-Modified-Since same", req: get("/pub/big.bin", "If-Modified-Since: {lm}\r\n")},
		{name: "If-Modified-Since older", req: "HEAD /pub/big.bin HTTP/1.1\r\nHost: {host}\r\nIf-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT\r\n"},
		{name: "If-Range ETag matches", req: get("/pub/big.bin", "If-Range: {etag}\r\n", "Range: bytes=0-9\r\n")},
		{name: "If-Range ETag differs", req: get("/pub/big.bin", "If-Range: \"old\"\r\n", "Range: bytes=0-9\r\n")},
		{name: "If-Range date", req: get("/pub/big.bin", "If-Range: {lm}\r\n", "Range: bytes=10-19\r\n")},
		{name: "If-Match fails", req: get("/pub/big.bin", "If-Match: \"other\"\r\n")},
		{name: "If-Unmodified-Since fails", req: get("/pub/big.bin", "If-Unmodified-Since: Mon, 01 Jan 2024 00:00:00 GMT\r\n")},
		{name: "small cold", req: get("/pub/small.txt"), gets: "/pub/small.txt", want: 1},
		{name: "small warm", req: get("/pub/small.txt"), gets: "/pub/small.txt", want: 0},
		{name: "small multi range", req: get("/pub/small.txt", "Range: bytes=0-4,-5\r\n")},
		{name: "small HEAD", req: "HEAD /pub/small.txt HTTP/1.1\r\nHost: {host}\r\n"},
		{name: "empty file", req: get("/pub/empty.bin")},
		{name: "cold HEAD fills nothing", req: "HEAD /pub/other.bin HTTP/1.1\r\nHost: {host}\r\n", gets: "/pub/other.bin", want: 0},
		{name: "cold range", req: get("/pub/other.bin", "Range: bytes=1000-1999\r\n"), gets: "/pub/other.bin", want: 1},
		{name: "warm after a cold range", req: get("/pub/other.bin"), gets: "/pub/other.bin", want: 0, takeover: true},
		{name: "404 from the base", req: get("/nope.bin")},
		{name: "410 from the base", req: get("/gone.iso")},
		{name: "403 from the base", req: get("/forbidden.iso")},
		{name: "401 from the base is protected content", req: get("/private.iso")},
		{name: "redirect from the base", req: get("/moved.iso")},
		{name: "dynamic content", req: get("/dynamic.php")},
		{name: "base fails", req: get("/broken.iso")},
		{name: "query string", req: get("/pub/big.bin?x=1")},
		{name: "empty query string", req: get("/pub/big.bin?")},
		{name: "POST", req: "POST /pub/big.bin HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=b"},
		{name: "DELETE", req: "DELETE /pub/big.bin HTTP/1.1\r\nHost: {host}\r\n"},
		{name: "GET with a body", req: "GET /pub/small.txt HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabc"},
		{name: "robots.txt", req: get("/robots.txt"), gets: "/robots.txt", want: 0},
		{name: "escaped slash", req: get("/pub%2Fsmall.txt"), gets: "/pub/small.txt", want: 0},
		{name: "escaped letter", req: get("/pub/%73mall.txt")},
		{name: "dot segments", req: get("/x/../pub/./small.txt")},
		{name: "double slashes", req: get("//pub//small.txt")},
		{name: "climbs above the root", req: get("/../etc/passwd"), apache: true},
		{name: "escaped climb", req: get("/pub/%2e%2e/%2e%2e/etc/passwd"), apache: true},
		{name: "NUL", req: get("/pub/small.txt%00"), noCGI: true},
		{name: "HTTP/1.0 without Host", req: "GET /pub/small.txt HTTP/1.0\r\n"},
		{name: "User-Agent and Referer", req: get("/pub/small.txt", "User-Agent: curl/8\r\n", "Referer: http://www.example.org/\r\n")},
	}, files
}

// cgiAnswer is what a front end answered, with its base's GETs for the case's path.
type cgiAnswer struct {
	status int
	header http.Header
	body   []byte
	gets   int
}

// comparedFields are the header fields both front ends must agree on.
var comparedFields = []string{"Content-Length", "Content-Type", "Content-Range", "ETag", "Last-Modified",
	"Accept-Ranges", "Location", "Allow", "Warning", "Retry-After"}

// exchange sends tc's request to addr and reads the answer.
func exchange(t *testing.T, addr string, b *cgiBase, tc cgiCase, vars *strings.Replacer) cgiAnswer {
	t.Helper()
	req := vars.Replace(tc.req)
	head, body, ok := strings.Cut(req, "\r\n\r\n")
	if !ok {
		head = strings.TrimSuffix(req, "\r\n")
	}
	req = head + "\r\nConnection: close\r\n\r\n" + body
	before := 0
	if tc.gets != "" {
		before = b.getsOf(tc.gets)
	}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s: %s: %v", tc.name, addr, err)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %s: body: %v after %d bytes", tc.name, addr, err, len(data))
	}
	a := cgiAnswer{status: resp.StatusCode, header: resp.Header, body: data}
	if tc.gets != "" {
		// A fill may still be landing; the base has seen its GET by the time the
		// answer's head is out (the cache asks before it answers).
		a.gets = b.getsOf(tc.gets) - before
	}
	// A multipart body's boundary is random per process.
	if _, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil && params["boundary"] != "" {
		a.body = bytes.ReplaceAll(a.body, []byte(params["boundary"]), []byte("BOUNDARY"))
		resp.Header.Set("Content-Type", strings.ReplaceAll(resp.Header.Get("Content-Type"), params["boundary"], "BOUNDARY"))
	}
	return a
}

// compareAnswers reports every difference between offload serve's answer and the
// CGI program's; apacheOwn compares only the status.
func compareAnswers(t *testing.T, tc cgiCase, serve, cgiA cgiAnswer, apacheOwn bool) {
	t.Helper()
	if serve.status != cgiA.status {
		t.Errorf("%s: status %d from serve, %d from cgi (body %q)", tc.name, serve.status, cgiA.status, cgiA.body[:min(len(cgiA.body), 200)])
		return
	}
	if apacheOwn {
		return
	}
	for _, f := range comparedFields {
		if s, c := serve.header.Values(f), cgiA.header.Values(f); strings.Join(s, "|") != strings.Join(c, "|") {
			t.Errorf("%s: %s: %q from serve, %q from cgi", tc.name, f, s, c)
		}
	}
	if !bytes.Equal(serve.body, cgiA.body) {
		t.Errorf("%s: bodies differ: %d bytes from serve (%q...), %d from cgi (%q...)", tc.name,
			len(serve.body), serve.body[:min(len(serve.body), 60)], len(cgiA.body), cgiA.body[:min(len(cgiA.body), 60)])
	}
	if tc.gets != "" && tc.want >= 0 && (serve.gets != tc.want || cgiA.gets != tc.want) {
		t.Errorf("%s: GETs at the base for %s: %d from serve, %d from cgi, want %d", tc.name, tc.gets, serve.gets, cgiA.gets, tc.want)
	}
}

// caseVars fills in a request's {host}, {etag} and {lm}.
func caseVars(files map[string][]byte, host string) *strings.Replacer {
	return strings.NewReplacer("{host}", host, "{etag}", etagOf(files["/pub/big.bin"]), "{lm}", cgiModTime.Format(http.TimeFormat))
}

// writeCGIConfig writes an offload.conf for the CGI program.
func writeCGIConfig(t *testing.T, path, base, cacheDir string, more ...string) {
	t.Helper()
	conf := fmt.Sprintf("# offload cgi\nbase = %s\ncache = %s\ncache-size = 1G\n%s", base, cacheDir, strings.Join(more, "\n"))
	if err := os.WriteFile(path, []byte(conf+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCGIAnswersAsServe runs one request list against offload serve and against the CGI
// program run by net/http/cgi's Handler, each with a cache of its own on one base, and
// compares status, head fields, bytes and the GETs each cost at the base.
func TestCGIAnswersAsServe(t *testing.T) {
	cases, files := cgiCases()
	b := startCGIBase(t, "127.0.0.1:0")
	for name, data := range files {
		b.write(t, name, data)
	}
	d := startDaemon(t, "--base", b.url, "--cache", t.TempDir(), "--cache-size", "1G")

	conf := filepath.Join(t.TempDir(), "offload.conf")
	cgiCache := t.TempDir()
	writeCGIConfig(t, conf, b.url, cgiCache)
	stderr := &syncBuffer{}
	host := httptest.NewServer(&cgi.Handler{Path: offloadBin, Env: []string{configEnv + "=" + conf}, Stderr: stderr})
	t.Cleanup(host.Close)

	serveAddr, cgiAddr := strings.TrimPrefix(d.url, "http://"), strings.TrimPrefix(host.URL, "http://")
	for _, tc := range cases {
		s := exchange(t, serveAddr, b, tc, caseVars(files, serveAddr))
		c := exchange(t, cgiAddr, b, tc, caseVars(files, cgiAddr))
		if tc.noCGI {
			t.Logf("%s: %d from serve, %d from net/http/cgi's Handler (no CGI program can be run for it)", tc.name, s.status, c.status)
			continue
		}
		compareAnswers(t, tc, s, c, false)
		if testing.Verbose() {
			t.Logf("%-40s %d %8d bytes, GETs %d/%d", tc.name, s.status, len(s.body), s.gets, c.gets)
		}
	}
	if t.Failed() {
		t.Logf("cgi stderr:\n%s", stderr)
	}
	// Serve and cgi share the cache folder's format: the CGI program's cache,
	// taken over by offload serve, answers warm.
	before := b.getsOf("/pub/big.bin")
	d2 := startDaemon(t, "--base", b.url, "--cache", cgiCache, "--cache-size", "1G")
	if sum, status := sha(t, d2.url+"/pub/big.bin"); status != 200 || sum != sha256.Sum256(files["/pub/big.bin"]) {
		t.Errorf("serve over the CGI program's cache: status %d, wrong bytes", status)
	}
	if n := b.getsOf("/pub/big.bin") - before; n != 0 {
		t.Errorf("serve over the CGI program's cache: %d GETs at the base, want 0", n)
	}
}

// runCGIProgram runs bin as a web server would for one request described by env (plus
// the usual variables), and returns its output and stderr.
func runCGIProgram(t *testing.T, bin string, args []string, env ...string) (out, stderr string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"GATEWAY_INTERFACE=CGI/1.1", "SERVER_PROTOCOL=HTTP/1.1", "REQUEST_METHOD=GET",
		"HTTP_HOST=offload.test", "REMOTE_ADDR=127.0.0.1", "REMOTE_PORT=5555", "REQUEST_URI=/pub/small.txt",
		"PATH=/usr/bin:/bin"}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("CGI program did not end:\n%s", e.String())
	}
	return o.String(), e.String()
}

// TestCGIConfig checks where the CGI program finds its settings, and that a bad or
// missing config is a 500 with a short reason for the client and the error for the
// web server's log.
func TestCGIConfig(t *testing.T) {
	b := startCGIBase(t, "127.0.0.1:0")
	b.write(t, "/pub/small.txt", []byte("hello\n"))
	dir := t.TempDir()
	good := filepath.Join(dir, "good.conf")
	writeCGIConfig(t, good, b.url, filepath.Join(dir, "cache"))
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("base = "+b.url+"\ncache-size = lots\n"), 0o644)
	// A copy of the program with an offload.conf beside it.
	beside := filepath.Join(dir, "cgi-bin")
	os.Mkdir(beside, 0o755)
	besideBin := filepath.Join(beside, "offload.cgi")
	data, err := os.ReadFile(offloadBin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(besideBin, data, 0o755)
	writeCGIConfig(t, filepath.Join(beside, cgiConfigName), b.url, filepath.Join(dir, "cache2"))

	tests := []struct {
		name       string
		bin        string
		args       []string
		env        []string
		wantOut    string
		wantStderr string
	}{
		{"from OFFLOAD_CONFIG", offloadBin, nil, []string{configEnv + "=" + good}, "Status: 200 OK\r\n", ""},
		{"ErrorDocument's REDIRECT_OFFLOAD_CONFIG", offloadBin, nil, []string{"REDIRECT_" + configEnv + "=" + good}, "Status: 200 OK\r\n", ""},
		{"next to the program", besideBin, nil, nil, "Status: 200 OK\r\n", ""},
		{"the variable wins", besideBin, nil, []string{configEnv + "=" + bad}, "Status: 500", "bad.conf:2: cache-size"},
		{"no config", offloadBin, nil, nil, "Status: 500 Internal Server Error\r\n", "no OFFLOAD_CONFIG set"},
		{"bad config", offloadBin, nil, []string{configEnv + "=" + bad}, "not configured right", `bad.conf:2: cache-size: "lots" is not a size`},
		{"missing config", offloadBin, nil, []string{configEnv + "=" + filepath.Join(dir, "missing.conf")}, "Status: 500", "missing.conf"},
		// Apache passes a query string's words as arguments: never read as flags.
		{"arguments ignored", offloadBin, []string{"--config", bad}, []string{configEnv + "=" + good, "REQUEST_URI=/pub/small.txt?--config+x"},
			"Status: 403 Forbidden\r\n", ""},
		{"unparsable URI", offloadBin, nil, []string{configEnv + "=" + good, "REQUEST_URI=/%zz"}, "Status: 400 Bad Request\r\n", "REQUEST_URI"},
		// Whatever net/http/cgi cannot read is a 400 all the same, never no answer.
		{"unparsable CONTENT_LENGTH", offloadBin, nil, []string{configEnv + "=" + good, "CONTENT_LENGTH=12x"}, "Status: 400 Bad Request\r\n", "CONTENT_LENGTH"},
		{"unparsable SERVER_PROTOCOL", offloadBin, nil, []string{configEnv + "=" + good, "SERVER_PROTOCOL=HTTP/1.1x"}, "Status: 400 Bad Request\r\n", "SERVER_PROTOCOL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr := runCGIProgram(t, tc.bin, tc.args, tc.env...)
			if !strings.Contains(out, tc.wantOut) {
				t.Errorf("output lacks %q:\n%s\nstderr: %s", tc.wantOut, out, stderr)
			}
			if tc.wantStderr != "" && !strings.Contains(stderr, tc.wantStderr) {
				t.Errorf("stderr lacks %q: %s", tc.wantStderr, stderr)
			}
			if tc.wantStderr == "" && stderr != "" {
				t.Errorf("stderr: %s", stderr)
			}
			if strings.HasPrefix(tc.wantOut, "Status: 500") && strings.Contains(out, dir) {
				t.Errorf("the client is told a file name:\n%s", out)
			}
		})
	}
	// Outside a web server: a usage error.
	out, err := exec.Command(offloadBin, "cgi").CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "a web server runs this") {
		t.Errorf("offload cgi outside a web server: %v %s", err, out)
	}
}

// TestCGILocalCopy checks the docroot setting in CGI mode: a file of the local copy
// that is the base's version is served from it, with no GET at the base; one that is
// not is served from the cache.
func TestCGILocalCopy(t *testing.T) {
	b := startCGIBase(t, "127.0.0.1:0")
	same, changed := bytes.Repeat([]byte("local copy "), 10000), bytes.Repeat([]byte("new version "), 10000)
	b.write(t, "/pub/same.bin", same)
	b.write(t, "/pub/changed.bin", changed)
	dir := t.TempDir()
	docroot := filepath.Join(dir, "www")
	for name, data := range map[string][]byte{"pub/same.bin": same, "pub/changed.bin": changed[:1000]} {
		p := filepath.Join(docroot, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, data, 0o644)
		os.Chtimes(p, cgiModTime, cgiModTime)
	}
	conf := filepath.Join(dir, "offload.conf")
	writeCGIConfig(t, conf, b.url, filepath.Join(dir, "cache"), "docroot = "+docroot)
	for _, tc := range []struct {
		path string
		want []byte
		gets int
	}{{"/pub/same.bin", same, 0}, {"/pub/changed.bin", changed, 1}} {
		out, stderr := runCGIProgram(t, offloadBin, nil, configEnv+"="+conf, "REQUEST_URI="+tc.path)
		_, body, _ := strings.Cut(out, "\r\n\r\n")
		if !strings.HasPrefix(out, "Status: 200 OK\r\n") || body != string(tc.want) {
			t.Errorf("%s: %.80q (%d bytes of body); stderr %s", tc.path, out, len(body), stderr)
		}
		if n := b.getsOf(tc.path); n != tc.gets || b.headsOf(tc.path) != 1 {
			t.Errorf("%s: %d GETs and %d HEADs at the base, want %d and 1", tc.path, n, b.headsOf(tc.path), tc.gets)
		}
	}
}

// TestCGIRequestHead checks the request head rebuilt from a CGI environment, for the
// plain form and for Apache's ErrorDocument form.
func TestCGIRequestHead(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string // "" for an error
	}{
		{"plain", map[string]string{"REQUEST_METHOD": "GET", "REQUEST_URI": "/a%2Fb/../c?q", "HTTP_RANGE": "bytes=0-1",
			"HTTP_IF_NONE_MATCH": `"x"`, "HTTP_X_FORWARDED_FOR": "192.0.2.1", "HTTP_COOKIE": "left=out"},
			"GET /a%2Fb/../c?q HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nIf-None-Match: \"x\"\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n"},
		{"ErrorDocument", map[string]string{"REQUEST_METHOD": "GET", "REDIRECT_REQUEST_METHOD": "HEAD", "REQUEST_URI": "/pub/x.iso",
			"REDIRECT_URL": "/pub/x.iso", "REDIRECT_STATUS": "404"},
			"HEAD /pub/x.iso HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"REDIRECT_URL without REQUEST_URI", map[string]string{"REQUEST_METHOD": "GET", "REDIRECT_URL": "/pub/x.iso",
			"REDIRECT_QUERY_STRING": "a=1", "SCRIPT_NAME": "/cgi-bin/offload"},
			"GET /pub/x.iso?a=1 HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"REDIRECT_URL is decoded", map[string]string{"REQUEST_METHOD": "GET", "REDIRECT_URL": "/a%41 b?c#.iso",
			"SCRIPT_NAME": "/cgi-bin/offload"},
			// The file the client named "/a%2541%20b%3Fc%23.iso", not "/aA" with a query.
			"GET /a%2541%20b%3Fc%23.iso HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"HTTP/1.0 with a body", map[string]string{"REQUEST_METHOD": "POST", "REQUEST_URI": "/", "SERVER_PROTOCOL": "HTTP/1.0",
			"CONTENT_LENGTH": "3"},
			"POST / HTTP/1.0\r\nHost: h\r\nContent-Length: 3\r\n\r\n"},
		{"HTTP/2 as 1.1", map[string]string{"REQUEST_METHOD": "GET", "REQUEST_URI": "/", "SERVER_PROTOCOL": "HTTP/2.0"},
			"GET / HTTP/1.1\r\nHost: h\r\n\r\n"},
		{"no Host", map[string]string{"REQUEST_METHOD": "GET", "REQUEST_URI": "/", "HTTP_HOST": ""},
			"GET / HTTP/1.0\r\n\r\n"},
		{"line break in a field", map[string]string{"REQUEST_METHOD": "GET", "REQUEST_URI": "/", "HTTP_RANGE": "bytes=0-1\r\nHost: evil"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "h", "REMOTE_ADDR": "127.0.0.1"}
			for k, v := range tc.env {
				env[k] = v
			}
			r, err := cgi.RequestFromMap(env)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := fmt.Sscan(env["CONTENT_LENGTH"], &r.ContentLength); n == 0 && err != nil {
				r.ContentLength = 0
			}
			got, err := cgiRequestHead(r, func(k string) string { return env[k] })
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("no error; head %q", got)
			case tc.want != "" && string(got) != tc.want:
				t.Errorf("head %q (%v), want %q", got, err, tc.want)
			}
		})
	}
}
