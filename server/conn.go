package server

import (
	"bytes"
	"context"
	"errors"
	"math"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/proto"
)

// The phases of a connection.
const (
	phaseRead = iota // reading a request head
	phaseWait        // the cache is asking the base; conn.fetch wakes us with a result
	phaseSend        // sending a body from a file
)

// maxPerTurn bounds the bytes one connection sends per event-loop turn, so one fast
// client cannot starve the others on its loop.
const maxPerTurn = 1 << 20

// maxPerCall bounds one sendfile call. Measured on loopback against nginx (one client,
// 1 GiB, curl): 64 KiB calls 0.74x nginx's throughput, 128-256 KiB 1.0-1.1x, 512 KiB
// 0.9x, 4 MiB 0.8x: smaller calls let the receiver start on the first bytes sooner.
const maxPerCall = 256 << 10

// maxPipelined bounds the bytes a client may send ahead while a response is under way.
const maxPipelined = 64 << 10

// maxQueued bounds the answers gnet may hold for a client that pipelines requests for
// small files (answered from memory) faster than it reads them.
const maxQueued = 256 << 10

// result is the cache's answer, handed from conn.fetch to the event loop.
type result struct {
	h   *cache.Handle
	err error
}

// conn is one client connection. All of it but the atomics belongs to the event loop.
// Its size is most of a slow download's memory: about 600 bytes on amd64, of which the
// parsed request is 330 (slice headers that point into gnet's buffer, and the path's
// own backing array) and everything else a few words each, as noted.
type conn struct {
	srv    *Server    // 8 B
	gc     gnet.Conn  // 16 B
	peer   netip.Addr // 24 B: socket peer, for the per-address connection cap
	client netip.Addr // 24 B: who the request is counted against (X-Forwarded-For)
	wake   func()     // 8 B: calls gc.Wake; made once, handed to fills as a callback

	phase     uint8
	keepAlive bool
	head      bool // HEAD request: no body
	copyMode  bool // send with pread and Write: sendfile is off or failed here
	reading   bool // part of a request head has arrived

	deadline atomic.Int64 // 8 B: UnixNano after which the sweeper closes us; 0: none
	idle     atomic.Bool  // between requests: closed at once when draining
	closed   atomic.Bool  // OnClose ran
	// wakeQueued is set while a fill's wake-up of this connection is queued.
	wakeQueued atomic.Bool
	pending    atomic.Pointer[result] // 8 B: the cache's answer, while phaseWait

	req    proto.Request              // ~330 B
	held   *bytebufferpool.ByteBuffer // 8 B: copy of the head while phaseWait
	cancel context.CancelFunc         // 8 B: ends the cache request if we close first

	// The response under way.
	h      *cache.Handle // 8 B
	fd     int           // the data file's descriptor (shared with other readers)
	off    int64         // next body byte to send
	end    int64         // end of the current range
	ranges []proto.Range // 24 B: multi-range responses; nil otherwise
	part   int           // next part of a multi-range response
	slot   string        // 16 B: the limiter's download slot, "" if none
	status int
	sent   int64     // bytes sent (head excluded), for the log
	log    *logEntry // 8 B: the access-log line under way; nil when not logging
}

func newConn(s *Server, gc gnet.Conn, peer netip.Addr) *conn {
	c := &conn{srv: s, gc: gc, peer: peer, client: peer, fd: -1, copyMode: s.cfg.NoSendfile}
	c.wake = func() {
		// A fill calls this for every chunk that lands: one wake-up queued is enough.
		if c.wakeQueued.CompareAndSwap(false, true) {
			_ = gc.Wake(nil)
		}
	}
	c.setDeadline(s.cfg.HeaderTimeout)
	c.idle.Store(true)
	return c
}

func (c *conn) setDeadline(d time.Duration) {
	if d <= 0 {
		c.deadline.Store(0)
		return
	}
	c.deadline.Store(time.Now().Add(d).UnixNano())
}

