package apachetest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	offloadOnce sync.Once
	offloadBin  string
	offloadErr  error
)

// buildOffload builds the offload command once for the package's tests (or takes the
// one $OFFLOAD_TEST_BIN names).
func buildOffload(t *testing.T) string {
	t.Helper()
	offloadOnce.Do(func() {
		if offloadBin = os.Getenv("OFFLOAD_TEST_BIN"); offloadBin != "" {
			return
		}
		dir, err := os.MkdirTemp("", "offload-bin-")
		if err != nil {
			offloadErr = err
			return
		}
		offloadBin = filepath.Join(dir, "offload")
		if out, err := exec.Command("go", "build", "-o", offloadBin, "../..").CombinedOutput(); err != nil {
			offloadErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if offloadErr != nil {
		t.Fatal(offloadErr)
	}
	return offloadBin
}

// offloadServer is a running `offload serve`.
type offloadServer struct {
	addr string   // its public listener
	args []string // for a restart
	cmd  *exec.Cmd
	log  *bytes.Buffer
}

func startOffload(t *testing.T, addr, base string, extra ...string) *offloadServer {
	t.Helper()
	o := &offloadServer{addr: addr, args: append([]string{"serve", "--base", base, "--listen", addr,
		"--admin", "", "--cache", t.TempDir()}, extra...)}
	o.start(t)
	t.Cleanup(o.stop)
	return o
}

func (o *offloadServer) start(t *testing.T) {
	t.Helper()
	o.log = &bytes.Buffer{}
	o.cmd = exec.Command(buildOffload(t), o.args...)
	o.cmd.Stderr = o.log
	if err := o.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitListening(t, o.addr)
}

func (o *offloadServer) stop() {
	if o.cmd != nil && o.cmd.ProcessState == nil {
		o.cmd.Process.Kill()
		o.cmd.Wait()
	}
}

// vhost is a name-based virtual host on the test Apache's address.
func (a *apache) vhost(name, root, inner string) string {
	return fmt.Sprintf(`<VirtualHost 127.0.0.1:%d>
  ServerName %s
  DocumentRoot "%s"
%s
</VirtualHost>
`, a.port, name, root, inner)
}

// followFrom GETs url from a local address with Host set, following redirects, and
// returns the last response's status and body and where it ended.
func followFrom(t *testing.T, url, from, host string) (int, []byte, string) {
	t.Helper()
	dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	client := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}, Timeout: 20 * time.Second}
	req, _ := http.NewRequest("GET", url, nil)
	if host != "" {
		req.Host = host
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	return resp.StatusCode, body.Bytes(), resp.Request.URL.String()
}

// TestVirtualHosts: an offload host serves the virtual host whose configuration names it,
// and a wrong --base is refused instead of serving another site's file (item 8).
func TestVirtualHosts(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	rootA, rootB := filepath.Join(a.dir, "a"), filepath.Join(a.dir, "b")
	fileA, fileB := bytes.Repeat([]byte("A"), 20000), bytes.Repeat([]byte("B"), 20000)
	for _, p := range []string{"pub/f.bin", "wrong/f.bin", "hta/f.bin"} {
		for root, data := range map[string][]byte{rootA: fileA, rootB: fileB} {
			os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
			os.WriteFile(filepath.Join(root, p), data, 0o644)
		}
	}
	os.WriteFile(filepath.Join(rootA, "hta", ".htaccess"), []byte("<IfModule offload_module>\n  OffloadHost 127.0.0.9:9\n</IfModule>\n"), 0o644)
	dirs := fmt.Sprintf("<Directory %q>\nRequire all granted\nAllowOverride Options\n</Directory>\n<Directory %q>\nRequire all granted\n</Directory>\n", rootA, rootB)

	// Directives outside the virtual hosts (the old README's mods-available/offload.conf)
	// offload neither site, and configtest says why.
	out, ok := a.configTest(t, so, dirs+"OffloadEngine On\nOffloadHost 127.0.0.2:8081\n"+a.vhost("a.test", rootA, "")+a.vhost("b.test", rootB, ""))
	if !ok || !strings.Contains(out, "inherits OffloadHost 127.0.0.2:8081 from the main server config and is not offloaded") {
		t.Errorf("server-wide directives with virtual hosts: ok=%v %q", ok, out)
	}
	// One offload host named by two virtual hosts: refused.
	on := "OffloadEngine On\nOffloadHost 127.0.0.2:8081\n"
	out, ok = a.configTest(t, so, dirs+a.vhost("a.test", rootA, on)+a.vhost("b.test", rootB, on))
	if ok || !strings.Contains(out, "OffloadHost 127.0.0.2:8081 is named in both <VirtualHost>") || !strings.Contains(out, "a.test (") || !strings.Contains(out, "b.test (") {
		t.Errorf("one offload host in two virtual hosts: ok=%v %q", ok, out)
	}

	// A site's two virtual hosts (as for http and https: one ServerName, one DocumentRoot)
	// may share offload hosts; one name with another DocumentRoot is another site.
	port2 := freePort(t)
	twin := func(root string) string {
		return fmt.Sprintf("Listen 127.0.0.1:%d\n<VirtualHost 127.0.0.1:%d>\n  ServerName a.test\n  DocumentRoot %q\n%s</VirtualHost>\n", port2, port2, root, on)
	}
	if out, ok := a.configTest(t, so, dirs+a.vhost("a.test", rootA, on)+twin(rootA)); !ok || strings.Contains(out, "offload:") {
		t.Errorf("a site's two virtual hosts sharing offload hosts: ok=%v %q", ok, out)
	}
	if out, ok := a.configTest(t, so, dirs+a.vhost("a.test", rootA, on)+twin(rootB)); ok || !strings.Contains(out, "is named in both") {
		t.Errorf("one name, two DocumentRoots, one offload host: ok=%v %q", ok, out)
	}
	// A virtual host without a name of its own, on the main server's DocumentRoot (Debian's
	// 000-default), is the main server's site: server-wide directives offload it.
	a.write(t, "big.iso", fileA)
	if out, ok := a.configTest(t, so, dirs+"OffloadEngine On\nOffloadHost 127.0.0.2:8081\n"+fmt.Sprintf("<VirtualHost *:%d>\n  DocumentRoot %q\n</VirtualHost>\n", a.port, a.docroot)+a.vhost("b.test", rootB, "")); !ok || !strings.Contains(out, "b.test") || strings.Count(out, "inherits OffloadHost") != 1 {
		t.Errorf("default vhost and b.test under server-wide directives: ok=%v %q", ok, out)
	}
	d := newApache(t)
	d.write(t, "pub/f.bin", fileA)
	d.start(t, so, dirs+"OffloadEngine On\nOffloadHost 127.0.0.2:8081\n"+fmt.Sprintf("<VirtualHost *:%d>\n  DocumentRoot %q\n</VirtualHost>\n<VirtualHost *:%d>\n  ServerName b.test\n  DocumentRoot %q\n</VirtualHost>\n", d.port, d.docroot, d.port, rootB))
	if resp, _ := getBody(t, d.url+"/pub/f.bin", "127.0.0.20", "Host", "www.example.org"); resp.StatusCode != 307 {
		t.Errorf("the default site under server-wide directives: %d, want 307", resp.StatusCode)
	}
	if resp, _ := getBody(t, d.url+"/pub/f.bin", "127.0.0.20", "Host", "b.test"); resp.StatusCode != 200 {
		t.Errorf("b.test under server-wide directives: %d, want 200 (not offloaded)", resp.StatusCode)
	}

	// Running: a.test offloads /pub to an offload server whose --base is a.test, and
	// /wrong to one whose --base is b.test (the mistake). Both listen on 127.0.0.1, so
	// their requests come from an OffloadHost's address.
	base := func(name string) string { return fmt.Sprintf("http://%s:%d", name, a.port) }
	right := startOffload(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), base("a.test"), "--base-addr", fmt.Sprintf("127.0.0.1:%d", a.port))
	wrong := startOffload(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), base("b.test"), "--base-addr", fmt.Sprintf("127.0.0.1:%d", a.port))
	a.start(t, so, dirs+a.vhost("a.test", rootA, fmt.Sprintf(`  OffloadEngine On
  OffloadHost %s
  <Directory %q>
    OffloadHost %s
  </Directory>`, right.addr, filepath.Join(rootA, "wrong"), wrong.addr))+
		a.vhost("b.test", rootB, ""))
	status, body, at := followFrom(t, a.url+"/pub/f.bin", "127.0.0.20", "a.test")
	if status != 200 || !bytes.Equal(body, fileA) || !strings.Contains(at, right.addr) {
		t.Errorf("a.test/pub/f.bin through its offload host: %d, %d bytes, A's: %v, ended at %s", status, len(body), bytes.Equal(body, fileA), at)
	}
	status, body, at = followFrom(t, a.url+"/wrong/f.bin", "127.0.0.20", "a.test")
	if bytes.Equal(body, fileB) {
		t.Errorf("a.test/wrong/f.bin: got b.test's file through %s", at)
	}
	if status != 421 || !strings.Contains(at, wrong.addr) {
		t.Errorf("a.test/wrong/f.bin through the offload host with the wrong --base: %d (ended at %s), want 421", status, at)
	}
	// An .htaccess of a.test names a host of its own: bound to a.test, which reads it.
	if resp, _ := getBody(t, a.url+"/hta/f.bin", "127.0.0.20", "Host", "a.test"); resp.StatusCode != 307 || resp.Header.Get("Location") != "http://127.0.0.9:9/hta/f.bin" {
		t.Errorf("a.test/hta/f.bin with OffloadHost in .htaccess: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if status, body, _ := followFrom(t, a.url+"/pub/f.bin", "127.0.0.20", "b.test"); status != 200 || !bytes.Equal(body, fileB) {
		t.Errorf("b.test/pub/f.bin: %d, B's file %v", status, bytes.Equal(body, fileB))
	}
	log, _ := os.ReadFile(filepath.Join(a.dir, "error.log"))
	if !strings.Contains(string(log), "that offload server's --base must name the site it offloads for") {
		t.Errorf("the refused request was not logged:\n%s", log)
	}
}
