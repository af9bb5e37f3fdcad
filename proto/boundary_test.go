package proto

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of the values exactly at a limit and one past it, and of the second variant of
// each case the main tests cover (weak and strong, equal and one second later, 304 and 412).

// withHeaderBlock is a request whose header lines (each with its CRLF, Host included, the
// blank line that ends the head not) take exactly n bytes.
func withHeaderBlock(t *testing.T, n int) string {
	t.Helper()
	const line = "GET /f HTTP/1.1\r\n"
	host := "Host: h\r\n"
	const prefix, suffix = "X-Pad: ", "\r\n"
	pad := n - len(host) - len(prefix) - len(suffix)
	if pad < 0 {
		t.Fatalf("header block of %d bytes is too small", n)
	}
	return line + host + prefix + strings.Repeat("a", pad) + suffix + "\r\n"
}

// withRequestLine is a request whose request line, without its CRLF, is n bytes.
func withRequestLine(t *testing.T, n int) string {
	t.Helper()
	const start, end = "GET /", " HTTP/1.1"
	pad := n - len(start) - len(end)
	if pad < 0 {
		t.Fatalf("request line of %d bytes is too small", n)
	}
	return start + strings.Repeat("a", pad) + end + "\r\nHost: h\r\n\r\n"
}

func TestParseLimitsExactlyAtAndOneOver(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		status int // 0: parses
	}{
		{"header block at the limit", withHeaderBlock(t, MaxHeaderBytes), 0},
		{"header block one over", withHeaderBlock(t, MaxHeaderBytes+1), 431},
		{"header block one under", withHeaderBlock(t, MaxHeaderBytes-1), 0},
		{"request line at the limit", withRequestLine(t, MaxRequestLine), 0},
		{"request line one over", withRequestLine(t, MaxRequestLine+1), 414},
		{"request line one under", withRequestLine(t, MaxRequestLine-1), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			n, err := r.Parse([]byte(tc.in))
			if tc.status == 0 {
				if err != nil || n != len(tc.in) {
					t.Fatalf("Parse = %d, %v; want all %d bytes parsed", n, err, len(tc.in))
				}
				return
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Status != tc.status {
				t.Fatalf("Parse = %v, want %d", err, tc.status)
			}
		})
	}
}

// TestParseLimitsIncremental: a head exactly at a limit that arrives a byte at a time
// needs more data at every prefix (never 414/431 because the CR of its last line came
// before the LF); one byte over is refused as soon as the limit is passed, before the
// rest arrives.
func TestParseLimitsIncremental(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
	}{
		{"header block at the limit", withHeaderBlock(t, MaxHeaderBytes)},
		{"request line at the limit", withRequestLine(t, MaxRequestLine)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			buf := []byte(tc.in)
			for i := len(buf) - 40; i < len(buf); i++ {
				if _, err := r.Parse(buf[:i]); err != ErrNeedMore {
					t.Fatalf("prefix of %d of %d bytes (ends %q): %v, want ErrNeedMore", i, len(buf), buf[max(i-3, 0):i], err)
				}
			}
			if n, err := r.Parse(buf); err != nil || n != len(buf) {
				t.Fatalf("whole: %d, %v", n, err)
			}
		})
	}
	// Unterminated heads: past the limit (and the one CR that may still be waiting for
	// its LF) they are refused before the rest arrives.
	for _, tc := range []struct {
		name   string
		in     string
		status int
	}{
		{"header block unterminated", "GET / HTTP/1.1\r\nHost: h\r\nX: " + strings.Repeat("a", MaxHeaderBytes+2-len("Host: h\r\nX: ")), 431},
		{"request line unterminated", "GET /" + strings.Repeat("a", MaxRequestLine+2-len("GET /")), 414},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			_, err := r.Parse([]byte(tc.in))
			var pe *Error
			if !errors.As(err, &pe) || pe.Status != tc.status {
				t.Fatalf("Parse = %v, want %d", err, tc.status)
			}
		})
	}
}

