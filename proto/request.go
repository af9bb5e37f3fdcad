// Package proto is the HTTP/1.1 subset the offload server speaks: an incremental,
// allocation-free request parser, Range and conditional-request evaluation, HTTP dates
// and the response head writer. It does no I/O.
package proto

import (
	"errors"
	"strconv"
)

// Limits on what a client may send before the server gives up on the request.
const (
	MaxRequestLine = 8 << 10 // longest request line; longer is 414
	MaxHeaderBytes = 8 << 10 // largest header block after the request line; larger is 431
)

// ErrNeedMore means the buffer holds the start of a request but not yet all of its head.
var ErrNeedMore = errors.New("proto: need more data")

// Error is a request the server must refuse, with the status to answer and a short reason.
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return "proto: " + strconv.Itoa(e.Status) + " " + e.Reason }

func fail(status int, reason string) *Error { return &Error{Status: status, Reason: reason} }

// The errors Parse returns; preallocated so the error path does not allocate either.
var (
	errBadRequestLine  = fail(400, "malformed request line")
	errBadMethod       = fail(400, "malformed method")
	errBadTarget       = fail(400, "malformed request target")
	errBadPath         = fail(400, "malformed path")
	errClimb           = fail(400, "path climbs above the root")
	errNUL             = fail(400, "NUL byte in path")
	errBadVersion      = fail(400, "malformed HTTP version")
	errVersion         = fail(505, "only HTTP/1.0 and HTTP/1.1 are supported")
	errLineTooLong     = fail(414, "request line too long")
	errHeadersTooLarge = fail(431, "request header fields too large")
	errObsFold         = fail(400, "obsolete line folding in headers")
	errBadHeader       = fail(400, "malformed header field")
	errNoHost          = fail(400, "missing Host header")
	errDupHost         = fail(400, "more than one Host header")
	errBadLength       = fail(400, "malformed Content-Length")
	errDupLength       = fail(400, "more than one Content-Length")
	errLengthAndTE     = fail(400, "both Content-Length and Transfer-Encoding")
	errBody            = fail(400, "request body not allowed")
	errMethod          = fail(405, "method not allowed: this server answers GET and HEAD")
	errTE              = fail(501, "unsupported Transfer-Encoding")
)

// Request is one parsed request head. Its byte slices point into the buffer given to
// Parse (Path into the Request's own buffer) and stay valid until that buffer changes.
// A Request is reused from one request to the next without allocating.
type Request struct {
	Method  []byte
	Target  []byte // the request-target as sent
	RawPath []byte // the path as escaped on the wire, absolute-form reduced to its path
	Path    []byte // RawPath percent-decoded and cleaned: absolute, no "." or ".." or "//"
	Query   []byte // after '?', without it
	// HasQuery is true when the target had a '?', even with nothing after it.
	HasQuery bool
	Major    uint8
	Minor    uint8
	// KeepAlive is whether the connection may carry another request after this one.
	KeepAlive bool

	Host              []byte
	Range             []byte
	IfRange           []byte
	IfMatch           []byte
	IfNoneMatch       []byte
	IfModifiedSince   []byte
	IfUnmodifiedSince []byte
	UserAgent         []byte
	Referer           []byte
	XForwardedFor     []byte

	pathBuf []byte // backing store for Path, kept across requests
}

// IsGet and IsHead say whether the method is GET or HEAD.
func (r *Request) IsGet() bool { return string(r.Method) == "GET" }

// IsHead reports whether the method is HEAD.
func (r *Request) IsHead() bool { return string(r.Method) == "HEAD" }

func (r *Request) reset() {
	pb := r.pathBuf[:0]
	*r = Request{pathBuf: pb}
}

