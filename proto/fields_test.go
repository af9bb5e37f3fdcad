package proto

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// appendedFields is what Append writes between Server and Connection, one "Name: value"
// per field.
func appendedFields(t *testing.T, h *Head) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(string(h.Append(nil)), "\r\n\r\n"), "\r\n")
	if len(lines) < 4 || !strings.HasPrefix(lines[1], "Date: ") || !strings.HasPrefix(lines[2], "Server: ") ||
		!strings.HasPrefix(lines[len(lines)-1], "Connection: ") {
		t.Fatalf("Append wrote an unexpected head:\n%q", lines)
	}
	return lines[3 : len(lines)-1]
}

func visitedFields(h *Head) []string {
	var got []string
	h.Fields(func(name, value string) { got = append(got, name+": "+value) })
	return got
}

func TestFieldsAreAppendsFields(t *testing.T) {
	tests := []struct {
		name string
		head Head
		want []string
	}{
		{"length only", Head{Status: 200, ContentLength: 0}, []string{"Content-Length: 0"}},
		{"no length", Head{Status: 304, ContentLength: -1, ETag: `"e"`}, []string{`ETag: "e"`}},
		{"range", Head{Status: 206, ContentLength: 5, ContentType: "text/plain", ContentRange: Range{0, 5}.ContentRange(nil, 10),
			AcceptRanges: true, Close: true},
			[]string{"Content-Length: 5", "Content-Type: text/plain", "Content-Range: bytes 0-4/10", "Accept-Ranges: bytes"}},
		{"every field", Head{Status: 405, ContentLength: 3, ContentType: "a/b", ETag: `W/"a b"`, LastModified: "Wed, 01 May 2024 12:00:00 GMT",
			ContentRange: []byte("bytes */9"), AcceptRanges: true, Location: "http://x/y", Warning: `110 - "Response is Stale"`,
			Allow: "GET, HEAD", RetryAfter: "10"},
			[]string{"Content-Length: 3", "Content-Type: a/b", `ETag: W/"a b"`, "Last-Modified: Wed, 01 May 2024 12:00:00 GMT",
				"Content-Range: bytes */9", "Accept-Ranges: bytes", "Location: http://x/y", `Warning: 110 - "Response is Stale"`,
				"Allow: GET, HEAD", "Retry-After: 10"}},
		{"bad values left out", Head{Status: 200, ContentLength: 1, Location: "x\r\nSet-Cookie: y", ContentType: "a\x7fb", ETag: "\"a\"\x00"},
			[]string{"Content-Length: 1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := visitedFields(&tc.head)
			if !slices.Equal(got, tc.want) {
				t.Errorf("Fields = %q, want %q", got, tc.want)
			}
			if app := appendedFields(t, &tc.head); !slices.Equal(got, app) {
				t.Errorf("Fields = %q, Append wrote %q", got, app)
			}
		})
	}
}

// TestFieldsAgreeWithAppendRandomly builds random heads, with values Append must leave
// out among them, and checks that Fields and Append name the same fields in the same order.
func TestFieldsAgreeWithAppendRandomly(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 13))
	values := []string{"", "text/plain", `"x"`, "a\nb", "c\x00", "tab\tok", "http://h/p?q", "\x7f"}
	pick := func() string { return values[rng.IntN(len(values))] }
	for i := range 2000 {
		h := Head{Status: 200 + rng.IntN(300), ContentLength: int64(rng.IntN(3)) - 1, ContentType: pick(), ETag: pick(),
			LastModified: pick(), Location: pick(), Warning: pick(), Allow: pick(), RetryAfter: pick(),
			AcceptRanges: rng.IntN(2) == 0, Close: rng.IntN(2) == 0}
		if rng.IntN(2) == 0 {
			h.ContentRange = Range{int64(rng.IntN(10)), 1}.ContentRange(nil, 20)
		}
		if got, app := visitedFields(&h), appendedFields(t, &h); !slices.Equal(got, app) {
			t.Fatalf("head %d %+v: Fields = %q, Append wrote %q", i, h, got, app)
		}
	}
}
