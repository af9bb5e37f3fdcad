package cache

import (
	"net/url"
	"testing"
)

// TestTargetEscapes: the base is asked for the cleaned path with every byte outside
// RFC 3986's path characters escaped, each edge of that set included, and a path that
// could read as another host ("//host") or is not absolute is refused.
func TestTargetEscapes(t *testing.T) {
	tests := []struct {
		path, want string
		ok         bool
	}{
		{"/", "/", true},
		{"/pub/a.iso", "/pub/a.iso", true},
		{"/a-._~!$&'()*+,;=:@/z", "/a-._~!$&'()*+,;=:@/z", true}, // every safe byte
		{"/AZaz09", "/AZaz09", true},
		{"/a b", "/a%20b", true},
		{"/a?b", "/a%3Fb", true}, // never a query
		{"/a#b", "/a%23b", true}, // never a fragment
		{"/a%b", "/a%25b", true}, // never a second decoding
		{"/a\"b", "/a%22b", true},
		{"/a`b", "/a%60b", true},
		{"/a[b]", "/a%5Bb%5D", true},
		{"/a{b}", "/a%7Bb%7D", true},
		{"/a\\b", "/a%5Cb", true},
		{"/a^b|c", "/a%5Eb%7Cc", true},
		{"/a<b>", "/a%3Cb%3E", true},
		{"/\x00\x1f\x7f", "/%00%1F%7F", true},
		{"/é", "/%C3%A9", true},
		{"", "", false},
		{"a/b", "", false},
		{"//host/x", "", false},
	}
	for _, tc := range tests {
		got, err := target(tc.path)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("target(%q) = %q, %v; want %q, ok %v", tc.path, got, err, tc.want, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		// It reads back as exactly the path, with no query or fragment.
		u, err := url.Parse(got)
		if err != nil || u.Path != tc.path || u.RawQuery != "" || u.Fragment != "" || u.Host != "" {
			t.Errorf("target(%q) = %q reads back as %+v, %v", tc.path, got, u, err)
		}
	}
}
