package answer

import (
	"errors"
	"fmt"
	"testing"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/proto"
)

func parse(t *testing.T, raw string) *proto.Request {
	t.Helper()
	var r proto.Request
	if _, err := r.Parse([]byte(raw)); err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	return &r
}

func TestBefore(t *testing.T) {
	tests := []struct {
		raw    string
		ok     bool
		status int
		allow  string
	}{
		{"GET /a.bin HTTP/1.1\r\nHost: x\r\n\r\n", false, 0, ""},
		{"HEAD /a.bin HTTP/1.1\r\nHost: x\r\n\r\n", false, 0, ""},
		{"DELETE /a.bin HTTP/1.1\r\nHost: x\r\n\r\n", true, 405, "GET, HEAD"},
		{"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n", true, 200, ""},
		{"GET /a.bin? HTTP/1.1\r\nHost: x\r\n\r\n", true, 403, ""},
		{"GET /a.bin?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", true, 403, ""},
	}
	for _, tc := range tests {
		p, ok := Before(parse(t, tc.raw))
		if ok != tc.ok || ok && (p.Head.Status != tc.status || p.Head.Allow != tc.allow) {
			t.Errorf("%q: ok %v status %d allow %q, want %v %d %q", tc.raw, ok, p.Head.Status, p.Head.Allow, tc.ok, tc.status, tc.allow)
		}
		if ok && p.Head.ContentLength != int64(len(p.Body)) {
			t.Errorf("%q: Content-Length %d, body %d bytes", tc.raw, p.Head.ContentLength, len(p.Body))
		}
	}
}

func TestFailed(t *testing.T) {
	var logged []string
	logf := func(f string, args ...any) { logged = append(logged, fmt.Sprintf(f, args...)) }
	p := Failed([]byte("/x"), &cache.Error{Status: 404, Reason: "not found on the base"}, logf)
	if p.Head.Status != 404 || string(p.Body) != "not found on the base\n" || len(logged) != 0 {
		t.Errorf("base's 404: %d %q, logged %q", p.Head.Status, p.Body, logged)
	}
	p = Failed([]byte("/x"), fmt.Errorf("wrapped: %w", &cache.Error{Status: 302, Location: "http://elsewhere/x"}), logf)
	if p.Head.Status != 302 || p.Head.Location != "http://elsewhere/x" || len(p.Body) != 0 {
		t.Errorf("base's redirect: %+v", p)
	}
	p = Failed([]byte("/x"), errors.New("connection refused"), logf)
	if p.Head.Status != 502 || len(logged) != 1 {
		t.Errorf("base down: %d, logged %q", p.Head.Status, logged)
	}
}

func TestWantRange(t *testing.T) {
	tests := []struct {
		hdr       string
		from, end int64
	}{
		{"", 0, 0},
		{"Range: bytes=100-\r\n", 100, 0},
		{"Range: bytes=100-199\r\n", 100, 200},
		{"Range: bytes=-5\r\n", 0, 0},                      // a suffix: its start needs the size
		{"Range: bytes=0-1,5-9\r\n", 0, 0},                 // several ranges: the whole file
		{"Range: bytes=100-\r\nIf-Range: \"v\"\r\n", 0, 0}, // may become a 200
		{"Range: items=1-2\r\n", 0, 0},                     // not bytes
	}
	for _, tc := range tests {
		from, end := WantRange(parse(t, "GET /a HTTP/1.1\r\nHost: x\r\n"+tc.hdr+"\r\n"))
		if from != tc.from || end != tc.end {
			t.Errorf("%q: [%d, %d), want [%d, %d)", tc.hdr, from, end, tc.from, tc.end)
		}
	}
}
