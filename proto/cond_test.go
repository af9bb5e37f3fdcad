package proto

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// fileRangeTests are net/http's ServeFileRangeTests (fs_test.go) for an 11-byte file:
// want holds [start, end) pairs.
var fileRangeTests = []struct {
	r    string
	code int
	want [][2]int64
}{
	{"", 200, nil},
	{"bytes=0-4", 206, [][2]int64{{0, 5}}},
	{"bytes=2-", 206, [][2]int64{{2, 11}}},
	{"bytes=-5", 206, [][2]int64{{6, 11}}},
	{"bytes=3-7", 206, [][2]int64{{3, 8}}},
	{"bytes=0-0,-2", 206, [][2]int64{{0, 1}, {9, 11}}},
	{"bytes=0-1,5-8", 206, [][2]int64{{0, 2}, {5, 9}}},
	{"bytes=0-1,5-", 206, [][2]int64{{0, 2}, {5, 11}}},
	{"bytes=5-1000", 206, [][2]int64{{5, 11}}},
	{"bytes=0-,1-,2-,3-,4-", 200, nil},
	{"bytes=0-9", 206, [][2]int64{{0, 10}}},
	{"bytes=0-10", 206, [][2]int64{{0, 11}}},
	{"bytes=0-11", 206, [][2]int64{{0, 11}}},
	{"bytes=10-11", 206, [][2]int64{{10, 11}}},
	{"bytes=10-", 206, [][2]int64{{10, 11}}},
	{"bytes=11-", 416, nil},
	{"bytes=11-12", 416, nil},
	{"bytes=12-12", 416, nil},
	{"bytes=11-100", 416, nil},
	{"bytes=12-100", 416, nil},
	{"bytes=100-", 416, nil},
	{"bytes=100-1000", 416, nil},
	// Our own additions.
	{"bytes=-0", 416, nil},
	{"bytes=abc", 416, nil},
	{"bytes=10-5", 416, nil},
	{"bytes=", 200, nil},
	{"items=0-5", 200, nil}, // unknown unit: ignored (RFC 9110 14.2)
	{"bytes = 1-2", 206, [][2]int64{{1, 3}}},
	{"bytes=-100", 206, [][2]int64{{0, 11}}},
}

func TestEvaluateRanges(t *testing.T) {
	for _, tc := range fileRangeTests {
		t.Run(tc.r, func(t *testing.T) {
			req := &Request{Range: []byte(tc.r)}
			status, ranges, _ := Evaluate(req, `"e"`, time.Unix(1e9, 0), 11, nil)
			if status != tc.code {
				t.Fatalf("status %d, want %d", status, tc.code)
			}
			if len(ranges) != len(tc.want) {
				t.Fatalf("ranges %v, want %v", ranges, tc.want)
			}
			for i, w := range tc.want {
				if ranges[i].Start != w[0] || ranges[i].Start+ranges[i].Length != w[1] {
					t.Errorf("range %d = %+v, want %v", i, ranges[i], w)
				}
			}
		})
	}
}