// serve advances the state machine as far as it can without blocking.
func (c *conn) serve() gnet.Action {
	c.wakeQueued.Store(false)
	if r := c.pending.Swap(nil); r != nil {
		c.resume(r) // writes the head
		if c.phase == phaseRead && (!c.keepAlive || c.srv.draining.Load()) {
			return gnet.Close
		}
		if c.phase == phaseSend {
			// The body waits for a normal turn, so that every head ready now goes first.
			_ = c.gc.Wake(nil)
			return gnet.None
		}
	}
	for {
		switch c.phase {
		case phaseWait:
			return c.checkPipelined()
		case phaseSend:
			switch c.send() {
			case sendBlocked:
				return c.checkPipelined()
			case sendFailed:
				return gnet.Close
			}
			c.finish()
			if !c.keepAlive || c.srv.draining.Load() {
				return gnet.Close
			}
		}
		// phaseRead
		buf, _ := c.gc.Peek(-1)
		if len(buf) == 0 {
			return gnet.None
		}
		if c.gc.OutboundBuffered() > maxQueued {
			// Pipelined requests whose answers the client does not read: answer no more
			// until gnet has passed these on, so memory stays bounded.
			_ = c.gc.Flush()
			if c.gc.OutboundBuffered() > maxQueued {
				c.setDeadline(c.srv.cfg.Timeout)
				if c.waitWritable() == sendFailed {
					return gnet.Close
				}
				return gnet.None
			}
		}
		n, err := c.req.Parse(buf)
		if err == proto.ErrNeedMore {
			if !c.reading {
				c.reading = true
				c.idle.Store(false)
				c.setDeadline(c.srv.cfg.HeaderTimeout)
			}
			return gnet.None
		}
		c.reading = false
		c.idle.Store(false)
		if err != nil {
			var pe *proto.Error
			if !errors.As(err, &pe) {
				return gnet.Close
			}
			c.keepAlive, c.head = false, false
			c.startLog(buf)
			c.text(pe.Status, pe.Reason, "")
			return gnet.Close
		}
		c.begin(buf[:n])
		_, _ = c.gc.Discard(n)
		if c.phase == phaseRead && (!c.keepAlive || c.srv.draining.Load()) {
			return gnet.Close // answered at once (an error, robots.txt, a memory hit)
		}
	}
}

// between readies the connection for the next request.
func (c *conn) between() {
	c.idle.Store(true)
	c.setDeadline(c.srv.cfg.IdleTimeout)
}

// checkPipelined closes a client that piles up requests while one is under way.
func (c *conn) checkPipelined() gnet.Action {
	if c.gc.InboundBuffered() > maxPipelined {
		return gnet.Close
	}
	return gnet.None
}

const robots = "User-agent: *\nDisallow: /\n"

const acceleratorText = "Too many connections for this file from your address. This server allows one " +
	"download of a file at a time per address: please disable any download accelerator and try again."

// begin handles a parsed request whose head is raw.
func (c *conn) begin(raw []byte) {
	r := &c.req
	c.keepAlive = r.KeepAlive
	c.head = r.IsHead()
	c.client = c.srv.cfg.Limiter.ClientIP(c.peer, r.XForwardedFor)
	c.startLog(raw)
	switch {
	case !r.IsGet() && !c.head:
		c.text(405, "method not allowed: this server answers GET and HEAD", "GET, HEAD")
		return
	case string(r.Path) == "/robots.txt":
		c.writeSmall(200, "text/plain; charset=utf-8", robots)
		return
	case r.HasQuery:
		c.text(403, "query strings are not served by this offload server", "")
		return
	}
	if !c.head {
		slot, ok := c.srv.cfg.Limiter.StartDownload(c.client, string(r.Path))
		if !ok {
			c.srv.metrics.refusals.WithLabelValues("downloads per address and file").Inc()
			c.text(403, acceleratorText, "")
			return
		}
		c.slot = slot
	}
	if h := c.srv.cfg.Cache.Lookup(string(r.Path)); h != nil {
		c.respond(h)
		return
	}
	// Ask the base off the loop; the head is kept to evaluate Range and If-* later.
	c.held = bytebufferpool.Get()
	c.held.B = append(c.held.B, raw...)
	c.phase = phaseWait
	c.srv.metrics.inflight.Add(1) // a drain waits for this answer too
	c.setDeadline(0)              // the cache's own timeouts bound the wait
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.fetch(ctx, string(r.Path), string(r.RawPath), c.head, wantFrom(r))
}

// wantFrom is where a single "bytes=N-" or "bytes=N-M" range without If-Range starts: a
// reader the cache may serve from a window of its own when the fill is far behind N.
func wantFrom(r *proto.Request) int64 {
	if len(r.Range) == 0 || len(r.IfRange) > 0 {
		return 0
	}
	var buf [1]proto.Range
	ranges, err := proto.ParseRange(r.Range, math.MaxInt64, buf[:0])
	if err != nil || len(ranges) != 1 || bytes.Contains(r.Range, []byte("=-")) || bytes.IndexByte(r.Range, ',') >= 0 {
		return 0
	}
	return ranges[0].Start
}

