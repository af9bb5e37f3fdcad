package proto

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strconv"
)

// ServerName is the value of the Server header; the binary sets it to offload/<version>.
var ServerName = "offload"

// Head is a response head. Empty strings and a negative ContentLength are left out.
// Values that come from the base are written only when ValidHeaderValue accepts them.
type Head struct {
	Status        int
	ContentLength int64
	ContentType   string
	ETag          string
	LastModified  string
	ContentRange  []byte
	Location      string
	Warning       string
	Allow         string
	RetryAfter    string
	AcceptRanges  bool
	Close         bool
}

// Append writes the status line, the header fields and the blank line that ends the head.
func (h *Head) Append(dst []byte) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(h.Status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(h.Status)...)
	dst = append(dst, "\r\nDate: "...)
	dst = AppendDate(dst)
	dst = append(dst, "\r\nServer: "...)
	dst = append(dst, ServerName...)
	dst = append(dst, "\r\n"...)
	if h.ContentLength >= 0 {
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, h.ContentLength, 10)
		dst = append(dst, "\r\n"...)
	}
	dst = appendField(dst, "Content-Type: ", h.ContentType)
	dst = appendField(dst, "ETag: ", h.ETag)
	dst = appendField(dst, "Last-Modified: ", h.LastModified)
	if len(h.ContentRange) > 0 {
		dst = append(dst, "Content-Range: "...)
		dst = append(dst, h.ContentRange...)
		dst = append(dst, "\r\n"...)
	}
	if h.AcceptRanges {
		dst = append(dst, "Accept-Ranges: bytes\r\n"...)
	}
	dst = appendField(dst, "Location: ", h.Location)
	dst = appendField(dst, "Warning: ", h.Warning)
	dst = appendField(dst, "Allow: ", h.Allow)
	dst = appendField(dst, "Retry-After: ", h.RetryAfter)
	if h.Close {
		dst = append(dst, "Connection: close\r\n"...)
	} else {
		dst = append(dst, "Connection: keep-alive\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// Fields calls fn with the name and value of each header field Append writes, in the
// same order, but Date, Server and Connection: those belong to whoever owns the
// connection, as a web server does for a CGI program (offload cgi hands it these
// fields and the status). The values are the ones Append writes, and the ones Append
// leaves out for ValidHeaderValue are left out here too.
func (h *Head) Fields(fn func(name, value string)) {
	if h.ContentLength >= 0 {
		fn("Content-Length", strconv.FormatInt(h.ContentLength, 10))
	}
	field := func(name, value string) {
		if value != "" && ValidHeaderValue(value) {
			fn(name, value)
		}
	}
	field("Content-Type", h.ContentType)
	field("ETag", h.ETag)
	field("Last-Modified", h.LastModified)
	if len(h.ContentRange) > 0 {
		fn("Content-Range", string(h.ContentRange))
	}
	if h.AcceptRanges {
		fn("Accept-Ranges", "bytes")
	}
	field("Location", h.Location)
	field("Warning", h.Warning)
	field("Allow", h.Allow)
	field("Retry-After", h.RetryAfter)
}

func appendField(dst []byte, name, value string) []byte {
	if value == "" || !ValidHeaderValue(value) {
		return dst
	}
	dst = append(dst, name...)
	dst = append(dst, value...)
	return append(dst, "\r\n"...)
}

// ValidHeaderValue reports whether v may be written as a header value: no CR, LF, NUL or
// other control bytes that would let a value from the base inject a header of its own.
func ValidHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// Boundary separates the parts of multipart/byteranges bodies. One random value per
// process, as long as net/http's (60 hex digits), so it cannot be guessed to forge parts in a body.
var Boundary = func() string {
	var b [30]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

// MultipartType is the Content-Type of a multi-range response.
var MultipartType = "multipart/byteranges; boundary=" + Boundary

// AppendPartHead appends the delimiter and headers that come before part i of a
// multipart/byteranges body.
func AppendPartHead(dst []byte, i int, r Range, contentType string, size int64) []byte {
	if i > 0 {
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "--"...)
	dst = append(dst, Boundary...)
	dst = append(dst, "\r\n"...)
	if contentType != "" && ValidHeaderValue(contentType) {
		dst = append(dst, "Content-Type: "...)
		dst = append(dst, contentType...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "Content-Range: "...)
	dst = r.ContentRange(dst, size)
	return append(dst, "\r\n\r\n"...)
}

// AppendPartsEnd appends the closing delimiter of a multipart/byteranges body.
func AppendPartsEnd(dst []byte) []byte {
	dst = append(dst, "\r\n--"...)
	dst = append(dst, Boundary...)
	return append(dst, "--\r\n"...)
}

// MultipartLength is the Content-Length of the multipart/byteranges body for ranges.
func MultipartLength(ranges []Range, contentType string, size int64) int64 {
	var buf [256]byte
	var n int64
	for i, r := range ranges {
		n += int64(len(AppendPartHead(buf[:0], i, r, contentType, size))) + r.Length
	}
	return n + int64(len(AppendPartsEnd(buf[:0])))
}