func TestEvaluatePreconditions(t *testing.T) {
	mod := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	before, same, after := mod.Add(-time.Hour).Format(TimeFormat), mod.Format(TimeFormat), mod.Add(time.Hour).Format(TimeFormat)
	tests := []struct {
		name string
		req  Request
		want int
	}{
		{"inm match", Request{IfNoneMatch: []byte(`"v1"`)}, 304},
		{"inm weak match", Request{IfNoneMatch: []byte(`W/"v1"`)}, 304},
		{"inm list", Request{IfNoneMatch: []byte(`"a", "v1"`)}, 304},
		{"inm star", Request{IfNoneMatch: []byte(`*`)}, 304},
		{"inm miss", Request{IfNoneMatch: []byte(`"v2"`)}, 200},
		{"inm miss beats ims", Request{IfNoneMatch: []byte(`"v2"`), IfModifiedSince: []byte(after)}, 200},
		{"ims same", Request{IfModifiedSince: []byte(same)}, 304},
		{"ims after", Request{IfModifiedSince: []byte(after)}, 304},
		{"ims before", Request{IfModifiedSince: []byte(before)}, 200},
		{"ims garbage", Request{IfModifiedSince: []byte("yesterday")}, 200},
		// RFC 9110 §13.1.3: a date later than the server's clock is invalid and ignored.
		{"ims in the future", Request{IfModifiedSince: []byte(time.Now().Add(time.Hour).UTC().Format(TimeFormat))}, 200},
		{"ims just past", Request{IfModifiedSince: []byte(time.Now().Add(-2 * time.Second).UTC().Format(TimeFormat))}, 304},
		{"ims rfc850", Request{IfModifiedSince: []byte("Wednesday, 01-May-24 12:00:00 GMT")}, 304},
		{"if-match miss", Request{IfMatch: []byte(`"zz"`)}, 412},
		{"if-match hit", Request{IfMatch: []byte(`"v1"`)}, 200},
		{"if-match weak never strong", Request{IfMatch: []byte(`W/"v1"`)}, 412},
		{"ius before", Request{IfUnmodifiedSince: []byte(before)}, 412},
		{"ius same", Request{IfUnmodifiedSince: []byte(same)}, 200},
		{"if-range etag match", Request{Range: []byte("bytes=0-0"), IfRange: []byte(`"v1"`)}, 206},
		{"if-range etag miss", Request{Range: []byte("bytes=0-0"), IfRange: []byte(`"v0"`)}, 200},
		{"if-range date match", Request{Range: []byte("bytes=0-0"), IfRange: []byte(same)}, 206},
		{"if-range date miss", Request{Range: []byte("bytes=0-0"), IfRange: []byte(before)}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _, _ := Evaluate(&tc.req, `"v1"`, mod, 100, nil)
			if status != tc.want {
				t.Errorf("status %d, want %d", status, tc.want)
			}
		})
	}
}

// TestEvaluateMatchesServeContent serves one body through net/http.ServeContent and
// through Evaluate for generated Range and If-* combinations and compares the outcome.
func TestEvaluateMatchesServeContent(t *testing.T) {
	const size = 1000
	body := bytes.Repeat([]byte("0123456789"), size/10)
	mod := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	etag := `"abc"`
	rng := rand.New(rand.NewPCG(1, 2))
	pos := func() string { return strconv.Itoa(rng.IntN(size + 200)) }
	spec := func() string {
		switch rng.IntN(5) {
		case 0:
			return pos() + "-"
		case 1:
			return "-" + strconv.Itoa(1+rng.IntN(size+100))
		case 2:
			a := rng.IntN(size + 100)
			return fmt.Sprintf("%d-%d", a, a+rng.IntN(500))
		case 3:
			return pos() + "-" + pos()
		default:
			return fmt.Sprintf("%d-%d", rng.IntN(size), rng.IntN(size))
		}
	}
	dates := []string{mod.Add(-time.Hour).Format(TimeFormat), mod.Format(TimeFormat), mod.Add(time.Hour).Format(TimeFormat)}
	for i := range 400 {
		h := http.Header{}
		n := 1 + rng.IntN(3)
		r := "bytes=" + spec()
		for range n - 1 {
			r += "," + spec()
		}
		h.Set("Range", r)
		switch rng.IntN(6) {
		case 0:
			h.Set("If-Range", etag)
		case 1:
			h.Set("If-Range", `"other"`)
		case 2:
			h.Set("If-Range", dates[rng.IntN(3)])
		}
		switch rng.IntN(6) {
		case 0:
			h.Set("If-None-Match", etag)
		case 1:
			h.Set("If-None-Match", `"nope"`)
		case 2:
			h.Set("If-Modified-Since", dates[rng.IntN(3)])
		case 3:
			h.Set("If-Match", `"nope"`)
		case 4:
			h.Set("If-Unmodified-Since", dates[rng.IntN(3)])
		}
		hr := httptest.NewRequest("GET", "/f", nil)
		hr.Header = h
		rec := httptest.NewRecorder()
		rec.Header().Set("ETag", etag)
		rec.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(rec, hr, "f.bin", mod, bytes.NewReader(body))

		req := &Request{
			Range: []byte(h.Get("Range")), IfRange: []byte(h.Get("If-Range")),
			IfNoneMatch: []byte(h.Get("If-None-Match")), IfModifiedSince: []byte(h.Get("If-Modified-Since")),
			IfMatch: []byte(h.Get("If-Match")), IfUnmodifiedSince: []byte(h.Get("If-Unmodified-Since")),
		}
		status, ranges, _ := Evaluate(req, etag, mod, size, nil)
		if status != rec.Code {
			t.Fatalf("case %d %v: status %d, net/http %d", i, h, status, rec.Code)
		}
		switch {
		case status == 206 && len(ranges) == 1:
			cr := string(ranges[0].ContentRange(nil, size))
			if cr != rec.Header().Get("Content-Range") || strconv.FormatInt(ranges[0].Length, 10) != rec.Header().Get("Content-Length") {
				t.Fatalf("case %d %v: %s len %d, net/http %s len %s", i, h, cr, ranges[0].Length,
					rec.Header().Get("Content-Range"), rec.Header().Get("Content-Length"))
			}
		case status == 206:
			// The boundary differs; the part layout and so the length differ only by
			// the boundary, which has the same length (60 hex digits) in both.
			want := rec.Header().Get("Content-Length")
			got := MultipartLength(ranges, "application/octet-stream", size)
			if strconv.FormatInt(got, 10) != want {
				t.Fatalf("case %d %v: multipart length %d, net/http %s", i, h, got, want)
			}
		case status == 200:
			if rec.Body.Len() != size {
				t.Fatalf("case %d: net/http sent %d bytes", i, rec.Body.Len())
			}
		}
	}
}