// Parse reads one request head from the start of buf. It returns how many bytes the head
// used, ErrNeedMore when buf holds only part of it, or an *Error naming the status to
// answer. Leading empty lines are skipped, as RFC 9112 allows.
func (r *Request) Parse(buf []byte) (int, error) {
	r.reset()
	pos := 0
	for pos < len(buf) && pos < 64 && (buf[pos] == '\r' || buf[pos] == '\n') {
		pos++
	}
	line, next, ok := cutLine(buf, pos)
	if !ok {
		// +1: the line's CR may have come without its LF yet.
		if len(buf)-pos > MaxRequestLine+1 {
			return 0, errLineTooLong
		}
		return 0, ErrNeedMore
	}
	if len(line) > MaxRequestLine {
		return 0, errLineTooLong
	}
	if err := r.parseRequestLine(line); err != nil {
		return 0, err
	}
	headStart := next
	var haveLength, haveTE, chunked bool
	var length int64
	close, keepAlive := false, false
	for {
		line, nn, ok := cutLine(buf, next)
		if !ok {
			// +1: the CR of the blank line that ends the head may have come alone.
			if len(buf)-headStart > MaxHeaderBytes+1 {
				return 0, errHeadersTooLarge
			}
			return 0, ErrNeedMore
		}
		if nn-headStart > MaxHeaderBytes+2 {
			return 0, errHeadersTooLarge
		}
		next = nn
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return 0, errObsFold
		}
		colon := -1
		for i, c := range line {
			if c == ':' {
				colon = i
				break
			}
			if !isToken(c) {
				return 0, errBadHeader
			}
		}
		if colon <= 0 {
			return 0, errBadHeader
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range value {
			if c < 0x20 && c != '\t' || c == 0x7f {
				return 0, errBadHeader
			}
		}
		switch {
		case equalFold(name, "host"):
			if r.Host != nil {
				return 0, errDupHost
			}
			r.Host = value
		case equalFold(name, "content-length"):
			if haveLength {
				return 0, errDupLength
			}
			haveLength = true
			n, ok := parseUint(value)
			if !ok {
				return 0, errBadLength
			}
			length = n
		case equalFold(name, "transfer-encoding"):
			haveTE = true
			chunked = equalFold(value, "chunked")
		case equalFold(name, "connection"):
			forEachToken(value, func(tok []byte) {
				switch {
				case equalFold(tok, "close"):
					close = true
				case equalFold(tok, "keep-alive"):
					keepAlive = true
				}
			})
		case equalFold(name, "range"):
			r.Range = value
		case equalFold(name, "if-range"):
			r.IfRange = value
		case equalFold(name, "if-match"):
			r.IfMatch = value
		case equalFold(name, "if-none-match"):
			r.IfNoneMatch = value
		case equalFold(name, "if-modified-since"):
			r.IfModifiedSince = value
		case equalFold(name, "if-unmodified-since"):
			r.IfUnmodifiedSince = value
		case equalFold(name, "user-agent"):
			r.UserAgent = value
		case equalFold(name, "referer"):
			r.Referer = value
		case equalFold(name, "x-forwarded-for"):
			r.XForwardedFor = value
		}
	}
	switch {
	case haveLength && haveTE:
		return 0, errLengthAndTE
	case haveTE && !chunked:
		return 0, errTE
	case (haveTE || length > 0) && !r.IsGet() && !r.IsHead():
		// The method is refused whatever the body: say so rather than blame the body.
		return 0, errMethod
	case haveTE, length > 0:
		return 0, errBody
	}
	if r.Minor == 1 && r.Host == nil {
		return 0, errNoHost
	}
	// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when it asks
	// with "Connection: keep-alive" (as ab -k does), as nginx and Apache do.
	r.KeepAlive = !close && (r.Minor == 1 || keepAlive)
	return next, nil
}

// cutLine returns the line starting at pos without its CRLF (or bare LF) and the index
// just past the line ending; ok is false when no line ending has arrived yet.
func cutLine(buf []byte, pos int) (line []byte, next int, ok bool) {
	for i := pos; i < len(buf); i++ {
		if buf[i] == '\n' {
			end := i
			if end > pos && buf[end-1] == '\r' {
				end--
			}
			return buf[pos:end], i + 1, true
		}
	}
	return nil, pos, false
}

func (r *Request) parseRequestLine(line []byte) error {
	sp1 := indexByte(line, ' ')
	if sp1 <= 0 {
		return errBadRequestLine
	}
	r.Method = line[:sp1]
	for _, c := range r.Method {
		if !isToken(c) {
			return errBadMethod
		}
	}
	rest := line[sp1+1:]
	sp2 := indexByte(rest, ' ')
	if sp2 <= 0 {
		return errBadRequestLine
	}
	r.Target = rest[:sp2]
	version := rest[sp2+1:]
	if len(version) != 8 || string(version[:5]) != "HTTP/" || version[6] != '.' ||
		!isDigit(version[5]) || !isDigit(version[7]) {
		return errBadVersion
	}
	r.Major, r.Minor = version[5]-'0', version[7]-'0'
	if r.Major != 1 || r.Minor > 1 {
		return errVersion
	}
	return r.parseTarget()
}

