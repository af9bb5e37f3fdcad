package apachetest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// getBody is get returning the body too.
func getBody(t *testing.T, url, from string, hdr ...string) (*http.Response, string) {
	t.Helper()
	client := clientFrom(from)
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// rawRequest sends one request exactly as written and returns the response head.
func rawRequest(t *testing.T, addr, request string) *http.Response {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", request, err)
	}
	resp.Body.Close()
	return resp
}

// TestStaticFileDecision: a file is offloaded exactly when httpd's default handler would
// serve it as it is (issue 11, items 2-7), and OffloadMinSize is inclusive.
func TestStaticFileDecision(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	a.mods = []string{"cgi", "autoindex", "alias", "dir", "negotiation"}
	big := bytes.Repeat([]byte("b"), 10000)
	for _, f := range []string{"disk.img", "disk.qcow2", "vm.vmdk", "installer.run", "noextension", "notes.txt", "data.thing", "big.iso"} {
		a.write(t, f, big)
	}
	script := "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho script-output\n#" + strings.Repeat("x", 8000) + "\n"
	a.write(t, "cgi/run.xcgi", []byte(script))
	os.Chmod(filepath.Join(a.docroot, "cgi", "run.xcgi"), 0o755)
	a.write(t, "errors/404.html", []byte("<html>custom-not-found "+strings.Repeat("n", 8000)+"</html>"))
	a.write(t, "listing/HEADER.html", []byte("<p>header-marker "+strings.Repeat("h", 8000)+"</p>"))
	a.write(t, "listing/README.html", []byte("<p>readme-marker "+strings.Repeat("r", 8000)+"</p>"))
	a.write(t, "listing/file.bin", big)
	a.write(t, "min/exact.bin", make([]byte, 6000))
	a.write(t, "indexed/index.html", []byte("<p>index-marker "+strings.Repeat("i", 8000)+"</p>"))
	a.write(t, "multi/guide.en.html", []byte("<p>english-marker "+strings.Repeat("e", 8000)+"</p>"))
	a.write(t, "multi/guide.de.html", []byte("<p>german-marker "+strings.Repeat("g", 8000)+"</p>"))
	a.write(t, "min/under.bin", make([]byte, 5999))
	a.start(t, so, fmt.Sprintf(`OffloadEngine On
OffloadHost 127.0.0.2:8081
OffloadDebug On
AddCharset UTF-8 .txt
AddType "application/x-thing; x=1" .thing
ErrorDocument 404 /errors/404.html
<Directory "%[1]s/cgi">
  Options +ExecCGI
  AddType application/x-httpd-cgi .xcgi
</Directory>
<Directory "%[1]s/listing">
  Options +Indexes
  HeaderName HEADER.html
  ReadmeName README.html
</Directory>
<Directory "%[1]s/min">
  OffloadMinSize 6000
</Directory>
DirectoryIndex index.html
<Directory "%[1]s/multi">
  Options +MultiViews
  AddLanguage en .en
  AddLanguage de .de
</Directory>
`, a.docroot))
	offloaded := func(p string) string { return "http://127.0.0.2:8081" + p }

	// Items 2, 3 and the boundary: 307 to the offload host, with Cache-Control (item 7).
	for _, p := range []string{"/disk.img", "/disk.qcow2", "/vm.vmdk", "/installer.run", "/noextension", "/notes.txt", "/data.thing", "/min/exact.bin"} {
		resp, _ := getBody(t, a.url+p, "")
		if resp.StatusCode != 307 || resp.Header.Get("Location") != offloaded(p) {
			t.Errorf("GET %s: %d %q, want 307 to %s", p, resp.StatusCode, resp.Header.Get("Location"), offloaded(p))
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("GET %s: Cache-Control %q, want no-store", p, cc)
		}
	}
	if resp, _ := getBody(t, a.url+"/min/under.bin", ""); resp.StatusCode != 200 {
		t.Errorf("a file one byte under OffloadMinSize: %d, want 200 from Apache", resp.StatusCode)
	}
	// Item 4: a script behind a "magic" MIME type runs here.
	if resp, body := getBody(t, a.url+"/cgi/run.xcgi", ""); resp.StatusCode != 200 || !strings.Contains(body, "script-output") {
		t.Errorf("magic-type CGI: %d %q (Location %q), want the script's output", resp.StatusCode, trim(body), resp.Header.Get("Location"))
	}
	// Item 5: an ErrorDocument and autoindex's HEADER/README are part of this response.
	if resp, body := getBody(t, a.url+"/nothing-here.iso", ""); resp.StatusCode != 404 || !strings.Contains(body, "custom-not-found") {
		t.Errorf("ErrorDocument: %d %q, want 404 with the custom page", resp.StatusCode, trim(body))
	}
	if resp, body := getBody(t, a.url+"/listing/", ""); resp.StatusCode != 200 || !strings.Contains(body, "header-marker") || !strings.Contains(body, "readme-marker") {
		t.Errorf("autoindex: %d, HEADER shown %v, README shown %v", resp.StatusCode, strings.Contains(body, "header-marker"), strings.Contains(body, "readme-marker"))
	}
	// The files themselves, asked for directly, are offloaded.
	if resp, _ := getBody(t, a.url+"/listing/HEADER.html", ""); resp.StatusCode != 307 {
		t.Errorf("HEADER.html asked for directly: %d, want 307", resp.StatusCode)
	}
	// A file httpd picked for the path (DirectoryIndex, MultiViews) stays here: the
	// offload server, asking for the path, could get another one.
	if resp, body := getBody(t, a.url+"/indexed/", ""); resp.StatusCode != 200 || !strings.Contains(body, "index-marker") {
		t.Errorf("DirectoryIndex: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, body := getBody(t, a.url+"/multi/guide", "", "Accept-Language", "de"); resp.StatusCode != 200 || !strings.Contains(body, "german-marker") {
		t.Errorf("MultiViews: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, p := range []string{"/indexed/index.html", "/multi/guide.de.html"} {
		if resp, _ := getBody(t, a.url+p, ""); resp.StatusCode != 307 {
			t.Errorf("GET %s: %d, want 307", p, resp.StatusCode)
		}
	}
	// Item 6: an absolute-form request target gives a Location of the path only.
	hostport := strings.TrimPrefix(a.url, "http://")
	for _, target := range []string{a.url + "/big.iso", "HTTP://" + hostport + "/big.iso"} {
		resp := rawRequest(t, hostport, "GET "+target+" HTTP/1.1\r\nHost: "+hostport+"\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 307 || resp.Header.Get("Location") != offloaded("/big.iso") {
			t.Errorf("GET %s: %d %q, want 307 to %s", target, resp.StatusCode, resp.Header.Get("Location"), offloaded("/big.iso"))
		}
	}
	// The client's escaping is kept.
	a.write(t, "sp ace.iso", big)
	resp := rawRequest(t, hostport, "GET "+a.url+"/sp%20ace.iso HTTP/1.1\r\nHost: "+hostport+"\r\nConnection: close\r\n\r\n")
	if resp.Header.Get("Location") != offloaded("/sp%20ace.iso") {
		t.Errorf("escaped absolute-form: Location %q", resp.Header.Get("Location"))
	}
}

func trim(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}