// fetch runs in its own goroutine: it may block on the base, the loop must not.
func (c *conn) fetch(ctx context.Context, path, rawPath string, head bool, from int64) {
	var h *cache.Handle
	var err error
	if head {
		h, err = c.srv.cfg.Cache.Stat(ctx, path, rawPath) // a HEAD needs the metadata, not a fill
	} else {
		h, err = c.srv.cfg.Cache.GetFrom(ctx, path, rawPath, from)
	}
	c.pending.Store(&result{h: h, err: err})
	if c.closed.Load() {
		// OnClose may have run before the Store: whoever swaps the result out frees it.
		if r := c.pending.Swap(nil); r != nil && r.h != nil {
			r.h.Release()
		}
		return
	}
	// AsyncWrite of nothing, for its callback: gnet runs high-priority tasks before the
	// wake-ups of connections busy streaming, so the response head goes out at once
	// instead of waiting for every other connection's turn on the loop.
	_ = c.gc.AsyncWrite(nil, c.onResult)
}

// onResult runs on the loop when the cache's answer is in.
func (c *conn) onResult(gc gnet.Conn, err error) error {
	if err != nil || c.closed.Load() {
		return nil // closed meanwhile; OnClose freed the result
	}
	if c.serve() == gnet.Close {
		_ = gc.Close()
	}
	return nil
}

// resume takes the cache's answer on the loop.
func (c *conn) resume(r *result) {
	c.srv.metrics.inflight.Add(-1) // leaving phaseWait
	c.cancel()
	c.cancel = nil
	held := c.held
	c.held = nil
	defer bytebufferpool.Put(held)
	if _, err := c.req.Parse(held.B); err != nil {
		// Parsed once already; cannot happen.
		if r.h != nil {
			r.h.Release()
		}
		c.phase = phaseRead
		c.keepAlive = false
		c.text(500, "internal error", "")
		return
	}
	c.phase = phaseRead
	if r.err != nil {
		var ce *cache.Error
		if errors.As(r.err, &ce) {
			if ce.Location != "" {
				c.redirect(ce.Status, ce.Location)
			} else {
				c.text(ce.Status, ce.Reason, "")
			}
		} else {
			c.srv.cfg.Logf("server: %s: %v", c.req.Path, r.err)
			c.text(502, "the base server could not be asked", "")
		}
		return
	}
	c.respond(r.h)
}

// respond answers from a cache handle: head, then the body from memory or the file.
func (c *conn) respond(h *cache.Handle) {
	m := &h.Meta
	var rangeBuf [4]proto.Range
	status, ranges, _ := proto.Evaluate(&c.req, m.ETag, m.ModTime(), m.Size, rangeBuf[:0])
	hd := proto.Head{Status: status, ContentLength: -1, ETag: m.ETag, LastModified: m.LastModified,
		AcceptRanges: true, Close: !c.keepAlive}
	if h.Stale {
		hd.Warning = `110 - "Response is Stale"`
	}
	var body []byte // what to send from memory after the head
	var cr [64]byte
	switch {
	case status == 200:
		hd.ContentLength, hd.ContentType = m.Size, m.ContentType
	case status == 206 && len(ranges) == 1:
		hd.ContentLength, hd.ContentType = ranges[0].Length, m.ContentType
		hd.ContentRange = ranges[0].ContentRange(cr[:0], m.Size)
	case status == 206:
		hd.ContentLength = proto.MultipartLength(ranges, m.ContentType, m.Size)
		hd.ContentType = proto.MultipartType
	case status == 416:
		hd.ContentRange = strconv.AppendInt(append(cr[:0], "bytes */"...), m.Size, 10)
		body = []byte("range not satisfiable\n")
		hd.ContentLength, hd.ContentType = int64(len(body)), "text/plain; charset=utf-8"
	case status == 412:
		hd.ContentLength = 0
	}
	c.status = status
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	buf.B = hd.Append(buf.B)
	if c.head || (status != 200 && status != 206) {
		if c.head {
			body = nil
		}
		h.Release()
		c.writev(buf.B, body)
		c.finish()
		return
	}
	if h.Body != nil {
		switch {
		case status == 200:
			body = h.Body
		case len(ranges) == 1:
			body = h.Body[ranges[0].Start : ranges[0].Start+ranges[0].Length]
		default:
			for i, r := range ranges {
				buf.B = proto.AppendPartHead(buf.B, i, r, m.ContentType, m.Size)
				buf.B = append(buf.B, h.Body[r.Start:r.Start+r.Length]...)
			}
			buf.B = proto.AppendPartsEnd(buf.B)
			c.sent = int64(len(buf.B)) // approximately: the parts, the head counted too
		}
		h.Release()
		c.writev(buf.B, body)
		c.finish()
		return
	}
	if h.Base() > 0 && (status != 206 || len(ranges) != 1 || ranges[0].Start < h.Base()) {
		// A window holds only the bytes from its base; wantFrom asked for no other.
		h.Release()
		c.keepAlive = false
		c.text(500, "internal error: range window mismatch", "")
		return
	}
	_, _ = c.gc.Write(buf.B)
	c.h, c.fd = h, h.Fd()
	switch {
	case status == 200:
		c.off, c.end = 0, m.Size
	case len(ranges) == 1:
		c.off, c.end = ranges[0].Start, ranges[0].Start+ranges[0].Length
	default:
		c.ranges = append([]proto.Range(nil), ranges...)
		c.part = 0
		c.off, c.end = 0, 0
	}
	c.phase = phaseSend
	c.srv.metrics.inflight.Add(1)
	c.setDeadline(c.srv.cfg.Timeout)
}

