package proto

import "time"

// Evaluate decides the status of a GET or HEAD for a representation of size bytes with
// the given validators, following net/http's checkPreconditions and serveContent:
// If-Match and If-Unmodified-Since (412), If-None-Match and If-Modified-Since (304),
// If-Range, then Range (206, or 416 with rangeErr set). The ranges are appended to dst.
// Status 200 means the whole body.
func Evaluate(r *Request, etag string, modtime time.Time, size int64, dst []Range) (status int, ranges []Range, rangeErr error) {
	ch := checkIfMatch(r.IfMatch, etag)
	if ch == condNone {
		ch = checkSince(r.IfUnmodifiedSince, modtime, true)
	}
	if ch == condFalse {
		return 412, dst, nil
	}
	switch checkIfNoneMatch(r.IfNoneMatch, etag) {
	case condFalse:
		return 304, dst, nil
	case condNone:
		if checkSince(r.IfModifiedSince, modtime, false) == condFalse {
			return 304, dst, nil
		}
	}
	rangeHeader := r.Range
	if len(rangeHeader) > 0 && checkIfRange(r.IfRange, etag, modtime) == condFalse {
		rangeHeader = nil
	}
	start := len(dst)
	ranges, err := ParseRange(rangeHeader, size, dst)
	if err != nil {
		return 416, ranges[:start], err
	}
	var sum int64
	for _, ra := range ranges[start:] {
		sum += ra.Length
	}
	if sum > size {
		// More bytes asked for than the body has: an attack or a confused client.
		ranges = ranges[:start]
	}
	if len(ranges) > start {
		return 206, ranges, nil
	}
	return 200, ranges, nil
}

type condResult int

const (
	condNone condResult = iota
	condTrue
	condFalse
)

// scanETag returns the first entity-tag in s and what follows it.
func scanETag(s []byte) (etag, rest []byte) {
	s = trimOWS(s)
	start := 0
	if len(s) >= 2 && s[0] == 'W' && s[1] == '/' {
		start = 2
	}
	if len(s[start:]) < 2 || s[start] != '"' {
		return nil, nil
	}
	for i := start + 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == 0x21 || c >= 0x23 && c <= 0x7E || c >= 0x80:
		case c == '"':
			return s[:i+1], s[i+1:]
		default:
			return nil, nil
		}
	}
	return nil, nil
}

func etagStrongMatch(a []byte, b string) bool {
	return string(a) == b && len(a) > 0 && a[0] == '"'
}

func etagWeakMatch(a []byte, b string) bool {
	if len(a) >= 2 && a[0] == 'W' && a[1] == '/' {
		a = a[2:]
	}
	if len(b) >= 2 && b[0] == 'W' && b[1] == '/' {
		b = b[2:]
	}
	return string(a) == b
}

// IsWeakETag reports whether an entity-tag is weak (W/"...").
func IsWeakETag(etag string) bool { return len(etag) >= 2 && etag[0] == 'W' && etag[1] == '/' }

// ValidETag reports whether s is one well-formed entity-tag.
func ValidETag(s string) bool {
	tag, rest := scanETag([]byte(s))
	return tag != nil && len(rest) == 0
}

// etagListMatch walks an If-Match or If-None-Match list: true for "*" or for any
// entity-tag for which match holds. A malformed element ends the walk, as in net/http.
func etagListMatch(h []byte, etag string, match func([]byte, string) bool) bool {
	for {
		h = trimOWS(h)
		if len(h) == 0 {
			return false
		}
		if h[0] == ',' {
			h = h[1:]
			continue
		}
		if h[0] == '*' {
			return true
		}
		tag, rest := scanETag(h)
		if tag == nil {
			return false
		}
		if match(tag, etag) {
			return true
		}
		h = rest
	}
}

func checkIfMatch(h []byte, etag string) condResult {
	switch {
	case len(h) == 0:
		return condNone
	case etagListMatch(h, etag, etagStrongMatch):
		return condTrue
	}
	return condFalse
}

func checkIfNoneMatch(h []byte, etag string) condResult {
	switch {
	case len(h) == 0:
		return condNone
	case etagListMatch(h, etag, etagWeakMatch):
		return condFalse
	}
	return condTrue
}

// checkSince evaluates If-Unmodified-Since (unmodified true) or If-Modified-Since.
func checkSince(h []byte, modtime time.Time, unmodified bool) condResult {
	if len(h) == 0 || isZeroTime(modtime) {
		return condNone
	}
	t, ok := ParseTime(h)
	if !ok {
		return condNone
	}
	if !unmodified && t.After(time.Now()) {
		// RFC 9110 §13.1.3: a date later than the server's clock is invalid; ignore it.
		return condNone
	}
	notNewer := modtime.Truncate(time.Second).Compare(t) <= 0
	if notNewer == unmodified {
		return condTrue
	}
	return condFalse
}

func checkIfRange(h []byte, etag string, modtime time.Time) condResult {
	if len(h) == 0 {
		return condNone
	}
	if tag, _ := scanETag(h); tag != nil {
		if etagStrongMatch(tag, etag) {
			return condTrue
		}
		return condFalse
	}
	if modtime.IsZero() {
		return condFalse
	}
	t, ok := ParseTime(h)
	if ok && t.Unix() == modtime.Unix() {
		return condTrue
	}
	return condFalse
}

func isZeroTime(t time.Time) bool { return t.IsZero() || t.Unix() == 0 }
