package proto

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		path      string
		rawPath   string
		query     string
		hasQuery  bool
		keepAlive bool
		host      string
	}{
		{"simple", "GET /a/b.iso HTTP/1.1\r\nHost: x\r\n\r\n", "/a/b.iso", "/a/b.iso", "", false, true, "x"},
		{"http10 closes", "GET / HTTP/1.0\r\n\r\n", "/", "/", "", false, false, ""},
		{"http10 keep-alive honoured", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "/", "/", "", false, true, ""},
		{"http10 keep-alive then close closes", "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", "/", "/", "", false, false, ""},
		{"http11 close token in a list", "GET / HTTP/1.1\r\nHost: a\r\nConnection: TE, Close\r\n\r\n", "/", "/", "", false, false, "a"},
		{"connection close", "GET /x HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n", "/x", "/x", "", false, false, "h"},
		{"bare LF", "GET /x HTTP/1.1\nHost: h\n\n", "/x", "/x", "", false, true, "h"},
		{"query", "GET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\n", "/x", "/x", "a=1", true, true, "h"},
		{"empty query", "GET /x? HTTP/1.1\r\nHost: h\r\n\r\n", "/x", "/x", "", true, true, "h"},
		{"escaped", "GET /a%20b/%C3%A9+c HTTP/1.1\r\nHost: h\r\n\r\n", "/a b/é+c", "/a%20b/%C3%A9+c", "", false, true, "h"},
		{"dot segments", "GET /a/./b/../c//d HTTP/1.1\r\nHost: h\r\n\r\n", "/a/c/d", "/a/./b/../c//d", "", false, true, "h"},
		{"trailing slash", "GET /dir/ HTTP/1.1\r\nHost: h\r\n\r\n", "/dir/", "/dir/", "", false, true, "h"},
		{"dotdot to root", "GET /a/.. HTTP/1.1\r\nHost: h\r\n\r\n", "/", "/a/..", "", false, true, "h"},
		{"absolute form", "GET http://example.org/pub/f?x HTTP/1.1\r\nHost: h\r\n\r\n", "/pub/f", "/pub/f", "x", true, true, "h"},
		{"absolute form root", "GET HTTP://example.org HTTP/1.1\r\nHost: h\r\n\r\n", "/", "/", "", false, true, "h"},
		{"leading CRLF", "\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n", "/x", "/x", "", false, true, "h"},
		{"header whitespace", "GET /x HTTP/1.1\r\nHost:   h \t\r\n\r\n", "/x", "/x", "", false, true, "h"},
		{"zero length body ok", "GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", "/x", "/x", "", false, true, "h"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			n, err := r.Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if n != len(tc.in) {
				t.Errorf("used %d bytes, want %d", n, len(tc.in))
			}
			if string(r.Path) != tc.path || string(r.RawPath) != tc.rawPath || string(r.Query) != tc.query ||
				r.HasQuery != tc.hasQuery || r.KeepAlive != tc.keepAlive || string(r.Host) != tc.host {
				t.Errorf("got path %q raw %q query %q/%v keepalive %v host %q", r.Path, r.RawPath, r.Query, r.HasQuery, r.KeepAlive, r.Host)
			}
		})
	}
}

func TestParseHeaders(t *testing.T) {
	in := "GET /f HTTP/1.1\r\nhOsT: h\r\nRANGE: bytes=0-1\r\nIf-Range: \"e\"\r\nIf-None-Match: W/\"x\"\r\n" +
		"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\nUser-Agent: curl/8\r\nReferer: http://r/\r\n" +
		"X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nIf-Match: *\r\nIf-Unmodified-Since: x\r\n\r\n"
	var r Request
	if _, err := r.Parse([]byte(in)); err != nil {
		t.Fatal(err)
	}
	got := []string{string(r.Host), string(r.Range), string(r.IfRange), string(r.IfNoneMatch), string(r.IfModifiedSince),
		string(r.UserAgent), string(r.Referer), string(r.XForwardedFor), string(r.IfMatch), string(r.IfUnmodifiedSince)}
	want := []string{"h", "bytes=0-1", `"e"`, `W/"x"`, "Sun, 06 Nov 1994 08:49:37 GMT", "curl/8", "http://r/", "10.0.0.1, 10.0.0.2", "*", "x"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("field %d: got %q want %q", i, got[i], want[i])
		}
	}
}

// BadRequests maps malformed requests to the status the parser must choose. The list
// lives in testdata/malformed.json so the server's tests send the same requests.
var BadRequests = func() (list []struct {
	Name   string
	In     string
	Status int
}) {
	data, err := os.ReadFile("testdata/malformed.json")
	if err == nil {
		err = json.Unmarshal(data, &list)
	}
	if err != nil || len(list) < 40 {
		panic(fmt.Sprintf("testdata/malformed.json: %v (%d cases)", err, len(list)))
	}
	return list
}()

func TestParseErrors(t *testing.T) {
	for _, tc := range BadRequests {
		t.Run(tc.Name, func(t *testing.T) {
			var r Request
			_, err := r.Parse([]byte(tc.In))
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("Parse = %v, want status %d", err, tc.Status)
			}
			if pe.Status != tc.Status {
				t.Errorf("status %d (%s), want %d", pe.Status, pe.Reason, tc.Status)
			}
		})
	}
}

func TestParseIncremental(t *testing.T) {
	in := "GET /one HTTP/1.1\r\nHost: h\r\nRange: bytes=1-2\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n"
	var r Request
	// Every strict prefix of the first request needs more.
	first := strings.Index(in, "GET /two")
	for i := 0; i < first; i++ {
		if _, err := r.Parse([]byte(in[:i])); err != ErrNeedMore {
			t.Fatalf("prefix %d: got %v, want ErrNeedMore", i, err)
		}
	}
	buf := []byte(in)
	n, err := r.Parse(buf)
	if err != nil || n != first || string(r.Path) != "/one" {
		t.Fatalf("first: n=%d err=%v path=%q", n, err, r.Path)
	}
	n2, err := r.Parse(buf[n:])
	if err != nil || n+n2 != len(in) || string(r.Path) != "/two" || r.Range != nil {
		t.Fatalf("second: n=%d err=%v path=%q range=%q", n2, err, r.Path, r.Range)
	}
}

const browserGET = "GET /pub/linux/distributions/debian-12.5.0-amd64-netinst.iso HTTP/1.1\r\n" +
	"Host: offload1.example.org\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0\r\n" +
	"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n" +
	"Accept-Language: en-US,en;q=0.5\r\n" +
	"Accept-Encoding: gzip, deflate, br\r\n" +
	"Referer: http://www.example.org/pub/linux/distributions/\r\n" +
	"Connection: keep-alive\r\n" +
	"Upgrade-Insecure-Requests: 1\r\n" +
	"Sec-Fetch-Dest: document\r\n" +
	"If-None-Match: \"5f3a-61b2c3d4e5f60\"\r\n\r\n"

func TestParseNoAllocs(t *testing.T) {
	var r Request
	buf := []byte(browserGET)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := r.Parse(buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Parse allocates %.1f times per request, want 0", allocs)
	}
}

func BenchmarkParse(b *testing.B) {
	var r Request
	buf := []byte(browserGET)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Parse(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNetHTTPReadRequest is the peer: net/http parsing the same bytes.
func BenchmarkNetHTTPReadRequest(b *testing.B) {
	buf := []byte(browserGET)
	rd := bytes.NewReader(buf)
	br := bufio.NewReader(rd)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(buf)
		br.Reset(rd)
		if _, err := http.ReadRequest(br); err != nil {
			b.Fatal(err)
		}
	}
}
