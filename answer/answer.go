// Package answer decides what the offload server answers to a request: the checks
// every request meets before the cache (method, robots.txt, query strings), the 403
// for download accelerators, and the cache's answer turned into a status, a head and
// a plan for the body (conditionals, ranges, multipart, errors of the base). It moves
// no bytes. The event-loop server (package server, over plain HTTP and HTTPS) and the
// CGI program (package cgi) send what it plans, so they answer alike by construction.
package answer

import (
	"bytes"
	"errors"
	"math"
	"strconv"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/proto"
)

// Plan is one answer: a head, and its body from memory or from a cache data file.
type Plan struct {
	// Head is the status and the header fields; the sender sets Close.
	Head proto.Head
	// Body is sent after the head, from memory, unless the request is HEAD: a short
	// text, a cached small file, or a multi-range body built from one. Immutable.
	Body []byte
	// File, when set, is the cache handle the body is read from: [Off, End) for a 200
	// or one range, or each of Ranges as the parts of a multipart body (see
	// proto.AppendPartHead). The plan owns the handle: its sender releases it.
	File     *cache.Handle
	Off, End int64
	Ranges   []proto.Range
	// CloseConn says the connection must end after this answer.
	CloseConn bool
}

const robots = "User-agent: *\nDisallow: /\n"

const acceleratorText = "Too many connections for this file from your address. This server allows one " +
	"download of a file at a time per address: please disable any download accelerator and try again."

// Before answers what needs neither the limiter nor the cache: a method other than
// GET and HEAD, /robots.txt (offload hosts are not to be indexed), a query string.
// ok false: the request goes on to the limiter and the cache.
func Before(r *proto.Request) (p Plan, ok bool) {
	switch {
	case !r.IsGet() && !r.IsHead():
		return Text(405, "method not allowed: this server answers GET and HEAD", "GET, HEAD"), true
	case string(r.Path) == "/robots.txt":
		return Small(200, "text/plain; charset=utf-8", robots), true
	case r.HasQuery:
		return Text(403, "query strings are not served by this offload server", ""), true
	}
	return Plan{}, false
}

// Accelerator is the 403 for a second download of one file from one address at once.
func Accelerator() Plan { return Text(403, acceleratorText, "") }

// Text is a short plain-text answer; allow is the Allow field of a 405.
func Text(status int, reason, allow string) Plan {
	p := Small(status, "text/plain; charset=utf-8", reason+"\n")
	p.Head.Allow = allow
	return p
}

// Small is an answer whose body is body.
func Small(status int, ctype, body string) Plan {
	return Plan{Head: proto.Head{Status: status, ContentLength: int64(len(body)), ContentType: ctype},
		Body: []byte(body)}
}

// Redirect relays a redirect of the base.
func Redirect(status int, location string) Plan {
	return Plan{Head: proto.Head{Status: status, ContentLength: 0, Location: location}}
}

// ACME is the answer to an ACME HTTP-01 challenge: its key authorization, or a 404
// when keyAuth is nil.
func ACME(keyAuth []byte) Plan {
	if keyAuth == nil {
		return Text(404, "no such ACME challenge", "")
	}
	return Small(200, "application/octet-stream", string(keyAuth))
}

// Failed is the answer when the cache could not give a handle: the base's own status
// (or redirect) when it gave one, else 502. logf hears about the failures that are
// not the base's answer.
func Failed(path []byte, err error, logf func(string, ...any)) Plan {
	var ce *cache.Error
	if errors.As(err, &ce) {
		if ce.Location != "" {
			return Redirect(ce.Status, ce.Location)
		}
		return Text(ce.Status, ce.Reason, "")
	}
	logf("server: %s: %v", path, err)
	return Text(502, "the base server could not be asked", "")
}

// Respond answers r from a cache handle, which the plan takes: released here when
// the body does not come from the file.
func Respond(r *proto.Request, h *cache.Handle) Plan {
	m := &h.Meta
	var rangeBuf [4]proto.Range
	status, ranges, _ := proto.Evaluate(r, m.ETag, m.ModTime(), m.Size, rangeBuf[:0])
	p := Plan{Head: proto.Head{Status: status, ContentLength: -1, ETag: m.ETag, LastModified: m.LastModified,
		AcceptRanges: true}}
	if h.Stale {
		p.Head.Warning = `110 - "Response is Stale"`
	}
	hd := &p.Head
	switch {
	case status == 200:
		hd.ContentLength, hd.ContentType = m.Size, m.ContentType
	case status == 206 && len(ranges) == 1:
		hd.ContentLength, hd.ContentType = ranges[0].Length, m.ContentType
		hd.ContentRange = ranges[0].ContentRange(nil, m.Size)
	case status == 206:
		hd.ContentLength = proto.MultipartLength(ranges, m.ContentType, m.Size)
		hd.ContentType = proto.MultipartType
	case status == 416:
		hd.ContentRange = strconv.AppendInt([]byte("bytes */"), m.Size, 10)
		p.Body = []byte("range not satisfiable\n")
		hd.ContentLength, hd.ContentType = int64(len(p.Body)), "text/plain; charset=utf-8"
	case status == 412:
		hd.ContentLength = 0
	}
	if r.IsHead() || (status != 200 && status != 206) {
		h.Release()
		return p
	}
	if h.Body != nil {
		// A small file kept in memory: the bytes are immutable, the handle not needed.
		switch {
		case status == 200:
			p.Body = h.Body
		case len(ranges) == 1:
			p.Body = h.Body[ranges[0].Start : ranges[0].Start+ranges[0].Length]
		default:
			var b []byte
			for i, rg := range ranges {
				b = proto.AppendPartHead(b, i, rg, m.ContentType, m.Size)
				b = append(b, h.Body[rg.Start:rg.Start+rg.Length]...)
			}
			p.Body = proto.AppendPartsEnd(b)
		}
		h.Release()
		return p
	}
	if h.Base() > 0 && (status != 206 || len(ranges) != 1 || ranges[0].Start < h.Base() ||
		ranges[0].Start+ranges[0].Length > h.End()) {
		// A window holds only the bytes it was asked for; WantRange asked for no other.
		h.Release()
		p = Text(500, "internal error: range window mismatch", "")
		p.CloseConn = true
		return p
	}
	p.File = h
	switch {
	case status == 200:
		p.Off, p.End = 0, m.Size
	case len(ranges) == 1:
		p.Off, p.End = ranges[0].Start, ranges[0].Start+ranges[0].Length
	default:
		p.Ranges = append([]proto.Range(nil), ranges...)
	}
	return p
}

// WantRange is the one range of a single "bytes=N-" or "bytes=N-M" range without
// If-Range, as [from, end) with end 0 for "to the end": a reader the cache may serve
// from a window of its own when the fill is far behind N (cache.GetFrom).
func WantRange(r *proto.Request) (from, end int64) {
	if len(r.Range) == 0 || len(r.IfRange) > 0 {
		return 0, 0
	}
	var buf [1]proto.Range
	ranges, err := proto.ParseRange(r.Range, math.MaxInt64, buf[:0])
	if err != nil || len(ranges) != 1 || bytes.Contains(r.Range, []byte("=-")) || bytes.IndexByte(r.Range, ',') >= 0 {
		return 0, 0
	}
	if ranges[0].Start+ranges[0].Length < math.MaxInt64 {
		end = ranges[0].Start + ranges[0].Length // "N-M": the client gave an end
	}
	return ranges[0].Start, end
}