func TestRangeError(t *testing.T) {
	_, err := ParseRange([]byte("bytes=500-"), 100, nil)
	var re *RangeError
	if !errors.As(err, &re) || !re.NoOverlap {
		t.Fatalf("got %v, want NoOverlap", err)
	}
	_, err = ParseRange([]byte("bytes=x"), 100, nil)
	if !errors.As(err, &re) || re.NoOverlap {
		t.Fatalf("got %v, want invalid", err)
	}
}

func TestParseTime(t *testing.T) {
	want := time.Date(1994, 11, 6, 8, 49, 37, 0, time.UTC)
	for _, s := range []string{"Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"} {
		got, ok := ParseTime([]byte(s))
		if !ok || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v %v", s, got, ok)
		}
	}
	for _, s := range []string{"", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Xyz 1994 08:49:37 GMT", "Sun, 36 Nov 1994 08:49:37 GMT"} {
		if _, ok := ParseTime([]byte(s)); ok {
			t.Errorf("ParseTime(%q) accepted", s)
		}
	}
}

func TestHeadAppend(t *testing.T) {
	h := Head{Status: 206, ContentLength: 5, ContentType: "text/plain", ETag: "\"x\"\r\nSet-Cookie: evil",
		ContentRange: Range{0, 5}.ContentRange(nil, 10), AcceptRanges: true, Close: true}
	out := string(h.Append(nil))
	for _, want := range []string{"HTTP/1.1 206 Partial Content\r\n", "Content-Length: 5\r\n", "Content-Range: bytes 0-4/10\r\n",
		"Accept-Ranges: bytes\r\n", "Connection: close\r\n", "Content-Type: text/plain\r\n"} {
		if !bytes.Contains([]byte(out), []byte(want)) {
			t.Errorf("head lacks %q:\n%s", want, out)
		}
	}
	if bytes.Contains([]byte(out), []byte("Set-Cookie")) {
		t.Errorf("header injection passed through:\n%s", out)
	}
	// The head must parse as a response.
	resp, err := http.ReadResponse(bufioReader(out), nil)
	if err != nil || resp.StatusCode != 206 || resp.ContentLength != 5 {
		t.Fatalf("ReadResponse: %v %+v", err, resp)
	}
}