func TestParseTwins(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		status    int // 0: parses
		keepAlive bool
	}{
		{"1.1 keeps alive", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 0, true},
		{"1.1 close", "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 0, false},
		{"1.1 Close any case", "GET / HTTP/1.1\r\nHost: h\r\nConnection: CLOSE\r\n\r\n", 0, false},
		{"1.1 closed is not close", "GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", 0, true},
		{"1.1 keep-alive", "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", 0, true},
		{"1.0 closes", "GET / HTTP/1.0\r\n\r\n", 0, false},
		{"1.0 close", "GET / HTTP/1.0\r\nConnection: close\r\n\r\n", 0, false},
		{"1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 0, true},
		{"1.0 needs no Host", "GET / HTTP/1.0\r\n\r\n", 0, false},
		{"1.1 needs Host", "GET / HTTP/1.1\r\n\r\n", 400, false},
		{"length 0", "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", 0, true},
		{"length 1", "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx", 400, false},
		{"chunked", "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n", 400, false},
		{"gzip", "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501, false},
		{"GET with a body", "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab", 400, false},
		{"HEAD with a body", "HEAD / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab", 400, false},
		{"POST with a body", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab", 405, false},
		{"POST without a body", "POST / HTTP/1.1\r\nHost: h\r\n\r\n", 0, true},
		{"1.0 keep-alive, close", "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0, false},
		{"HEAD", "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", 0, true},
		{"64 leading blank lines", strings.Repeat("\n", 64) + "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 0, true},
		{"65 leading blank lines", strings.Repeat("\n", 65) + "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400, false},
		{"version 1.0 digit check", "GET / HTTP/1.a\r\n\r\n", 400, false},
		{"tab in a value", "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: a\tb\r\n\r\n", 0, true},
		{"DEL in a value", "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: a\x7fb\r\n\r\n", 400, false},
		{"US in a value", "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: a\x1fb\r\n\r\n", 400, false},
		{"obs-text in a value", "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: a\x80b\r\n\r\n", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			_, err := r.Parse([]byte(tc.in))
			if tc.status != 0 {
				var pe *Error
				if !errors.As(err, &pe) || pe.Status != tc.status {
					t.Fatalf("Parse = %v, want %d", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if r.KeepAlive != tc.keepAlive {
				t.Errorf("KeepAlive %v, want %v", r.KeepAlive, tc.keepAlive)
			}
		})
	}
	var r Request
	if _, err := r.Parse([]byte("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")); err != nil || !r.IsHead() || r.IsGet() {
		t.Errorf("HEAD: head %v get %v %v", r.IsHead(), r.IsGet(), err)
	}
	if _, err := r.Parse([]byte("GET / HTTP/1.1\r\nHost: h\r\n\r\n")); err != nil || r.IsHead() || !r.IsGet() {
		t.Errorf("GET: head %v get %v %v", r.IsHead(), r.IsGet(), err)
	}
}

// TestEvaluateTwins: each condition with its twin — weak and strong entity-tags, a date
// equal, one second later and one second earlier, 304 and 412 together, a sub-second
// modification time.
func TestEvaluateTwins(t *testing.T) {
	mod := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	date := func(d time.Duration) []byte { return []byte(mod.Add(d).Format(TimeFormat)) }
	rng := []byte("bytes=0-0")
	tests := []struct {
		name  string
		etag  string
		mod   time.Time
		req   Request
		want  int
		nRngs int
	}{
		// If-Range takes only a strong match (RFC 9110 13.1.5), so a weak tag never
		// keeps the Range, even one equal to the file's.
		{"if-range strong equal", `"v1"`, mod, Request{Range: rng, IfRange: []byte(`"v1"`)}, 206, 1},
		{"if-range weak equal to weak file tag", `W/"v1"`, mod, Request{Range: rng, IfRange: []byte(`W/"v1"`)}, 200, 0},
		{"if-range weak of strong file tag", `"v1"`, mod, Request{Range: rng, IfRange: []byte(`W/"v1"`)}, 200, 0},
		{"if-range strong of weak file tag", `W/"v1"`, mod, Request{Range: rng, IfRange: []byte(`"v1"`)}, 200, 0},
		{"if-range date equal", `"v1"`, mod, Request{Range: rng, IfRange: date(0)}, 206, 1},
		{"if-range date one second later", `"v1"`, mod, Request{Range: rng, IfRange: date(time.Second)}, 200, 0},
		{"if-range date one second earlier", `"v1"`, mod, Request{Range: rng, IfRange: date(-time.Second)}, 200, 0},
		{"if-range date, no modtime", `"v1"`, time.Time{}, Request{Range: rng, IfRange: date(0)}, 200, 0},
		{"if-range year 1, no modtime", `"v1"`, time.Time{}, Request{Range: rng, IfRange: []byte("Mon, 01 Jan 0001 00:00:00 GMT")}, 200, 0},
		{"if-range without range", `"v1"`, mod, Request{IfRange: []byte(`"v1"`)}, 200, 0},
		{"if-range multi strong", `"v1"`, mod, Request{Range: []byte("bytes=0-0,5-6"), IfRange: []byte(`"v1"`)}, 206, 2},
		{"if-range multi weak", `W/"v1"`, mod, Request{Range: []byte("bytes=0-0,5-6"), IfRange: []byte(`W/"v1"`)}, 200, 0},

		// If-None-Match compares weakly: both forms of the tag match either file tag.
		{"inm weak file weak tag", `W/"v1"`, mod, Request{IfNoneMatch: []byte(`W/"v1"`)}, 304, 0},
		{"inm weak file strong tag", `W/"v1"`, mod, Request{IfNoneMatch: []byte(`"v1"`)}, 304, 0},
		{"inm weak file other tag", `W/"v1"`, mod, Request{IfNoneMatch: []byte(`W/"v2"`)}, 200, 0},
		{"inm second in list", `"v1"`, mod, Request{IfNoneMatch: []byte(`"a",, W/"v1"`)}, 304, 0},
		{"inm malformed element ends the list", `"v1"`, mod, Request{IfNoneMatch: []byte(`abc, "v1"`)}, 200, 0},
		{"inm hit beats ims before", `"v1"`, mod, Request{IfNoneMatch: []byte(`"v1"`), IfModifiedSince: date(-time.Hour)}, 304, 0},
		{"inm ignores range", `"v1"`, mod, Request{IfNoneMatch: []byte(`"v1"`), Range: rng}, 304, 0},

		// If-Match compares strongly.
		{"if-match weak file", `W/"v1"`, mod, Request{IfMatch: []byte(`W/"v1"`)}, 412, 0},
		{"if-match second in list", `"v1"`, mod, Request{IfMatch: []byte(`"a", "v1"`)}, 200, 0},
		{"if-match star", `"v1"`, mod, Request{IfMatch: []byte(`*`)}, 200, 0},
		{"if-match hit ignores ius", `"v1"`, mod, Request{IfMatch: []byte(`"v1"`), IfUnmodifiedSince: date(-time.Hour)}, 200, 0},
		{"412 beats 304", `"v1"`, mod, Request{IfMatch: []byte(`"x"`), IfNoneMatch: []byte(`"v1"`)}, 412, 0},
		{"412 beats 206", `"v1"`, mod, Request{IfMatch: []byte(`"x"`), Range: rng}, 412, 0},
		{"if-match hit then 304", `"v1"`, mod, Request{IfMatch: []byte(`"v1"`), IfNoneMatch: []byte(`"v1"`)}, 304, 0},

		// Dates: equal, one second later, one second earlier.
		{"ims equal", `"v1"`, mod, Request{IfModifiedSince: date(0)}, 304, 0},
		{"ims one second later", `"v1"`, mod, Request{IfModifiedSince: date(time.Second)}, 304, 0},
		{"ims one second earlier", `"v1"`, mod, Request{IfModifiedSince: date(-time.Second)}, 200, 0},
		{"ims with range", `"v1"`, mod, Request{IfModifiedSince: date(-time.Second), Range: rng}, 206, 1},
		{"ims sub-second modtime", `"v1"`, mod.Add(500 * time.Millisecond), Request{IfModifiedSince: date(0)}, 304, 0},
		{"ims epoch modtime ignored", `"v1"`, time.Unix(0, 0), Request{IfModifiedSince: date(0)}, 200, 0},
		{"ims no modtime ignored", `"v1"`, time.Time{}, Request{IfModifiedSince: date(0)}, 200, 0},
		{"ius equal", `"v1"`, mod, Request{IfUnmodifiedSince: date(0)}, 200, 0},
		{"ius one second later", `"v1"`, mod, Request{IfUnmodifiedSince: date(time.Second)}, 200, 0},
		{"ius one second earlier", `"v1"`, mod, Request{IfUnmodifiedSince: date(-time.Second)}, 412, 0},
		{"ius sub-second modtime", `"v1"`, mod.Add(500 * time.Millisecond), Request{IfUnmodifiedSince: date(0)}, 200, 0},
		{"ius garbage ignored", `"v1"`, mod, Request{IfUnmodifiedSince: []byte("soon")}, 200, 0},

		// Ranges: as many as allowed and one more; a sum exactly the size and one over.
		{"64 ranges", `"v1"`, mod, Request{Range: nRanges(MaxRanges)}, 206, MaxRanges},
		{"65 ranges", `"v1"`, mod, Request{Range: nRanges(MaxRanges + 1)}, 416, 0},
		{"ranges summing to the size", `"v1"`, mod, Request{Range: []byte("bytes=0-49,50-99")}, 206, 2},
		{"ranges summing to one over", `"v1"`, mod, Request{Range: []byte("bytes=0-50,50-99")}, 200, 0},
		{"range of one byte at the end", `"v1"`, mod, Request{Range: []byte("bytes=99-99")}, 206, 1},
		{"range start at the size", `"v1"`, mod, Request{Range: []byte("bytes=100-100")}, 416, 0},
		{"suffix the size", `"v1"`, mod, Request{Range: []byte("bytes=-100")}, 206, 1},
		{"suffix one", `"v1"`, mod, Request{Range: []byte("bytes=-1")}, 206, 1},
		{"equal ends", `"v1"`, mod, Request{Range: []byte("bytes=5-5")}, 206, 1},
		{"end before start", `"v1"`, mod, Request{Range: []byte("bytes=5-4")}, 416, 0},
		{"18 digits", `"v1"`, mod, Request{Range: []byte("bytes=0-999999999999999999")}, 206, 1},
		{"19 digits", `"v1"`, mod, Request{Range: []byte("bytes=0-1000000000000000000")}, 416, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, ranges, _ := Evaluate(&tc.req, tc.etag, tc.mod, 100, nil)
			if status != tc.want || len(ranges) != tc.nRngs {
				t.Fatalf("status %d with %d ranges, want %d with %d", status, len(ranges), tc.want, tc.nRngs)
			}
			for _, r := range ranges {
				if r.Start < 0 || r.Length <= 0 || r.Start+r.Length > 100 {
					t.Fatalf("range %+v outside a 100-byte body", r)
				}
			}
		})
	}
}

// nRanges is a Range header of n one-byte ranges at 0, 1, ... n-1.
func nRanges(n int) []byte {
	b := []byte("bytes=")
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, '-')
		b = strconv.AppendInt(b, int64(i), 10)
	}
	return b
}

// TestEvaluateTwinsMatchServeContent asks net/http's ServeContent the same questions for
// a file with a strong and with a weak ETag, with dates at, a second before and a second
// after the modification time, and compares the status.
func TestEvaluateTwinsMatchServeContent(t *testing.T) {
	const size = 100
	body := bytes.Repeat([]byte("x"), size)
	mod := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	var dates []string
	for _, d := range []time.Duration{-time.Second, 0, time.Second} {
		dates = append(dates, mod.Add(d).Format(TimeFormat))
	}
	for _, etag := range []string{`"v1"`, `W/"v1"`} {
		tags := []string{`"v1"`, `W/"v1"`, `"v2"`, `*`, `"a", "v1"`, `W/"a", W/"v1"`}
		var headers [][2]string
		for _, tag := range tags {
			headers = append(headers, [2]string{"If-None-Match", tag}, [2]string{"If-Match", tag})
			if tag != "*" && !strings.Contains(tag, ",") {
				headers = append(headers, [2]string{"If-Range", tag})
			}
		}
		for _, d := range dates {
			headers = append(headers, [2]string{"If-Modified-Since", d}, [2]string{"If-Unmodified-Since", d}, [2]string{"If-Range", d})
		}
		for _, h := range headers {
			for _, rng := range []string{"", "bytes=0-9", "bytes=0-9,20-29"} {
				name := fmt.Sprintf("%s/%s: %s/%s", etag, h[0], h[1], rng)
				hr := httptest.NewRequest("GET", "/f", nil)
				hr.Header.Set(h[0], h[1])
				if rng != "" {
					hr.Header.Set("Range", rng)
				}
				rec := httptest.NewRecorder()
				rec.Header().Set("ETag", etag)
				http.ServeContent(rec, hr, "f.bin", mod, bytes.NewReader(body))
				req := Request{Range: []byte(rng)}
				switch h[0] {
				case "If-None-Match":
					req.IfNoneMatch = []byte(h[1])
				case "If-Match":
					req.IfMatch = []byte(h[1])
				case "If-Range":
					req.IfRange = []byte(h[1])
				case "If-Modified-Since":
					req.IfModifiedSince = []byte(h[1])
				case "If-Unmodified-Since":
					req.IfUnmodifiedSince = []byte(h[1])
				}
				status, _, _ := Evaluate(&req, etag, mod, size, nil)
				if status != rec.Code {
					t.Errorf("%s: status %d, net/http %d", name, status, rec.Code)
				}
			}
		}
	}
}

func TestMultipartLengthIsWhatIsWritten(t *testing.T) {
	const size = 1000
	for _, tc := range []struct {
		name   string
		ctype  string
		ranges []Range
	}{
		{"two parts", "application/octet-stream", []Range{{0, 10}, {500, 100}}},
		{"no type", "", []Range{{0, 1}, {999, 1}}},
		{"three parts", "text/plain", []Range{{0, 10}, {10, 10}, {990, 10}}},
		{"bad type left out", "a\r\nb", []Range{{0, 1}, {2, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b []byte
			for i, r := range tc.ranges {
				b = AppendPartHead(b, i, r, tc.ctype, size)
				b = append(b, make([]byte, r.Length)...)
			}
			b = AppendPartsEnd(b)
			if got := MultipartLength(tc.ranges, tc.ctype, size); got != int64(len(b)) {
				t.Errorf("MultipartLength %d, written %d", got, len(b))
			}
			if !bytes.HasPrefix(b, []byte("--"+Boundary+"\r\n")) || !bytes.HasSuffix(b, []byte("\r\n--"+Boundary+"--\r\n")) {
				t.Errorf("delimiters:\n%q", b)
			}
			if n := bytes.Count(b, []byte("\r\n--"+Boundary+"\r\n")); n != len(tc.ranges)-1 {
				t.Errorf("%d delimiters between parts, want %d", n, len(tc.ranges)-1)
			}
			if (tc.ctype != "" && ValidHeaderValue(tc.ctype)) != bytes.Contains(b, []byte("Content-Type: ")) {
				t.Errorf("Content-Type in parts: %q", b)
			}
		})
	}
}

func TestContentRangeBounds(t *testing.T) {
	for _, tc := range []struct {
		r    Range
		size int64
		want string
	}{
		{Range{0, 1}, 1, "bytes 0-0/1"},
		{Range{0, 10}, 10, "bytes 0-9/10"},
		{Range{9, 1}, 10, "bytes 9-9/10"},
		{Range{5, 3}, 10, "bytes 5-7/10"},
	} {
		if got := string(tc.r.ContentRange(nil, tc.size)); got != tc.want {
			t.Errorf("%+v of %d: %q, want %q", tc.r, tc.size, got, tc.want)
		}
	}
}

func TestHeadAppendTwins(t *testing.T) {
	tests := []struct {
		name    string
		head    Head
		want    []string
		wantNot []string
	}{
		{"keep-alive", Head{Status: 200, ContentLength: 1}, []string{"Connection: keep-alive\r\n", "Content-Length: 1\r\n"}, []string{"Connection: close"}},
		{"close", Head{Status: 200, ContentLength: 1, Close: true}, []string{"Connection: close\r\n"}, []string{"keep-alive"}},
		{"length zero written", Head{Status: 412, ContentLength: 0}, []string{"HTTP/1.1 412 Precondition Failed\r\n", "Content-Length: 0\r\n"}, nil},
		{"length unknown left out", Head{Status: 304, ContentLength: -1}, []string{"HTTP/1.1 304 Not Modified\r\n"}, []string{"Content-Length"}},
		{"no accept-ranges", Head{Status: 200, ContentLength: 0}, nil, []string{"Accept-Ranges"}},
		{"fields", Head{Status: 405, ContentLength: 0, Allow: "GET, HEAD", RetryAfter: "10", Location: "http://x/y",
			Warning: `110 - "Response is Stale"`, LastModified: "Wed, 01 May 2024 12:00:00 GMT", ETag: `W/"a b"`},
			[]string{"Allow: GET, HEAD\r\n", "Retry-After: 10\r\n", "Location: http://x/y\r\n", "Warning: 110 - \"Response is Stale\"\r\n",
				"Last-Modified: Wed, 01 May 2024 12:00:00 GMT\r\n", "ETag: W/\"a b\"\r\n"}, nil},
		{"bad values left out", Head{Status: 200, ContentLength: 0, Location: "x\ny", ContentType: "a\x7fb", ETag: "\"a\"\x00"},
			nil, []string{"Location", "Content-Type", "ETag"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := string(tc.head.Append(nil))
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("head lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(out, w) {
					t.Errorf("head has %q:\n%s", w, out)
				}
			}
			if !strings.HasSuffix(out, "\r\n\r\n") || strings.Count(out, "\r\n\r\n") != 1 {
				t.Errorf("head does not end once with a blank line:\n%q", out)
			}
		})
	}
}

func TestValidHeaderValueBounds(t *testing.T) {
	for _, tc := range []struct {
		v  string
		ok bool
	}{
		{"plain", true},
		{"tab\there", true},
		{"space here", true},
		{"obs-text \x80\xff", true},
		{"~", true},
		{"\x1f", false},
		{"\x7f", false},
		{"\x00", false},
		{"a\rb", false},
		{"a\nb", false},
	} {
		if got := ValidHeaderValue(tc.v); got != tc.ok {
			t.Errorf("ValidHeaderValue(%q) = %v, want %v", tc.v, got, tc.ok)
		}
	}
}

// TestParseTimeBounds: each field of an IMF-fixdate at its last valid value and one past
// it; what the fast parser refuses, net/http's parser must refuse as well.
func TestParseTimeBounds(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"Sun, 01 Nov 1994 00:00:00 GMT", true},
		{"Sun, 00 Nov 1994 08:49:37 GMT", false},
		{"Wed, 30 Nov 1994 08:49:37 GMT", true},
		{"Sat, 31 Dec 1994 23:59:59 GMT", true},
		{"Sun, 32 Dec 1994 08:49:37 GMT", false},
		{"Sun, 06 Nov 1994 24:00:00 GMT", false},
		{"Sun, 06 Nov 1994 23:60:00 GMT", false},
		{"Sun, 06 Nov 1994 23:59:61 GMT", false},
		{"Sun, 06 Jan 1994 08:49:37 GMT", true},
		{"Sun, 06 Dec 1994 08:49:37 GMT", true},
		{"Sun, 06 Nov 19a4 08:49:37 GMT", false},
		{"Sun, 06 Nov 1994 08:49:37 GMT ", false},
		{"Sun, 06 Nov 1994 08:49:37 gmt", false},
	} {
		got, ok := ParseTime([]byte(tc.in))
		if ok != tc.ok {
			t.Errorf("ParseTime(%q) = %v, %v; want ok %v", tc.in, got, ok, tc.ok)
			continue
		}
		if ok {
			if want, err := http.ParseTime(tc.in); err != nil || !want.Equal(got) {
				t.Errorf("ParseTime(%q) = %v, net/http %v %v", tc.in, got, want, err)
			}
		}
	}
}

// TestAppendDateMovesOn: the Date value is formatted once a second, and a second later
// it is the new second's.
func TestAppendDateMovesOn(t *testing.T) {
	first := string(AppendDate(nil))
	if _, err := http.ParseTime(first); err != nil {
		t.Fatalf("Date %q: %v", first, err)
	}
	time.Sleep(1100 * time.Millisecond)
	second := string(AppendDate(nil))
	if second == first {
		t.Errorf("Date still %q a second later", second)
	}
	now := time.Now().UTC()
	got, _ := http.ParseTime(second)
	if d := now.Sub(got); d < 0 || d > 2*time.Second {
		t.Errorf("Date %q, now %v", second, now)
	}
}

// TestAbsoluteFormTwins: http and https absolute-form targets reduce to their path the
// same way, with or without a port, a query or a path at all.
func TestAbsoluteFormTwins(t *testing.T) {
	for _, tc := range []struct {
		target, path, query string
	}{
		{"http://h/p/f", "/p/f", ""},
		{"https://h/p/f", "/p/f", ""},
		{"HTTPS://h:8443/p/f?x=1", "/p/f", "x=1"},
		{"http://h:80", "/", ""},
		{"https://h", "/", ""},
		{"https://h?q", "/", "q"},
	} {
		var r Request
		in := "GET " + tc.target + " HTTP/1.1\r\nHost: h\r\n\r\n"
		if _, err := r.Parse([]byte(in)); err != nil {
			t.Errorf("%s: %v", tc.target, err)
			continue
		}
		if string(r.Path) != tc.path || string(r.Query) != tc.query {
			t.Errorf("%s: path %q query %q, want %q %q", tc.target, r.Path, r.Query, tc.path, tc.query)
		}
	}
	for _, target := range []string{"https:///p", "httpx://h/p", "https:/h/p"} {
		var r Request
		if _, err := r.Parse([]byte("GET " + target + " HTTP/1.1\r\nHost: h\r\n\r\n")); err == nil {
			t.Errorf("%s accepted as %q", target, r.Path)
		}
	}
}
