package proto

import "strconv"

// Range is one byte range of a representation: Length bytes from Start.
type Range struct {
	Start, Length int64
}

// ContentRange appends the value of a Content-Range header for r of a size-byte body.
func (r Range) ContentRange(dst []byte, size int64) []byte {
	dst = append(dst, "bytes "...)
	dst = strconv.AppendInt(dst, r.Start, 10)
	dst = append(dst, '-')
	dst = strconv.AppendInt(dst, r.Start+r.Length-1, 10)
	dst = append(dst, '/')
	return strconv.AppendInt(dst, size, 10)
}

// RangeError says why a Range header cannot be served: the answer is 416.
type RangeError struct {
	// NoOverlap is true when the ranges were well formed but all start past the end.
	NoOverlap bool
}

func (e *RangeError) Error() string {
	if e.NoOverlap {
		return "proto: no range overlaps the content"
	}
	return "proto: invalid range"
}

var (
	errInvalidRange = &RangeError{}
	errNoOverlap    = &RangeError{NoOverlap: true}
)

// MaxRanges is how many ranges one request may ask for; more is treated as invalid, so a
// client cannot make the server write a huge multipart head for a tiny body.
const MaxRanges = 64

// ParseRange parses a Range header for a body of size bytes, appending to dst, with
// net/http's semantics: ranges past the end are clipped, a range starting past the end
// is dropped (all of them dropped: *RangeError with NoOverlap), malformed "bytes=" specs
// are an error (416). A unit other than "bytes" is ignored as RFC 9110 14.2 requires:
// no ranges and no error, so the whole body is served.
func ParseRange(h []byte, size int64, dst []Range) ([]Range, error) {
	if len(h) == 0 {
		return dst, nil
	}
	eq := indexByte(h, '=')
	if eq < 0 {
		return dst, errInvalidRange
	}
	if !equalFold(trimOWS(h[:eq]), "bytes") {
		return dst, nil
	}
	start := len(dst)
	noOverlap := false
	s := h[eq+1:]
	for len(s) > 0 {
		var spec []byte
		if i := indexByte(s, ','); i >= 0 {
			spec, s = s[:i], s[i+1:]
		} else {
			spec, s = s, nil
		}
		spec = trimOWS(spec)
		if len(spec) == 0 {
			continue
		}
		dash := indexByte(spec, '-')
		if dash < 0 {
			return dst[:start], errInvalidRange
		}
		first, last := trimOWS(spec[:dash]), trimOWS(spec[dash+1:])
		var r Range
		if len(first) == 0 {
			n, ok := parseUint(last)
			if !ok {
				return dst[:start], errInvalidRange
			}
			if n > size {
				n = size
			}
			if n == 0 {
				// "bytes=-0", or any suffix of an empty body, selects nothing.
				noOverlap = true
				continue
			}
			r.Start, r.Length = size-n, n
		} else {
			i, ok := parseUint(first)
			if !ok {
				return dst[:start], errInvalidRange
			}
			if i >= size {
				noOverlap = true
				continue
			}
			r.Start = i
			if len(last) == 0 {
				r.Length = size - i
			} else {
				j, ok := parseUint(last)
				if !ok || i > j {
					return dst[:start], errInvalidRange
				}
				if j >= size {
					j = size - 1
				}
				r.Length = j - i + 1
			}
		}
		if len(dst)-start >= MaxRanges {
			return dst[:start], errInvalidRange
		}
		dst = append(dst, r)
	}
	if noOverlap && len(dst) == start {
		return dst, errNoOverlap
	}
	return dst, nil
}
