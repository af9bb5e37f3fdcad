package redirect

import (
	"net/netip"
	"strconv"
	"strings"
)

// wildcardMatch reports whether s matches the shell pattern p ('*' any run, '?' any one
// byte), ignoring ASCII case, as Apache's ap_strcasecmp_match does for the original's
// exclusion directives.
func wildcardMatch(p, s string) bool {
	// Iterative matcher with one backtrack point: linear in practice, no recursion.
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && (p[pi] == '?' || lower(p[pi]) == lower(s[si])):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// checkAddrPattern says what is wrong with an ExcludeAddresses value (the Apache
// module's OffloadExcludeAddress refuses the same): an address, a CIDR, or a pattern of
// digits, '.', ':' and wildcards whose IPv4 parts are numbers up to 255; no ranges.
func checkAddrPattern(a string) error {
	switch {
	case strings.Contains(a, "-"):
		return errorf("exclude address %q: ranges are not supported; write a CIDR (10.0.0.0/24) or a wildcard (10.0.0.*)", a)
	case strings.Contains(a, "/"):
		if _, err := netip.ParsePrefix(a); err != nil {
			return errorf("exclude address %q: not an address/prefix: %v", a, err)
		}
		return nil
	case !strings.ContainsAny(a, "*?"):
		if _, err := netip.ParseAddr(a); err != nil {
			return errorf("exclude address %q: not an IP address, a wildcard (10.1.*) or a CIDR (10.0.0.0/8)", a)
		}
		return nil
	}
	for _, c := range a {
		if !strings.ContainsRune("0123456789abcdefABCDEF.:*?", c) {
			return errorf("exclude address %q: not an address pattern (digits, '.', ':', '*', '?')", a)
		}
	}
	if strings.Contains(a, ".") && !strings.Contains(a, ":") {
		parts := strings.Split(a, ".")
		if len(parts) > 4 {
			return errorf("exclude address %q: more than four parts", a)
		}
		for _, p := range parts {
			if strings.ContainsAny(p, "*?") {
				continue
			}
			if n, err := strconv.Atoi(p); err != nil || len(p) > 3 || n > 255 || strings.ContainsAny(p, "abcdefABCDEF") {
				return errorf("exclude address %q: %q is not a number from 0 to 255", a, p)
			}
		}
	}
	return nil
}
