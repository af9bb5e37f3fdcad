package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/modoffload/offload/proto"
)

// HeaderSize is the length of the metadata block at the start of every data file; the
// body follows it, page-aligned, so sendfile offsets are body offsets plus HeaderSize.
const HeaderSize = 4096

var magic = []byte("OFFLOAD1\n")

// Meta describes one version of a file on the base, as its HEAD and GET responses did.
type Meta struct {
	Key          string    `json:"key"`  // base host + path: what the entry is for
	Size         int64     `json:"size"` // body length
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"last_modified,omitempty"` // as the base sent it
	ContentType  string    `json:"content_type,omitempty"`
	Stored       time.Time `json:"stored"`
}

// ModTime is LastModified parsed, or the zero time.
func (m *Meta) ModTime() time.Time {
	t, _ := proto.ParseTime([]byte(m.LastModified))
	return t
}

// SameVersion reports whether two descriptions name the same bytes, by the original's
// rule: equal length, and a strong ETag that matches, or an equal Last-Modified. A weak
// ETag counts only together with an equal Last-Modified, and is compared by its opaque
// tag (RFC 9110's weak comparison): Apache marks a file's ETag weak for the first second
// after it changed and strong after that, with the same tag, so W/"x" and "x" of the
// same date and length are the one version Apache described twice.
func SameVersion(a, b *Meta) bool {
	if a.Size != b.Size {
		return false
	}
	if (a.ETag == "") != (b.ETag == "") {
		return false // one side lost or gained its ETag: nothing to say they agree
	}
	if a.ETag != "" {
		if opaqueTag(a.ETag) != opaqueTag(b.ETag) {
			return false
		}
		if !proto.IsWeakETag(a.ETag) && !proto.IsWeakETag(b.ETag) {
			return true
		}
	}
	return a.LastModified != "" && a.LastModified == b.LastModified
}

// opaqueTag is an entity-tag without its weakness indicator.
func opaqueTag(etag string) string {
	if proto.IsWeakETag(etag) {
		return etag[2:]
	}
	return etag
}

// keyName is the file name stem for a key: a hash, so no request path becomes a path.
func keyName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

// encodeHeader renders the metadata block for m.
func encodeHeader(m *Meta) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(magic)+len(js)+1 > HeaderSize {
		return nil, fmt.Errorf("metadata of %d bytes does not fit the %d-byte header", len(js), HeaderSize)
	}
	buf := make([]byte, HeaderSize)
	n := copy(buf, magic)
	n += copy(buf[n:], js)
	buf[n] = '\n'
	return buf, nil
}

// readHeader reads and checks the metadata block of a data file.
func readHeader(f *os.File) (*Meta, error) {
	buf := make([]byte, HeaderSize)
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	return parseHeader(buf)
}

// parseHeader decodes a metadata block.
func parseHeader(buf []byte) (*Meta, error) {
	if !bytes.HasPrefix(buf, magic) {
		return nil, fmt.Errorf("not a cache file")
	}
	js := buf[len(magic):]
	if i := bytes.IndexByte(js, '\n'); i >= 0 {
		js = js[:i]
	}
	var m Meta
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("decode header: %w", err)
	}
	if m.Size < 0 || m.Key == "" {
		return nil, fmt.Errorf("bad header")
	}
	return &m, nil
}
