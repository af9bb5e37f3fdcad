package proto

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(browserGET))
	for _, tc := range BadRequests {
		if len(tc.In) < 512 {
			f.Add([]byte(tc.In))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Request
		n, err := r.Parse(data)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n <= 0 || n > len(data) {
			t.Fatalf("n=%d of %d", n, len(data))
		}
		if len(r.Path) == 0 || r.Path[0] != '/' {
			t.Fatalf("path %q not absolute", r.Path)
		}
		if bytes.Contains(r.Path, []byte("/../")) || bytes.HasSuffix(r.Path, []byte("/..")) || bytes.IndexByte(r.Path, 0) >= 0 ||
			bytes.Contains(r.Path, []byte("//")) {
			t.Fatalf("path %q not clean", r.Path)
		}
		// Parsing the rest never reads before n.
		var r2 Request
		_, _ = r2.Parse(data[n:])
	})
}

func FuzzParseRange(f *testing.F) {
	for _, tc := range fileRangeTests {
		f.Add(tc.r, int64(11))
	}
	f.Add("bytes=0-0,1-1,2-2", int64(0))
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		if size < 0 {
			return
		}
		ranges, err := ParseRange([]byte(h), size, nil)
		if err != nil {
			return
		}
		for _, r := range ranges {
			if r.Start < 0 || r.Length <= 0 || r.Start+r.Length > size {
				t.Fatalf("range %+v out of a %d-byte body (header %q)", r, size, h)
			}
		}
	})
}