func (c *conn) writev(head, body []byte) {
	if len(body) == 0 {
		_, _ = c.gc.Write(head)
		return
	}
	_, _ = c.gc.Writev([][]byte{head, body})
	c.sent += int64(len(body))
}

type sendResult int

const (
	sendDone sendResult = iota
	sendBlocked
	sendFailed
)

// send moves body bytes with sendfile until the body is done, the socket is full, the
// fill has no more bytes yet, or this turn's budget is spent.
func (c *conn) send() sendResult {
	budget := int64(maxPerTurn)
	for {
		if !c.copyMode && c.gc.OutboundBuffered() > 0 {
			// The head (or a part head) is queued in gnet: it must go out first.
			_ = c.gc.Flush()
			if c.gc.OutboundBuffered() > 0 {
				return c.waitWritable()
			}
		}
		if c.off >= c.end {
			if c.copyMode && c.gc.OutboundBuffered() > 0 {
				// Done only once gnet has passed on every byte queued.
				_ = c.gc.Flush()
				if c.gc.OutboundBuffered() > 0 {
					return c.waitWritable()
				}
			}
			if c.ranges == nil || c.part > len(c.ranges) {
				return sendDone
			}
			c.nextPart()
			continue
		}
		avail, err := c.h.Available()
		if err != nil {
			// The fill failed: end the connection early, never a silently short body.
			c.srv.cfg.Logf("server: %s: %v", c.req.Path, err)
			return sendFailed
		}
		if avail <= c.off {
			if c.h.Wait(avail, c.wake) {
				c.setDeadline(0) // waiting for the base, whose idle timeout applies
				return sendBlocked
			}
			continue
		}
		n := min(min(c.end, avail)-c.off, budget, maxPerCall)
		off := c.h.FileOffset(c.off)
		var w int
		if c.copyMode {
			w, err = c.copyOut(off, int(n))
		} else {
			w, err = sendfile(c.gc.Fd(), c.fd, &off, int(n))
			if (err == unix.EINVAL || err == unix.ENOSYS || err == unix.EOPNOTSUPP) && w <= 0 {
				c.copyMode = true // a file system without sendfile: copy instead
				continue
			}
		}
		if w > 0 {
			c.off += int64(w)
			c.sent += int64(w)
			budget -= int64(w)
			c.setDeadline(c.srv.cfg.Timeout)
		}
		switch {
		case err == unix.EAGAIN:
			return c.waitWritable()
		case err == unix.EINTR:
			continue
		case err != nil:
			return sendFailed // the client went away
		case w == 0:
			c.srv.cfg.Logf("server: %s: data file shorter than its metadata", c.req.Path)
			return sendFailed
		}
		if budget <= 0 {
			_ = c.gc.Wake(nil) // yield to the loop's other connections, then go on
			return sendBlocked
		}
	}
}

// nextPart writes the head of the next part of a multi-range body, or the closing
// delimiter after the last.
func (c *conn) nextPart() {
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	m := &c.h.Meta
	if c.part < len(c.ranges) {
		r := c.ranges[c.part]
		buf.B = proto.AppendPartHead(buf.B, c.part, r, m.ContentType, m.Size)
		c.off, c.end = r.Start, r.Start+r.Length
	} else {
		buf.B = proto.AppendPartsEnd(buf.B)
	}
	c.part++
	c.sent += int64(len(buf.B))
	_, _ = c.gc.Write(buf.B)
}

// copyBufs are the fallback path's buffers, used only where sendfile cannot serve.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyChunk); return &b }}

const (
	copyChunk    = 64 << 10 // one pread and Write
	copyLowWater = 64 << 10 // stop copying while gnet holds this much unsent
)

