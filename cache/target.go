package cache

import (
	"context"
	"errors"
	"net/netip"
)

// target is the origin-form request-target the base is asked for: the cleaned path the
// cache key is made of, percent-encoded again byte by byte. No client byte reaches the
// base as it was sent, so a path can choose neither another host ("//host/…" in
// origin-form reads as a network-path reference) nor another file than the key names:
// "/a%2Fb", "/a//b" and "/x/../a/b" are the key "/a/b" and the target "/a/b".
func target(path string) (string, error) {
	if len(path) == 0 || path[0] != '/' || len(path) > 1 && path[1] == '/' {
		return "", errors.New("cache: path is not a cleaned absolute path")
	}
	n := 0
	for i := 0; i < len(path); i++ {
		if !pathSafe(path[i]) {
			n++
		}
	}
	if n == 0 {
		return path, nil
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(path)+2*n)
	for i := 0; i < len(path); i++ {
		if c := path[i]; pathSafe(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(b), nil
}

// pathSafe reports whether c may stand unescaped in a path: RFC 3986's unreserved
// characters, the sub-delims, ':', '@' and '/'.
func pathSafe(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@', '/':
		return true
	}
	return false
}

type clientKey struct{}

// WithClient records in ctx the address of the client a request is for: windows are
// capped per client.
func WithClient(ctx context.Context, addr netip.Addr) context.Context {
	return context.WithValue(ctx, clientKey{}, addr)
}

// clientOf is the address WithClient recorded, or the zero Addr.
func clientOf(ctx context.Context) netip.Addr {
	a, _ := ctx.Value(clientKey{}).(netip.Addr)
	return a
}
