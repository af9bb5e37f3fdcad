package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	apacheBin     = "/usr/sbin/apache2"
	apacheModules = "/usr/lib/apache2/modules"
)

// cgiApache is a private Apache httpd with mod_cgid that runs the built offload as the
// CGI program of two virtual hosts: every path of one (AliasMatch, the original's way),
// and the ErrorDocument 404 of the other, whose DocumentRoot holds a few files of its own.
type cgiApache struct {
	dir      string // ServerRoot: config, logs, the program, its config and cache
	port     int    // the AliasMatch host
	errPort  int    // the ErrorDocument host
	cache    string
	mirror   string // the ErrorDocument host's DocumentRoot
	cmd      *exec.Cmd
	stopOnce sync.Once
}

// startCGIApache starts Apache with offload as its CGI program for the base at baseURL.
func startCGIApache(t *testing.T, baseURL string, settings ...string) *cgiApache {
	t.Helper()
	for _, f := range []string{apacheBin, filepath.Join(apacheModules, "mod_cgid.so")} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s not installed (scripts/test installs apache2)", f)
		}
	}
	dir, err := os.MkdirTemp("", "offload-cgi-apache-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &cgiApache{dir: dir, cache: filepath.Join(dir, "cache"), mirror: filepath.Join(dir, "mirror")}
	a.port, a.errPort = freePortNum(t), freePortNum(t)
	for _, d := range []string{dir, filepath.Join(dir, "cgi-bin"), filepath.Join(dir, "empty"), a.mirror, a.cache} {
		os.MkdirAll(d, 0o755)
		os.Chmod(d, 0o755)
	}
	prog, err := os.ReadFile(offloadBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgi-bin", "offload"), prog, 0o755); err != nil {
		t.Fatal(err)
	}
	writeCGIConfig(t, filepath.Join(dir, "offload.conf"), baseURL, a.cache, settings...)
	runAs := ""
	if os.Geteuid() == 0 {
		// Apache runs its CGI programs as www-data: the cache is theirs, as in a deployment.
		u, err := user.Lookup("www-data")
		if err != nil {
			t.Skip("no www-data user to run Apache's children as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chown(a.cache, uid, gid)
		runAs = "User www-data\nGroup www-data\n"
	}
	var mods strings.Builder
	for _, m := range []string{"mpm_event", "authz_core", "alias", "cgid", "env", "mime"} {
		fmt.Fprintf(&mods, "LoadModule %s_module %s/mod_%s.so\n", m, apacheModules, m)
	}
	conf := fmt.Sprintf(`ServerRoot "%[1]s"
PidFile "%[1]s/httpd.pid"
ErrorLog "%[1]s/error.log"
LogLevel notice
%[2]s%[3]sScriptSock "%[1]s/cgisock"
TypesConfig /etc/mime.types
ServerName 127.0.0.1
LogFormat "%%h \"%%r\" %%>s %%b %%D" timed
CustomLog "%[1]s/access.log" timed
Listen 127.0.0.1:%[4]d
Listen 127.0.0.1:%[5]d

# offload as the CGI program of every path of a virtual host.
<VirtualHost 127.0.0.1:%[4]d>
    ServerName offload.example.org
    DocumentRoot "%[1]s/empty"
    AllowEncodedSlashes NoDecode
    SetEnv OFFLOAD_CONFIG "%[1]s/offload.conf"
    SetEnv ap_trust_cgilike_cl 1
    AliasMatch ^.*$ "%[1]s/cgi-bin/offload"
    <Directory "%[1]s/cgi-bin">
        Options +ExecCGI
        SetHandler cgi-script
        Require all granted
    </Directory>
</VirtualHost>

# offload as the ErrorDocument 404 of a host that has some of the files itself.
<VirtualHost 127.0.0.1:%[5]d>
    ServerName mirror.example.org
    DocumentRoot "%[6]s"
    <Directory "%[6]s">
        Require all granted
    </Directory>
    SetEnv OFFLOAD_CONFIG "%[1]s/offload.conf"
    SetEnv ap_trust_cgilike_cl 1
    ScriptAlias /offload.cgi "%[1]s/cgi-bin/offload"
    <Directory "%[1]s/cgi-bin">
        Require all granted
    </Directory>
    ErrorDocument 404 /offload.cgi
</VirtualHost>
`, dir, mods.String(), runAs, a.port, a.errPort, a.mirror)
	confPath := filepath.Join(dir, "httpd.conf")
	os.WriteFile(confPath, []byte(conf), 0o644)
	if out, err := exec.Command(apacheBin, "-f", confPath, "-t").CombinedOutput(); err != nil {
		t.Fatalf("apache2 -t: %v\n%s", err, out)
	}
	a.cmd = exec.Command(apacheBin, "-f", confPath, "-DFOREGROUND")
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	for deadline := time.Now().Add(15 * time.Second); ; {
		c1, err1 := net.Dial("tcp", a.addr())
		c2, err2 := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.errPort))
		if err1 == nil && err2 == nil {
			c1.Close()
			c2.Close()
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("apache did not start:\n%s", a.log("error.log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *cgiApache) addr() string { return fmt.Sprintf("127.0.0.1:%d", a.port) }

func (a *cgiApache) url() string { return "http://" + a.addr() }

func (a *cgiApache) errURL() string { return fmt.Sprintf("http://127.0.0.1:%d", a.errPort) }

func (a *cgiApache) log(name string) string {
	b, _ := os.ReadFile(filepath.Join(a.dir, name))
	return string(b)
}

func (a *cgiApache) stop() {
	a.stopOnce.Do(func() {
		a.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
		}
	})
}

// programs are the process ids of the offload CGI programs of this Apache still running.
func (a *cgiApache) programs(t *testing.T) []int {
	t.Helper()
	prog := filepath.Join(a.dir, "cgi-bin", "offload")
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == prog {
			pids = append(pids, pid)
		}
	}
	return pids
}

func freePortNum(t *testing.T) int {
	t.Helper()
	addr := freePort(t, "127.0.0.1")
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// fetchFrom GETs url from the local address from (any when empty), with extra header
// pairs, and returns the status, the head and the body.
func fetchFrom(t *testing.T, method, url, from string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	client := &http.Client{
		Transport:     &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true, DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       60 * time.Second,
	}
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return 0, nil, nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("%s %s: body: %v after %d bytes", method, url, err, len(body))
	}
	return resp.StatusCode, resp.Header, body
}

// TestCGIInApache runs the built offload as a CGI program in a real Apache with mod_cgid
// and checks it as the issue asks: the request list answered as offload serve answers
// it; cold and warm downloads byte-identical; 20 simultaneous cold clients cost the base
// one GET; the cap on downloads per address and file holds across the processes; and
// the ErrorDocument 404 form.
func TestCGIInApache(t *testing.T) {
	cases, files := cgiCases()
	b := startCGIBase(t, "127.0.0.1:0")
	for name, data := range files {
		b.write(t, name, data)
	}
	rng := newPattern(11)
	big := rng.bytes(24<<20 + 17)
	b.write(t, "/pub/big24.bin", big)
	slow := rng.bytes(8 << 20)
	b.write(t, "/slow/twenty.bin", slow)
	capped := rng.bytes(4 << 20)
	b.write(t, "/slow/capped.bin", capped)
	b.write(t, "/slow/errdoc.bin", capped)
	a := startCGIApache(t, b.url)
	d := startDaemon(t, "--base", b.url, "--cache", t.TempDir(), "--cache-size", "1G")
	defer func() {
		if t.Failed() {
			t.Logf("Apache's error log:\n%s", a.log("error.log"))
		}
	}()

	t.Run("same answers as serve", func(t *testing.T) {
		serveAddr := strings.TrimPrefix(d.url, "http://")
		for _, tc := range cases {
			s := exchange(t, serveAddr, b, tc, caseVars(files, serveAddr))
			c := exchange(t, a.addr(), b, tc, caseVars(files, a.addr()))
			if tc.noCGI {
				t.Logf("%s: %d from serve, %d from Apache (no CGI program can be run for it)", tc.name, s.status, c.status)
				continue
			}
			if tc.takeover && c.gets == tc.want+1 {
				t.Logf("%s: the CGI program took over the fill an earlier range left, with a GET for the rest", tc.name)
				c.gets = tc.want
			}
			compareAnswers(t, tc, s, c, tc.apache)
		}
	})

	t.Run("cold and warm downloads", func(t *testing.T) {
		want := sha256.Sum256(big)
		for i, kind := range []string{"cold", "warm"} {
			start := time.Now()
			status, hdr, body := fetchFrom(t, "GET", a.url()+"/pub/big24.bin", "")
			if status != 200 || sha256.Sum256(body) != want || hdr.Get("Content-Length") != strconv.Itoa(len(big)) {
				t.Errorf("%s download: status %d, %d bytes, Content-Length %q, same bytes %v", kind, status, len(body),
					hdr.Get("Content-Length"), sha256.Sum256(body) == want)
			}
			if n := b.getsOf("/pub/big24.bin"); n != 1 {
				t.Errorf("after the %s download: %d GETs at the base, want 1", kind, n)
			}
			t.Logf("%s download of %d MiB through Apache and offload cgi: %v (%d GET at the base)", kind, len(big)>>20,
				time.Since(start).Round(time.Millisecond), b.getsOf("/pub/big24.bin"))
			_ = i
		}
	})

	t.Run("20 simultaneous cold clients", func(t *testing.T) {
		const clients = 20
		want := sha256.Sum256(slow)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// One address each: from one, all but one would be download accelerators.
				status, _, body := fetchFrom(t, "GET", a.url()+"/slow/twenty.bin", fmt.Sprintf("127.0.0.%d", 10+i))
				if status != 200 || sha256.Sum256(body) != want {
					t.Errorf("status %d, %d bytes, same bytes %v", status, len(body), sha256.Sum256(body) == want)
				}
			}()
		}
		wg.Wait()
		gets, heads := b.getsOf("/slow/twenty.bin"), b.headsOf("/slow/twenty.bin")
		if gets != 1 {
			t.Errorf("%d clients at once: %d GETs at the base, want 1", clients, gets)
		}
		t.Logf("%d simultaneous cold clients of an 8 MiB file filled in about 2.6 s: %d GET and %d HEADs at the base, all bytes the same, %v",
			clients, gets, heads, time.Since(start).Round(time.Millisecond))
	})

	t.Run("download cap across processes", func(t *testing.T) {
		firstDone := make(chan int, 1)
		start := time.Now()
		go func() {
			status, _, body := fetchFrom(t, "GET", a.url()+"/slow/capped.bin", "127.0.0.1")
			if !bytes.Equal(body, capped) {
				t.Errorf("first download: %d bytes, not the file's", len(body))
			}
			firstDone <- status
		}()
		// The first download's process holds its slot once the base has its GET.
		waitFor(t, func() bool { return b.getsOf("/slow/capped.bin") == 1 })
		time.Sleep(100 * time.Millisecond)
		status, _, body := fetchFrom(t, "GET", a.url()+"/slow/capped.bin", "127.0.0.1")
		if status != 403 || !strings.Contains(string(body), "download accelerator") {
			t.Errorf("second download from the same address: %d %q, want 403 asking to turn off the accelerator", status, body)
		}
		if status, _, _ := fetchFrom(t, "HEAD", a.url()+"/slow/capped.bin", "127.0.0.1"); status != 200 {
			t.Errorf("HEAD from the same address meanwhile: %d, want 200 (a HEAD downloads nothing)", status)
		}
		if status, _, body := fetchFrom(t, "GET", a.url()+"/slow/capped.bin", "127.0.0.2"); status != 200 || !bytes.Equal(body, capped) {
			t.Errorf("download from another address: %d, %d bytes", status, len(body))
		}
		select {
		case st := <-firstDone:
			if st != 200 {
				t.Errorf("first download: %d", st)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("first download did not end")
		}
		t.Logf("first download took %v; a second from its address meanwhile got %d", time.Since(start).Round(time.Millisecond), status)
		if status, _, _ := fetchFrom(t, "GET", a.url()+"/slow/capped.bin", "127.0.0.1"); status != 200 {
			t.Errorf("download after the first ended: %d, want 200", status)
		}
	})

	t.Run("client leaves mid-download", func(t *testing.T) {
		leave := rng.bytes(8 << 20)
		b.write(t, "/slow/leave.bin", leave)
		conn, err := net.Dial("tcp", a.addr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /slow/leave.bin HTTP/1.1\r\nHost: offload.example.org\r\n\r\n")
		if _, err := io.ReadFull(conn, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		conn.(*net.TCPConn).SetLinger(0) // a reset, as a client that gives up
		conn.Close()
		// Apache ends the program (SIGTERM) once it sees the client gone.
		waitFor(t, func() bool { return len(a.programs(t)) == 0 })
		status, _, body := fetchFrom(t, "GET", a.url()+"/slow/leave.bin", "127.0.0.1")
		if status != 200 || !bytes.Equal(body, leave) {
			t.Errorf("download after a client left mid-fill: %d, %d bytes, same bytes %v", status, len(body), bytes.Equal(body, leave))
		}
		if n, r := b.getsOf("/slow/leave.bin"), b.rangedOf("/slow/leave.bin"); n != 2 || r != 1 {
			t.Errorf("%d GETs at the base (%d ranged), want the first and one ranged for the rest", n, r)
		}
		t.Logf("after a client left mid-fill, the next download got the same bytes for %d GETs at the base in all", b.getsOf("/slow/leave.bin"))
	})

	t.Run("a range of a cold file", func(t *testing.T) {
		probe := rng.bytes(8 << 20)
		b.write(t, "/slow/probe.bin", probe)
		start := time.Now()
		status, _, body := fetchFrom(t, "GET", a.url()+"/slow/probe.bin", "", "Range", "bytes=0-99")
		took := time.Since(start)
		if status != 206 || !bytes.Equal(body, probe[:100]) {
			t.Errorf("range of a cold file: %d, %d bytes", status, len(body))
		}
		// The answer ends with its bytes, not with the fill it started (2.6 s from this
		// base): the program closes stdin and stdout, so Apache ends the request.
		if took > time.Second {
			t.Errorf("a 100-byte range of a cold file took %v: the connection was held for the fill", took)
		}
		waitFor(t, func() bool { return len(a.programs(t)) == 0 })
		status, _, body = fetchFrom(t, "GET", a.url()+"/slow/probe.bin", "")
		if status != 200 || !bytes.Equal(body, probe) {
			t.Errorf("download after the range: %d, %d bytes, same bytes %v", status, len(body), bytes.Equal(body, probe))
		}
		gets, ranged := b.getsOf("/slow/probe.bin"), b.rangedOf("/slow/probe.bin")
		if gets != 2 || ranged != 1 {
			t.Errorf("%d GETs (%d ranged) at the base, want the first and one ranged for the rest", gets, ranged)
		}
		t.Logf("a 100-byte range of a cold 8 MiB file answered in %v; the next download took the fill over: %d GETs at the base, %d ranged",
			took.Round(time.Millisecond), gets, ranged)
	})

	t.Run("ErrorDocument 404", func(t *testing.T) {
		os.WriteFile(filepath.Join(a.mirror, "local.txt"), []byte("Apache serves this one itself\n"), 0o644)
		if status, _, body := fetchFrom(t, "GET", a.errURL()+"/local.txt", ""); status != 200 || string(body) != "Apache serves this one itself\n" {
			t.Errorf("a file of the DocumentRoot: %d %q", status, body)
		}
		want := sha256.Sum256(capped)
		for _, kind := range []string{"cold", "warm"} {
			status, hdr, body := fetchFrom(t, "GET", a.errURL()+"/slow/errdoc.bin", "")
			if status != 200 || sha256.Sum256(body) != want || hdr.Get("ETag") != etagOf(capped) {
				t.Errorf("%s download through the ErrorDocument: %d, %d bytes, ETag %q", kind, status, len(body), hdr.Get("ETag"))
			}
		}
		if n := b.getsOf("/slow/errdoc.bin"); n != 1 {
			t.Errorf("ErrorDocument downloads: %d GETs at the base, want 1", n)
		}
		status, hdr, body := fetchFrom(t, "HEAD", a.errURL()+"/slow/errdoc.bin", "")
		if status != 200 || len(body) != 0 || hdr.Get("Content-Length") != strconv.Itoa(len(capped)) {
			t.Errorf("HEAD through the ErrorDocument: %d, Content-Length %q, %d bytes of body", status, hdr.Get("Content-Length"), len(body))
		}
		status, hdr, body = fetchFrom(t, "GET", a.errURL()+"/slow/errdoc.bin", "", "Range", "bytes=10-19")
		if status != 206 || !bytes.Equal(body, capped[10:20]) || hdr.Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", len(capped)) {
			t.Errorf("range through the ErrorDocument: %d %q %q", status, hdr.Get("Content-Range"), body)
		}
		if status, _, _ := fetchFrom(t, "GET", a.errURL()+"/nope.bin", ""); status != 404 {
			t.Errorf("a file neither has: %d, want the base's 404", status)
		}
		if status, _, _ := fetchFrom(t, "GET", a.errURL()+"/slow/errdoc.bin?x=1", ""); status != 403 {
			t.Errorf("query string through the ErrorDocument: %d, want 403", status)
		}
		// The ErrorDocument runs as a GET; the first request's method decides. (Apache
		// refuses DELETE and the like with a 405 of its own before any 404.)
		if status, hdr, _ := fetchFrom(t, "POST", a.errURL()+"/slow/errdoc.bin", ""); status != 405 || hdr.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST through the ErrorDocument: %d, Allow %q; want 405 as serve answers", status, hdr.Get("Allow"))
		}
	})

	t.Run("no program left running", func(t *testing.T) {
		waitFor(t, func() bool { return len(a.programs(t)) == 0 })
	})

	t.Run("warm small file latency", func(t *testing.T) {
		const n = 50
		start := time.Now()
		for range n {
			if status, _, _ := fetchFrom(t, "GET", a.url()+"/pub/small.txt", ""); status != 200 {
				t.Fatalf("status %d", status)
			}
		}
		t.Logf("%d sequential warm GETs of a small file through Apache and offload cgi (one process and one HEAD at the base each): %v each",
			n, (time.Since(start) / n).Round(10*time.Microsecond))
	})
}

// pattern makes reproducible bytes.
type pattern struct{ x uint64 }

func newPattern(seed uint64) *pattern { return &pattern{x: seed*0x9E3779B97F4A7C15 + 1} }

func (p *pattern) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		p.x ^= p.x << 13
		p.x ^= p.x >> 7
		p.x ^= p.x << 17
		b[i] = byte(p.x)
	}
	return b
}
