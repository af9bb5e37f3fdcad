// Package apachetest builds mod_offload (in the folder above) with apxs and tests it in a
// real Apache httpd, alone and in front of real offload servers.
package apachetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modoffload/offload/redirect"
)

const apacheBin = "/usr/sbin/apache2"
const modules = "/usr/lib/apache2/modules"

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/test installs apache2, apache2-dev and curl)", tool)
		}
	}
}

// buildModule compiles mod_offload.c with apxs in a temp folder and returns the .so. The
// sources come from the folder above, or from $OFFLOAD_TEST_MODULE_DIR (to see which tests
// an older module fails).
func buildModule(t *testing.T) string {
	t.Helper()
	need(t, "apxs", apacheBin)
	dir := t.TempDir()
	src := ".."
	if d := os.Getenv("OFFLOAD_TEST_MODULE_DIR"); d != "" {
		src = d
	}
	for _, f := range []string{"mod_offload.c", "offload_pick.h"} {
		data, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), data, 0o644)
	}
	cmd := exec.Command("apxs", "-c", "-Wc,-Wall", "-Wc,-Wextra", "-Wc,-Werror", "mod_offload.c")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apxs -c: %v\n%s", err, out)
	}
	so := filepath.Join(dir, ".libs", "mod_offload.so")
	os.Chmod(dir, 0o755)
	return so
}