func (r *Request) parseTarget() error {
	t := r.Target
	for _, c := range t {
		if c <= ' ' || c == 0x7f || c == '#' {
			return errBadTarget
		}
	}
	if len(t) > 0 && t[0] != '/' {
		// absolute-form: scheme "://" authority path; reduce it to its path.
		var rest []byte
		switch {
		case hasPrefixFold(t, "http://"):
			rest = t[7:]
		case hasPrefixFold(t, "https://"):
			rest = t[8:]
		default:
			return errBadTarget // "*", authority-form, or garbage
		}
		i := 0
		for i < len(rest) && rest[i] != '/' && rest[i] != '?' {
			i++
		}
		if i == 0 {
			return errBadTarget
		}
		t = rest[i:]
		if len(t) == 0 || t[0] == '?' {
			// "http://host" or "http://host?q" means the root.
			r.RawPath = slash
			if len(t) > 0 {
				r.HasQuery, r.Query = true, t[1:]
			}
			return r.cleanPath()
		}
	}
	if len(t) == 0 {
		return errBadTarget
	}
	if q := indexByte(t, '?'); q >= 0 {
		r.HasQuery, r.Query = true, t[q+1:]
		t = t[:q]
	}
	r.RawPath = t
	return r.cleanPath()
}

var slash = []byte("/")

// cleanPath percent-decodes RawPath into pathBuf and removes ".", ".." and empty
// segments, refusing any ".." that would climb above the root.
func (r *Request) cleanPath() error {
	src := r.RawPath
	dst := r.pathBuf[:0]
	if cap(dst) < len(src)+1 {
		dst = make([]byte, 0, len(src)+64)
	}
	dst = append(dst, '/')
	segStart := 1
	endSegment := func() error {
		seg := dst[segStart:]
		switch {
		case len(seg) == 0:
			// "//": collapse.
		case len(seg) == 1 && seg[0] == '.':
			dst = dst[:segStart]
		case len(seg) == 2 && seg[0] == '.' && seg[1] == '.':
			if segStart == 1 {
				return errClimb
			}
			i := segStart - 2
			for i > 0 && dst[i] != '/' {
				i--
			}
			dst = dst[:i+1]
		default:
			dst = append(dst, '/')
		}
		segStart = len(dst)
		return nil
	}
	for i := 0; i < len(src); i++ {
		c := src[i]
		if c == '%' {
			if i+2 >= len(src) || !isHex(src[i+1]) || !isHex(src[i+2]) {
				return errBadPath
			}
			c = unhex(src[i+1])<<4 | unhex(src[i+2])
			i += 2
			if c == 0 {
				return errNUL
			}
		}
		if c == '/' {
			if err := endSegment(); err != nil {
				return err
			}
			continue
		}
		dst = append(dst, c)
	}
	trailing := len(src) > 0 && src[len(src)-1] == '/'
	if len(dst) > segStart {
		if err := endSegment(); err != nil {
			return err
		}
	}
	// endSegment leaves a '/' after every segment; keep it only where the request had one.
	if len(dst) > 1 && !trailing {
		dst = dst[:len(dst)-1]
	}
	r.pathBuf = dst
	r.Path = dst
	return nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// isToken reports whether c may appear in an RFC 9110 token (method, header name).
func isToken(c byte) bool {
	return tokenTable[c]
}

var tokenTable = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares b with the lower-case ASCII string s, ignoring the case of b.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func hasPrefixFold(b []byte, s string) bool {
	return len(b) >= len(s) && equalFold(b[:len(s)], s)
}

// parseUint parses a non-negative decimal that fits in an int64.
func parseUint(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// forEachToken calls fn for each comma-separated element of a list header, trimmed.
func forEachToken(b []byte, fn func([]byte)) {
	for len(b) > 0 {
		i := indexByte(b, ',')
		var tok []byte
		if i < 0 {
			tok, b = b, nil
		} else {
			tok, b = b[:i], b[i+1:]
		}
		if tok = trimOWS(tok); len(tok) > 0 {
			fn(tok)
		}
	}
}