// copyOut is the fallback for sendfile: pread into a pooled buffer and Write it, which
// gnet queues when the socket is full; past the low-water mark it waits instead, so a
// connection never holds more than about two chunks.
func (c *conn) copyOut(off int64, n int) (int, error) {
	if c.gc.OutboundBuffered() >= copyLowWater {
		_ = c.gc.Flush()
		if c.gc.OutboundBuffered() >= copyLowWater {
			return 0, unix.EAGAIN
		}
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	r, err := unix.Pread(c.fd, (*bp)[:min(n, copyChunk)], off)
	if r <= 0 {
		return 0, err
	}
	_, err = c.gc.Write((*bp)[:r])
	return r, err
}

func (c *conn) waitWritable() sendResult {
	if err := c.srv.poller.arm(c.gc.Fd(), c.gc); err != nil {
		c.srv.cfg.Logf("server: write poller: %v", err)
		return sendFailed
	}
	return sendBlocked
}

// finish ends the response under way: log, metrics, and every slot and handle freed.
func (c *conn) finish() {
	if c.phase == phaseSend {
		c.srv.metrics.inflight.Add(-1)
	}
	if c.h != nil {
		c.h.Release()
		c.h = nil
	}
	c.fd = -1
	c.srv.cfg.Limiter.EndDownload(c.slot)
	c.slot = ""
	c.srv.metrics.request(c.status, c.sent)
	if c.log != nil {
		c.log.status, c.log.bytes = c.status, c.sent
		c.srv.cfg.AccessLog.write(c.log)
		c.log = nil
	}
	c.ranges, c.part, c.sent, c.status = nil, 0, 0, 0
	c.phase = phaseRead
	c.between()
}

// close runs from OnClose: whatever the connection was doing, free it.
func (c *conn) close() {
	c.closed.Store(true)
	if c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	if r := c.pending.Swap(nil); r != nil && r.h != nil {
		r.h.Release()
	}
	if c.phase == phaseWait {
		c.srv.metrics.inflight.Add(-1)
	}
	if c.held != nil {
		bytebufferpool.Put(c.held)
		c.held = nil
	}
	if c.phase != phaseRead || c.slot != "" || c.log != nil {
		if c.status == 0 {
			c.status = 499 // closed before an answer: nginx's "client closed request"
		}
		c.finish()
	}
}

// startLog begins the access-log line for the request whose head is raw.
func (c *conn) startLog(raw []byte) {
	if c.srv.cfg.AccessLog == nil {
		return
	}
	line := raw
	for len(line) > 0 && (line[0] == '\r' || line[0] == '\n') {
		line = line[1:]
	}
	for i, b := range line {
		if b == '\r' || b == '\n' {
			line = line[:i]
			break
		}
	}
	c.log = &logEntry{
		client:  c.client.String(),
		when:    time.Now(),
		request: string(line),
		referer: string(c.req.Referer),
		agent:   string(c.req.UserAgent),
	}
}

// text answers with a short plain-text reason; allow is the Allow header for a 405.
func (c *conn) text(status int, reason, allow string) {
	body := reason + "\n"
	hd := proto.Head{Status: status, ContentLength: int64(len(body)), ContentType: "text/plain; charset=utf-8",
		Allow: allow, Close: !c.keepAlive}
	c.writeHead(&hd, body)
}

func (c *conn) redirect(status int, location string) {
	hd := proto.Head{Status: status, ContentLength: 0, Location: location, Close: !c.keepAlive}
	c.writeHead(&hd, "")
}

func (c *conn) writeSmall(status int, ctype, body string) {
	hd := proto.Head{Status: status, ContentLength: int64(len(body)), ContentType: ctype, Close: !c.keepAlive}
	c.writeHead(&hd, body)
}

func (c *conn) writeHead(hd *proto.Head, body string) {
	buf := bytebufferpool.Get()
	buf.B = hd.Append(buf.B)
	if !c.head {
		buf.B = append(buf.B, body...)
		c.sent = int64(len(body))
	}
	_, _ = c.gc.Write(buf.B)
	bytebufferpool.Put(buf)
	c.status = hd.Status
	c.finish()
}

// sendfile is sendfile(2) as a raw system call. The socket is non-blocking and the file
// is in the page cache, so the call never sleeps; unix.Sendfile's Syscall would tell the
// runtime it might, and for every large copy the runtime would hand the loop's P to
// another thread and spin up idle threads, which cost more CPU than the copy saves.
func sendfile(out, in int, off *int64, n int) (int, error) {
	w, _, errno := unix.RawSyscall6(unix.SYS_SENDFILE, uintptr(out), uintptr(in), uintptr(unsafe.Pointer(off)), uintptr(n), 0, 0)
	if errno != 0 {
		return int(w), errno
	}
	return int(w), nil
}