func TestPickVectorsInC(t *testing.T) {
	need(t, "gcc")
	bin := filepath.Join(t.TempDir(), "pick_test")
	if out, err := exec.Command("gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-o", bin, "../pick_test.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "../testdata/pick-vectors.txt").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0 differ") {
		t.Fatalf("C host choice disagrees with the vectors: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
}

// apache is a private Apache httpd with its own ServerRoot, on 127.0.0.1.
type apache struct {
	dir     string // ServerRoot: config, logs, pid
	docroot string
	port    int
	url     string
	mods    []string // modules to load besides the usual ones, e.g. "cgi", "autoindex"
	cmd     *exec.Cmd
}

// publicDir makes a folder that Apache's unprivileged children can read.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "offload-apache-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (a *apache) config(so, extra string) string {
	user := ""
	if os.Geteuid() == 0 {
		user = "User www-data\nGroup www-data\n"
	}
	var lm strings.Builder
	for _, m := range append([]string{"mpm_event", "authz_core", "authz_user", "authn_core", "authn_file", "auth_basic", "mime"}, a.mods...) {
		fmt.Fprintf(&lm, "LoadModule %s_module %s/mod_%s.so\n", m, modules, m)
	}
	return fmt.Sprintf(`ServerRoot "%[1]s"
PidFile "%[1]s/httpd.pid"
ErrorLog "%[1]s/error.log"
LogLevel notice
Listen 127.0.0.1:%[2]d
ServerName 127.0.0.1
%[3]sLoadModule offload_module %[4]s
TypesConfig /etc/mime.types
%[5]sLogFormat "%%h \"%%r\" %%>s %%b \"%%{User-Agent}i\"" simple
CustomLog "%[1]s/access.log" simple
DocumentRoot "%[6]s"
<Directory "%[6]s">
  Require all granted
  AllowOverride Options AuthConfig
</Directory>
%[7]s
`, a.dir, a.port, lm.String(), so, user, a.docroot, extra)
}

func newApache(t *testing.T) *apache {
	t.Helper()
	a := &apache{dir: publicDir(t), port: freePort(t)}
	a.docroot = filepath.Join(a.dir, "www")
	os.Mkdir(a.docroot, 0o755)
	a.url = fmt.Sprintf("http://127.0.0.1:%d", a.port)
	return a
}

func (a *apache) write(t *testing.T, name string, data []byte) {
	t.Helper()
	p := filepath.Join(a.docroot, filepath.FromSlash(name))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// configTest runs apache2 -t on a config and returns its output and success.
func (a *apache) configTest(t *testing.T, so, extra string) (string, bool) {
	t.Helper()
	conf := filepath.Join(a.dir, "httpd.conf")
	os.WriteFile(conf, []byte(a.config(so, extra)), 0o644)
	out, err := exec.Command(apacheBin, "-f", conf, "-t").CombinedOutput()
	return string(out), err == nil
}

func (a *apache) start(t *testing.T, so, extra string) {
	t.Helper()
	if out, ok := a.configTest(t, so, extra); !ok {
		t.Fatalf("apache2 -t: %s", out)
	}
	a.cmd = exec.Command(apacheBin, "-f", filepath.Join(a.dir, "httpd.conf"), "-DFOREGROUND")
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", a.port)); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(a.dir, "error.log"))
			t.Fatalf("apache did not start:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clientFrom is an HTTP client whose connections come from the given local address
// (any when empty) and that never follows redirects.
func clientFrom(from string) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	return &http.Client{
		Transport:     &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
}

// get sends one request from the given local address, never following redirects.
func get(t *testing.T, method, url, from string, hdr ...string) *http.Response {
	t.Helper()
	client := clientFrom(from)
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func hosts(specs ...string) []redirect.Host {
	var hs []redirect.Host
	for _, s := range specs {
		h, err := redirect.ParseHost(s)
		if err != nil {
			panic(err)
		}
		hs = append(hs, h)
	}
	return hs
}

func TestModuleDecisions(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	big := bytes.Repeat([]byte("b"), 10000)
	for _, f := range []string{"big.iso", "pub/other.iso", "a b.iso", "movie.mp4", "off/big.iso", "hta/big.iso", "protected/big.iso", "elsewhere/big.iso", "run/script.cgi"} {
		a.write(t, f, big)
	}
	a.write(t, "small.txt", []byte("small"))
	a.write(t, "hta/.htaccess", []byte("OffloadEngine Off\n"))
	sum := sha1.Sum([]byte("secret"))
	os.WriteFile(filepath.Join(a.dir, "htpasswd"), []byte("user:{SHA}"+base64.StdEncoding.EncodeToString(sum[:])+"\n"), 0o644)
	a.write(t, "protected/.htaccess", []byte("AuthType Basic\nAuthName test\nAuthUserFile "+a.dir+"/htpasswd\nRequire valid-user\n"))
	down := filepath.Join(a.dir, "down")
	specs := []string{"127.0.0.2:8081", "https://127.0.0.3:8443 2"}
	a.start(t, so, fmt.Sprintf(`OffloadEngine On
OffloadHost %s
OffloadHost %s
OffloadExcludeMimeType video/*
OffloadExcludeUserAgent *BadBot*
OffloadExcludeAddress 127.0.0.5 127.0.0.6/32
OffloadHostDownFile %s
OffloadDebug On
AddHandler cgi-script .cgi
<Directory "%s/off">
  OffloadEngine Off
</Directory>
<Directory "%s/elsewhere">
  OffloadHost 127.0.0.9:9
</Directory>
`, specs[0], strings.Replace(specs[1], " ", " ", 1), down, a.docroot, a.docroot))
	hs := hosts(specs...)

	// Offloaded: 307 to the host package redirect picks for the same path.
	for _, p := range []string{"/big.iso", "/pub/other.iso", "/a%20b.iso"} {
		resp := get(t, "GET", a.url+p, "")
		want := hs[redirect.PickHash(hs, nil, p)].URL(p)
		if resp.StatusCode != 307 || resp.Header.Get("Location") != want {
			t.Errorf("GET %s: %d %q, want 307 %q", p, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}
	// Served by Apache itself.
	tests := []struct {
		name, method, path, from string
		hdr                      []string
		status                   int
	}{
		{"small file", "GET", "/small.txt", "", nil, 200},
		{"HEAD", "HEAD", "/big.iso", "", nil, 200},
		{"query string", "GET", "/big.iso?x=1", "", nil, 200},
		{"bypass header", "GET", "/big.iso", "", []string{"X-Mod-Offload-Bypass", "true"}, 200},
		{"excluded type", "GET", "/movie.mp4", "", nil, 200},
		{"excluded agent", "GET", "/big.iso", "", []string{"User-Agent", "the badbot/1.0"}, 200},
		{"excluded address", "GET", "/big.iso", "127.0.0.5", nil, 200},
		{"excluded CIDR", "GET", "/big.iso", "127.0.0.6", nil, 200},
		{"from an offload host", "GET", "/big.iso", "127.0.0.2", nil, 200},
		{"engine off in a directory", "GET", "/off/big.iso", "", nil, 200},
		{"engine off in .htaccess", "GET", "/hta/big.iso", "", nil, 200},
		{"protected, no credentials", "GET", "/protected/big.iso", "", nil, 401},
		{"protected, logged in", "GET", "/protected/big.iso", "", []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte("user:secret"))}, 200},
		{"missing", "GET", "/nope.iso", "", nil, 404},
		{"script handler", "GET", "/run/script.cgi", "", nil, 200},
	}
	for _, tc := range tests {
		if resp := get(t, tc.method, a.url+tc.path, tc.from, tc.hdr...); resp.StatusCode != tc.status {
			t.Errorf("%s: %s %s: status %d, want %d (Location %q)", tc.name, tc.method, tc.path, resp.StatusCode, tc.status, resp.Header.Get("Location"))
		}
	}
	// A directory's own OffloadHost replaces the server's.
	if resp := get(t, "GET", a.url+"/elsewhere/big.iso", ""); resp.Header.Get("Location") != "http://127.0.0.9:9/elsewhere/big.iso" {
		t.Errorf("directory hosts: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// Marking the picked host down moves the file to the next host; all down: served here.
	p := "/big.iso"
	first := redirect.PickHash(hs, nil, p)
	os.WriteFile(down, []byte("# maintenance\n"+hs[first].Addr+"\n"), 0o644)
	if resp := get(t, "GET", a.url+p, ""); resp.Header.Get("Location") != hs[1-first].URL(p) {
		t.Errorf("host down: Location %q, want %q", resp.Header.Get("Location"), hs[1-first].URL(p))
	}
	os.WriteFile(down, []byte(hs[0].Addr+"\n"+hs[1].Addr+"\n"), 0o644)
	os.Chtimes(down, time.Now().Add(2*time.Second), time.Now().Add(2*time.Second))
	if resp := get(t, "GET", a.url+p, ""); resp.StatusCode != 200 {
		t.Errorf("all hosts down: %d", resp.StatusCode)
	}
	log, _ := os.ReadFile(filepath.Join(a.dir, "error.log"))
	if !strings.Contains(string(log), "not offloading /small.txt: smaller than OffloadMinSize") {
		t.Errorf("OffloadDebug logged no reason:\n%s", log)
	}
}

func TestConfigTestRejects(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	tests := []struct{ conf, want string }{
		{"OffloadMinSize lots", "OffloadMinSize: 'lots' is not a size in bytes"},
		{"OffloadMinSize -5", "OffloadMinSize: '-5' is not a size in bytes"},
		{"OffloadHost ftp://127.0.0.2", "the scheme must be http or https"},
		{"OffloadHost 127.0.0.2 0", "must be a whole number from 1 to 100"},
		{"OffloadHost 127.0.0.2/x", "want [scheme://]host[:port]"},
		{"OffloadPick random", "OffloadPick: 'random': want hash or time"},
		{"OffloadExcludeAddress 10.0.0.0/99", "is not an address/prefix"},
		{"OffloadEngine maybe", "OffloadEngine"},
	}
	for _, tc := range tests {
		out, ok := a.configTest(t, so, tc.conf)
		if ok || !strings.Contains(out, tc.want) {
			t.Errorf("%q: configtest ok=%v, output %q lacks %q", tc.conf, ok, out, tc.want)
		}
	}
	if out, ok := a.configTest(t, so, "OffloadEngine On\nOffloadHost https://127.0.0.2:8443 3\nOffloadPick time\nOffloadMinSize 0"); !ok {
		t.Errorf("good config rejected: %s", out)
	}
}

// TestThroughApacheToOffload is the system as users deploy it: Apache with mod_offload as
// the base, two `offload serve` hosts, clients following the redirect with curl -L.
func TestThroughApacheToOffload(t *testing.T) {
	need(t, "curl")
	so := buildModule(t)
	bin := filepath.Join(t.TempDir(), "offload")
	if out, err := exec.Command("go", "build", "-o", bin, "../..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	a := newApache(t)
	type offloadHost struct {
		addr, admin, cache string
		log                string // the daemon's stderr
	}
	var ohs []offloadHost
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		oh := offloadHost{addr: fmt.Sprintf("%s:%d", ip, freePort(t)), admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), cache: t.TempDir()}
		cmd := exec.Command(bin, "serve", "--base", a.url, "--listen", oh.addr, "--admin", oh.admin, "--cache", oh.cache)
		oh.log = filepath.Join(t.TempDir(), "stderr")
		f, err := os.Create(oh.log)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close() // the child has its own copy
		cmd.Stderr = f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		ohs = append(ohs, oh)
	}
	files := map[string][]byte{}
	for i := range 6 {
		data := make([]byte, 1<<20+i*4099)
		rand.Read(data)
		name := fmt.Sprintf("/pub/file-%d.bin", i)
		files[name] = data
		a.write(t, name, data)
	}
	a.start(t, so, fmt.Sprintf("OffloadEngine On\nOffloadHost %s\nOffloadHost %s\n", ohs[0].addr, ohs[1].addr))
	for _, oh := range ohs {
		waitListening(t, oh.addr)
	}
	hs := hosts(ohs[0].addr, ohs[1].addr)
	wantGets := []int{0, 0}
	for name, data := range files {
		for range 2 {
			out := filepath.Join(t.TempDir(), "out")
			cmd := exec.Command("curl", "-sS", "-f", "-L", "-o", out, "-w", "%{url_effective}", a.url+name)
			eff, err := cmd.Output()
			if err != nil {
				t.Fatalf("curl -L %s: %v", name, err)
			}
			got, _ := os.ReadFile(out)
			if sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("%s: bytes differ", name)
			}
			pick := redirect.PickHash(hs, nil, name)
			if string(eff) != "http://"+ohs[pick].addr+name {
				t.Errorf("%s ended at %s, want the hash's host %s", name, eff, ohs[pick].addr)
			}
		}
		wantGets[redirect.PickHash(hs, nil, name)]++
	}
	for i, oh := range ohs {
		if got := metric(t, oh.admin, "offload_upstream_gets_total"); got != wantGets[i] {
			t.Errorf("offload host %s sent %d GETs to the base, want %d (one per file it owns); its log:\n%s\nmetrics:\n%s", oh.addr, got, wantGets[i], readFile(oh.log), offloadMetrics(t, oh.admin))
		}
	}
	// A file changed on the base is served fresh on the next request.
	name := "/pub/file-0.bin"
	fresh := make([]byte, 777777)
	rand.Read(fresh)
	a.write(t, name, fresh)
	out := filepath.Join(t.TempDir(), "out")
	if err := exec.Command("curl", "-sS", "-f", "-L", "-o", out, a.url+name).Run(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, fresh) {
		t.Errorf("changed file not served fresh (%d bytes)", len(got))
	}
	// Apache's ETag for a file changed within the last second is weak (W/"..."), and the
	// same tag strong after that: the copy filled in that second is still the file.
	oh := ohs[redirect.PickHash(hs, nil, name)]
	gets := metric(t, oh.admin, "offload_upstream_gets_total")
	time.Sleep(1100 * time.Millisecond)
	if err := exec.Command("curl", "-sS", "-f", "-L", "-o", out, a.url+name).Run(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, fresh) {
		t.Errorf("changed file, a second later: %d bytes", len(got))
	}
	if got := metric(t, oh.admin, "offload_upstream_gets_total"); got != gets {
		t.Errorf("the file filled in its first second was fetched again a second later (%d GETs, then %d)", gets, got)
	}
}

// offloadMetrics is the offload_ lines of a daemon's /metrics.
func offloadMetrics(t *testing.T, admin string) string {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var lines []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "offload_") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listened", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metric(t *testing.T, admin, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+admin+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\d+)`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in metrics", name)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
