package redirect

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
