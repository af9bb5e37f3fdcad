package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"

	"github.com/modoffload/offload/answer"
	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/proto"
)

// The phases of a connection.
const (
	phaseRead      = iota // reading a request head
	phaseWait             // the cache is asking the base; conn.fetch wakes us with a result
	phaseSend             // sending a body from a file
	phaseLinger           // answered and half-closed: reading what the client still sends, then closing
	phaseHandshake        // HTTPS: the TLS handshake runs in its goroutine (see tls.go)
)

// maxPerTurn bounds the bytes one connection sends with sendfile per event-loop turn,
// so one fast client cannot starve the others on its loop: a request that arrives on a
// loop busy with N downloads waits for N turns. 256 KiB (one sendfile call) from 1 MiB:
// one download's throughput did not move (1 GiB to curl, six interleaved rounds each,
// medians 2577 and 2475 MiB/s), and beside 8 cold readers the hot file's p99 was at
// least as good with less spread between rounds (scripts/cold-ab.sh, ratio to
// nginx-aio: medians 0.90 against 1.11 in 8 rounds of 128 MiB files, 1.05 against 1.06
// in 6 rounds of 384 MiB, whose rounds spread 0.78-1.18 against 0.71-1.84).
const maxPerTurn = 256 << 10

// maxPerTurnTLS is the same bound for HTTPS, whose bytes cost their encryption: it
// stays at 1 MiB, where its throughput was measured against nginx (scripts/bench.sh 6).
const maxPerTurnTLS = 1 << 20

// maxPerCall bounds one sendfile call. Measured on loopback against nginx (one client,
// 1 GiB, curl): 64 KiB calls 0.74x nginx's throughput, 128-256 KiB 1.0-1.1x, 512 KiB
// 0.9x, 4 MiB 0.8x: smaller calls let the receiver start on the first bytes sooner.
const maxPerCall = 256 << 10

// maxInbound bounds the bytes a client may send that we have not parsed yet: requests
// pipelined while a response is under way or waits for the client to read. A client
// past it is closed. gnet reads up to its read buffer (64 KiB) before we can check, so
// one connection holds at most maxInbound + 64 KiB of input.
const maxInbound = 64 << 10

// lingerTime is how long a connection we close after an answer goes on reading (and
// dropping) what the client still sends, so that the kernel does not answer that input
// with a reset that destroys the answer before the client reads it ("lingering close",
// as nginx and Apache do). The client's own close ends it sooner.
const lingerTime = 5 * time.Second

// result is the cache's answer, handed from conn.fetch to the event loop.
type result struct {
	h   *cache.Handle
	err error
	// An ACME HTTP-01 challenge's answer instead of a cache handle: the key
	// authorization, nil for "no such challenge".
	acme    bool
	keyAuth []byte
}

// errBlocked means the socket is full: the write poller wakes the connection later.
var errBlocked = errors.New("server: socket full")

// conn is one client connection. All of it but the atomics belongs to the event loop.
// Its size is most of a slow download's memory: about 650 bytes on amd64, of which the
// parsed request is 330 (slice headers that point into gnet's buffer, and the path's
// own backing array) and everything else a few words each, as noted.
//
// What one connection can hold at most, whatever the client does: this struct; its
// unparsed input, up to maxInbound plus one gnet read (closed past that); a request
// head of at most proto.MaxRequestLine + proto.MaxHeaderBytes while it arrives; and
// output the socket did not take yet — at most one response head and, for a body from
// memory, a reference to the cached bytes (a multi-range body from memory is copied:
// at most 64 KiB of parts plus 64 part heads). No next request is read before that
// output is out, so pipelined answers never pile up. A body from a file is never
// buffered: sendfile moves it when the socket can take it.
type conn struct {
	srv    *Server    // 8 B
	gc     gnet.Conn  // 16 B
	peer   netip.Addr // 24 B: socket peer, for the per-address connection cap
	client netip.Addr // 24 B: who the request is counted against (X-Forwarded-For)
	wake   func()     // 8 B: calls gc.Wake; made once, handed to fills as a callback

	phase     uint8
	keepAlive bool
	head      bool // HEAD request: no body
	copyMode  bool // send with pread and write: sendfile is off or failed here
	reading   bool // part of a request head has arrived
	failed    bool // a write to the client failed: close, send nothing more
	shut      bool // lingering: our side is shut down for writing
	// pendingCounted: output waiting for the socket is counted in flight (notePending).
	pendingCounted bool

	deadline atomic.Int64 // 8 B: UnixNano after which the sweeper closes us; 0: none
	idle     atomic.Bool  // between requests: closed at once when draining
	closed   atomic.Bool  // OnClose ran
	// wakeQueued is set while a fill's wake-up of this connection is queued.
	wakeQueued atomic.Bool
	// fillWaiting is set while fillWake is registered with the fill we follow, so that
	// each turn does not add another (a client's every segment is a turn).
	fillWaiting atomic.Bool
	fillWake    func()                 // 8 B: made on first use
	pending     atomic.Pointer[result] // 8 B: the cache's answer, while phaseWait

	tls *tlsState // 8 B: nil on a plain HTTP connection

	req    proto.Request              // ~330 B
	held   *bytebufferpool.ByteBuffer // 8 B: copy of the head while phaseWait
	cancel context.CancelFunc         // 8 B: ends the cache request if we close first

	// Output the socket did not take yet: out first, then outBody. Both nil when none.
	out     *bytebufferpool.ByteBuffer // 8 B
	outBody []byte                     // 24 B: immutable bytes (a cached body); never copied

	// The response under way.
	h      *cache.Handle // 8 B
	fd     int           // the data file's descriptor (shared with other readers)
	disk   *diskJob      // 8 B: the disk pool's read of our next bytes, while it runs
	loaded int64         // the data file is known in memory below this offset (a worker read it)
	// requested is how far the kernel was asked to read ahead for this download; 0
	// until it first met the disk (downloads from memory never prefetch).
	requested int64
	// jobFull: the last disk job stopped at a full socket (see send).
	jobFull bool
	off     int64         // next body byte to send
	end     int64         // end of the current range
	ranges  []proto.Range // 24 B: multi-range responses; nil otherwise
	part    int           // next part of a multi-range response
	slot    string        // 16 B: the limiter's download slot, "" if none
	status  int
	sent    int64     // bytes sent (head excluded), for the log
	log     *logEntry // 8 B: the access-log line under way; nil when not logging
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

// serve advances the state machine as far as it can without blocking. It runs on the
// connection's loop only (OnTraffic, or the callback of the cache's answer), and gnet
// closes the connection only after it returns gnet.Close: see emit for why that holds.
func (c *conn) serve() gnet.Action {
	c.wakeQueued.Store(false)
	if c.failed {
		return gnet.Close
	}
	act := c.advance()
	if c.failed || act == gnet.Close {
		// gnet closes it once we return (or, from onResult, once the queued Close
		// runs); until then every turn answers Close again and does nothing else.
		c.failed = true
		return gnet.Close
	}
	return act
}

func (c *conn) advance() gnet.Action {
	if c.phase == phaseHandshake {
		if act, done := c.handshake(); !done {
			return act
		}
	}
	if c.phase == phaseLinger {
		return c.linger()
	}
	// Output the socket did not take yet goes before anything else.
	if act, blocked := c.flushFirst(); blocked {
		return act
	}
	if r := c.pending.Swap(nil); r != nil {
		c.resume(r) // writes the head
		if c.failed {
			return gnet.Close
		}
		if c.phase == phaseRead && c.closeAfterAnswer() {
			return c.linger()
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
			return c.checkInbound()
		case phaseSend:
			switch c.send() {
			case sendBlocked:
				return c.checkInbound()
			case sendFailed:
				return gnet.Close
			}
			c.finish()
			if c.closeAfterAnswer() {
				return c.linger()
			}
		}
		// phaseRead: the next request only once the last answer is out, so that a
		// client that pipelines without reading holds one answer, not thousands.
		if act, blocked := c.flushFirst(); blocked {
			return act
		}
		buf := c.inbound()
		if c.failed {
			return gnet.Close // a bad TLS record: what was decrypted before it is not answered
		}
		if len(buf) == 0 {
			if c.tls != nil && c.tls.eof {
				return gnet.Close // the client ended its side with nothing left to answer
			}
			return gnet.None
		}
		n, err := c.req.Parse(buf)
		if err == proto.ErrNeedMore {
			if c.tls != nil && c.tls.eof {
				return gnet.Close // the client ended its side in the middle of a head
			}
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
			allow := ""
			if pe.Status == 405 {
				allow = "GET, HEAD"
			}
			c.text(pe.Status, pe.Reason, allow)
			return c.linger() // the client may still be sending: let the answer reach it
		}
		c.begin(buf[:n])
		c.consume(n)
		if c.failed {
			return gnet.Close
		}
		if c.phase == phaseRead && c.closeAfterAnswer() {
			return c.linger() // answered at once (an error, robots.txt, a memory hit)
		}
	}
}

// flushFirst writes the output still pending; blocked says it could not all go (the
// socket is full, or the client is gone), and act is then what advance returns.
func (c *conn) flushFirst() (act gnet.Action, blocked bool) {
	if !c.outPending() {
		return gnet.None, false
	}
	switch err := c.flush(); {
	case err == errBlocked:
		return c.checkInbound(), true
	case err != nil:
		return gnet.Close, true
	}
	return gnet.None, false
}

// closeAfterAnswer says whether the connection ends after the answer just given.
func (c *conn) closeAfterAnswer() bool { return !c.keepAlive || c.srv.draining.Load() }

// linger ends a connection after an answer: once the answer is out (the send timeout
// bounds that, as for any answer), shut down our side for writing, then read and drop
// whatever the client still sends until it closes or lingerTime passes (the sweeper
// closes it then). Input is dropped from the start, so it never piles up.
func (c *conn) linger() gnet.Action {
	if c.phase != phaseLinger {
		c.phase = phaseLinger
		if c.outPending() {
			c.idle.Store(false)
			c.setDeadline(c.srv.cfg.Timeout)
		} else {
			c.idle.Store(true) // a drain closes it at once
			c.setDeadline(lingerTime)
		}
	}
	c.dropInbound()
	for {
		if c.outPending() {
			switch err := c.flush(); {
			case err == errBlocked:
				return gnet.None // the deadline bounds the wait
			case err != nil:
				return gnet.Close
			}
		}
		if c.tls == nil || c.tls.notified {
			break
		}
		c.tls.notified = true
		c.tlsCloseWrite() // close_notify: the answer ends here, not truncated
	}
	if !c.shut {
		c.shut = true
		if err := unix.Shutdown(c.gc.Fd(), unix.SHUT_WR); err != nil {
			return gnet.Close
		}
	}
	return gnet.None
}

// between readies the connection for the next request.
func (c *conn) between() {
	if c.outPending() {
		// The answer still waits for the client: the send timeout runs, and flush calls
		// between again once it is out.
		c.idle.Store(false)
		c.setDeadline(c.srv.cfg.Timeout)
		return
	}
	c.idle.Store(true)
	c.setDeadline(c.srv.cfg.IdleTimeout)
}

// checkInbound closes a client that piles up input while it cannot be served.
func (c *conn) checkInbound() gnet.Action {
	n := c.gc.InboundBuffered()
	if c.tls != nil && c.tls.in != nil {
		n += len(c.tls.in.B)
	}
	if n > maxInbound {
		return gnet.Close
	}
	return gnet.None
}

// begin handles a parsed request whose head is raw.
func (c *conn) begin(raw []byte) {
	r := &c.req
	c.keepAlive = r.KeepAlive
	c.head = r.IsHead()
	c.client = c.srv.cfg.Limiter.ClientIP(c.peer, r.XForwardedFor)
	c.startLog(raw)
	if p, ok := answer.Before(r); ok {
		c.answer(p)
		return
	}
	if c.srv.cfg.ACMEChallenge != nil && bytes.HasPrefix(r.Path, acmePrefix) {
		c.wait(raw)
		go c.challenge(c.cancelCtx(), string(r.Path[len(acmePrefix):]))
		return
	}
	if !c.head {
		slot, ok := c.srv.cfg.Limiter.StartDownload(c.client, string(r.Path))
		if !ok {
			c.srv.metrics.refusals.WithLabelValues("downloads per address and file").Inc()
			c.answer(answer.Accelerator())
			return
		}
		c.slot = slot
	}
	if h := c.srv.cfg.Cache.LookupFor(string(r.Path), c.client); h != nil {
		c.answer(answer.Respond(r, h))
		return
	}
	// Ask the base off the loop; the head is kept to evaluate Range and If-* later.
	c.wait(raw)
	from, end := answer.WantRange(r)
	go c.fetch(c.cancelCtx(), string(r.Path), c.head, from, end)
}

// acmePrefix is where an ACME CA looks for its HTTP-01 challenges.
var acmePrefix = []byte("/.well-known/acme-challenge/")

// wait keeps the request head raw and waits for an answer made off the loop, which
// comes back through c.pending and onResult.
func (c *conn) wait(raw []byte) {
	c.held = bytebufferpool.Get()
	c.held.B = append(c.held.B, raw...)
	c.phase = phaseWait
	c.srv.metrics.inflight.Add(1) // a drain waits for this answer too
	c.setDeadline(0)              // the cache's own timeouts bound the wait
}

// cancelCtx is the context of the work done off the loop for this request: cancelled
// if the connection closes first.
func (c *conn) cancelCtx() context.Context {
	ctx, cancel := context.WithCancel(cache.WithClient(context.Background(), c.client))
	c.cancel = cancel
	return ctx
}

// challenge asks the ACME client for a challenge's answer, off the loop (it may read
// its cache from the disk).
func (c *conn) challenge(ctx context.Context, token string) {
	keyAuth, ok := c.srv.cfg.ACMEChallenge(ctx, token)
	if !ok {
		keyAuth = nil
	}
	c.deliver(&result{acme: true, keyAuth: keyAuth})
}

// fetch runs in its own goroutine: it may block on the base, the loop must not. path
// is the cleaned path: the cache builds the base's request from it, never from the
// client's bytes.
func (c *conn) fetch(ctx context.Context, path string, head bool, from, end int64) {
	var h *cache.Handle
	var err error
	if head {
		h, err = c.srv.cfg.Cache.Stat(ctx, path) // a HEAD needs the metadata, not a fill
	} else {
		h, err = c.srv.cfg.Cache.GetFrom(ctx, path, from, end)
	}
	c.deliver(&result{h: h, err: err})
}

// deliver hands an answer made off the loop to the connection's loop.
func (c *conn) deliver(r *result) {
	c.pending.Store(r)
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
	// Leaving phaseWait: counted out only once the answer is under way (respond counts
	// a body in again), so a drain never sees zero in between and cuts the download.
	defer c.srv.metrics.inflight.Add(-1)
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
	switch {
	case r.acme:
		c.answer(answer.ACME(r.keyAuth))
	case r.err != nil:
		c.answer(answer.Failed(c.req.Path, r.err, c.srv.cfg.Logf))
	default:
		c.answer(answer.Respond(&c.req, r.h))
	}
}

// answer sends a plan: the head, then its body from memory at once, or readies the
// send of its body from the file.
func (c *conn) answer(p answer.Plan) {
	if p.CloseConn {
		c.keepAlive = false
	}
	p.Head.Close = !c.keepAlive
	c.status = p.Head.Status
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	buf.B = p.Head.Append(buf.B)
	if p.File == nil {
		body := p.Body
		if c.head {
			body = nil
		}
		// Done once written: the slot goes first, so a client that reads the body and
		// asks again at once never meets its own finished download.
		c.srv.cfg.Limiter.EndDownload(c.slot)
		c.slot = ""
		c.emit(buf.B, body)
		c.sent += int64(len(body))
		c.finish()
		return
	}
	c.emit(buf.B, nil)
	c.h, c.fd, c.loaded, c.requested = p.File, p.File.Fd(), 0, 0
	c.off, c.end = p.Off, p.End
	if p.Ranges != nil {
		c.ranges, c.part = p.Ranges, 0
		c.off, c.end = 0, 0
	}
	c.phase = phaseSend
	c.srv.metrics.inflight.Add(1)
	c.setDeadline(c.srv.cfg.Timeout)
	if c.tls != nil && c.tls.in == nil {
		trimTLS(c.tls.tc) // a download may wait long for its client: hold no input buffer
	}
}

// emit writes head, then body, to the client: the one way bytes other than sendfile's
// reach a socket. What the socket does not take now waits in c.out (a copy of the rest
// of head) and c.outBody (the rest of body, not copied: callers pass only immutable
// bytes), and goes out first on the next turn.
//
// The invariant that makes closing safe lives here: gnet's Conn.Write, Writev and
// Flush close the connection themselves when the socket write fails, running OnClose
// (which frees the handle, the slot and the file this connection reads) in the middle
// of the caller's stack, after which the fd number may already belong to a new client
// or a fill's .part file. So this package never calls them. Every write is a system
// call on the fd (emit, flush, sendfile, copyOut) whose failure only sets c.failed;
// serve then returns gnet.Close, and gnet closes the connection after our code is off
// the stack. Together with gnet ignoring wake-ups of closed connections, this means no
// state of a connection is used after its close and no fd after its close.
func (c *conn) emit(head, body []byte) {
	if c.failed {
		return
	}
	if c.outPending() {
		// Not reached today (callers flush first); keep the order if it ever is.
		c.queue(head, body)
		return
	}
	n, err := c.write2(head, body)
	switch {
	case err == unix.EAGAIN:
		n = 0
	case err != nil:
		c.failed = true
		return
	}
	if n < len(head) {
		c.queue(head[n:], body)
	} else if n-len(head) < len(body) {
		c.queue(nil, body[n-len(head):])
	}
}

// queue keeps bytes the socket did not take, in order. While any wait, the answer is
// in flight: a drain waits for it and does not take the connection for idle.
func (c *conn) queue(head, body []byte) {
	if len(c.outBody) > 0 && (len(head) > 0 || len(body) > 0) {
		// More after a kept body: copy that body, so the order holds.
		if c.out == nil {
			c.out = bytebufferpool.Get()
		}
		c.out.B = append(c.out.B, c.outBody...)
		c.outBody = nil
	}
	if len(head) > 0 {
		if c.out == nil {
			c.out = bytebufferpool.Get()
		}
		c.out.B = append(c.out.B, head...)
	}
	if len(body) > 0 {
		c.outBody = body
	}
	c.notePending()
}

// notePending counts output that waits for the socket as in flight, once: a drain
// waits for it and does not take the connection for idle.
func (c *conn) notePending() {
	if !c.pendingCounted && c.outPending() {
		c.pendingCounted = true
		c.srv.metrics.inflight.Add(1)
		c.idle.Store(false)
	}
}

// noteFlushed ends what notePending counted once all output is out.
func (c *conn) noteFlushed() {
	if !c.pendingCounted || c.outPending() {
		return
	}
	c.pendingCounted = false
	c.srv.metrics.inflight.Add(-1)
	switch {
	case c.phase == phaseRead && !c.reading:
		c.between()
	case c.phase == phaseLinger:
		c.idle.Store(true)
		c.setDeadline(lingerTime) // the answer is out: now the lingering time
	}
}

func (c *conn) outPending() bool {
	return c.out != nil || len(c.outBody) > 0 || c.tls != nil && len(c.tls.left) > 0
}

// write2 writes a then b to the client, as one write where it can; it returns how
// many bytes of the two the connection took (for HTTPS: encrypted and written, or
// kept as records in c.tls.left), unix.EAGAIN when none.
func (c *conn) write2(a, b []byte) (int, error) {
	if c.tls != nil {
		return c.tlsWrite(a, b)
	}
	for {
		var n int
		var err error
		switch {
		case len(b) == 0:
			n, err = unix.Write(c.gc.Fd(), a)
		case len(a) == 0:
			n, err = unix.Write(c.gc.Fd(), b)
		default:
			n, err = unix.Writev(c.gc.Fd(), [][]byte{a, b})
		}
		if err != unix.EINTR {
			return n, err
		}
	}
}

// inbound is the input received and not parsed yet (for HTTPS, decrypted).
func (c *conn) inbound() []byte {
	if c.tls != nil {
		return c.tlsInbound()
	}
	buf, _ := c.gc.Peek(-1)
	return buf
}

// consume drops n bytes of parsed input.
func (c *conn) consume(n int) {
	if c.tls != nil {
		c.tlsConsume(n)
		return
	}
	_, _ = c.gc.Discard(n)
}

// dropInbound drops all input, received and to come (lingering).
func (c *conn) dropInbound() {
	_, _ = c.gc.Discard(-1)
	if c.tls != nil {
		c.tlsConsume(math.MaxInt)
	}
}

// flush writes what emit queued: nil once all is out, errBlocked when the socket is
// full (the write poller wakes us), another error when the client is gone.
func (c *conn) flush() error {
	for c.outPending() {
		if c.tls != nil && len(c.tls.left) > 0 {
			// Records the socket did not take go before any other byte.
			switch err := c.tlsFlushLeft(); {
			case err == unix.EAGAIN:
				if c.waitWritable() == sendFailed {
					return err
				}
				return errBlocked
			case err != nil:
				return err
			}
			c.noteFlushed()
			continue
		}
		var head []byte
		if c.out != nil {
			head = c.out.B
		}
		n, err := c.write2(head, c.outBody)
		switch {
		case err == unix.EAGAIN:
			// Input from the client (which wakes us too) must not renew the timer:
			// only bytes the client accepts do.
			if c.waitWritable() == sendFailed {
				return err
			}
			return errBlocked
		case err != nil:
			c.failed = true
			return err
		}
		if n > 0 {
			c.setDeadline(c.srv.cfg.Timeout)
		}
		if n < len(head) {
			c.out.B = c.out.B[:copy(c.out.B, c.out.B[n:])]
			continue
		}
		if c.out != nil {
			bytebufferpool.Put(c.out)
			c.out = nil
		}
		c.outBody = c.outBody[n-len(head):]
		if len(c.outBody) == 0 {
			c.outBody = nil
		}
		c.noteFlushed()
	}
	return nil
}

// dropOutput frees what was never sent.
func (c *conn) dropOutput() {
	if c.pendingCounted {
		c.pendingCounted = false
		c.srv.metrics.inflight.Add(-1)
	}
	if c.out != nil {
		bytebufferpool.Put(c.out)
		c.out = nil
	}
	c.outBody = nil
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
	if c.tls != nil {
		budget = maxPerTurnTLS
	}
	for {
		if c.outPending() {
			// The head (or a part head) the socket did not take goes first.
			switch err := c.flush(); {
			case err == errBlocked:
				return sendBlocked
			case err != nil:
				return sendFailed
			}
		}
		if c.failed {
			return sendFailed
		}
		if j := c.disk; j != nil {
			if !j.done.Load() {
				return sendBlocked // woken for something else: the worker wakes us again
			}
			c.disk = nil
			if j.sent > 0 { // the worker sent what it read in
				c.off += j.sent
				c.sent += j.sent
				c.setDeadline(c.srv.cfg.Timeout)
			}
			if j.err != nil {
				// Never a silently short body: the client sees the connection end.
				c.srv.cfg.Logf("server: %s: disk read at %d: %v", c.req.Path, j.off+j.sent, j.err)
				c.failed = true
				return sendFailed
			}
			// The download met the disk; a load job asked the kernel this far ahead.
			c.requested = j.off + j.n + diskAhead
			if j.sock < 0 {
				c.loaded = j.off + j.n
			} else {
				switch {
				case j.noSendfile:
					c.copyMode = true // a file system without sendfile: copy instead
				case j.sendErr == errShortFile:
					c.srv.cfg.Logf("server: %s: data file shorter than its metadata", c.req.Path)
					c.failed = true
					return sendFailed
				case j.sendErr != nil:
					if !clientGone(j.sendErr) {
						c.srv.cfg.Logf("server: %s: sendfile at %d: %v", c.req.Path, j.off+j.sent, j.sendErr)
					}
					c.failed = true
					return sendFailed
				case j.full:
					c.jobFull = true
					return c.waitWritable()
				}
				continue
			}
		}
		if c.off >= c.end {
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
			if c.fillWaiting.Load() {
				return sendBlocked // registered already: one waiter per connection
			}
			if c.fillWake == nil {
				c.fillWake = func() { c.fillWaiting.Store(false); c.wake() }
			}
			c.fillWaiting.Store(true)
			if c.h.Wait(avail, c.fillWake) {
				c.setDeadline(0) // waiting for the base, whose idle timeout applies
				return sendBlocked
			}
			c.fillWaiting.Store(false)
			continue
		}
		n := min(min(c.end, avail)-c.off, budget, maxPerCall)
		if c.slot != "" && c.ranges == nil && c.off+n == c.end {
			// The last byte goes out on its own, after the download's slot is freed:
			// a client that has every byte and asks again at once must not meet its
			// own download, and a download accelerator gains one byte, no more.
			if n > 1 {
				n--
			} else {
				c.srv.cfg.Limiter.EndDownload(c.slot)
				c.slot = ""
			}
		}
		off := c.h.FileOffset(c.off)
		if c.jobFull {
			// A worker found the socket full: until it can take more, another job
			// would only cost two dups, a worker's turn and an EAGAIN (a client that
			// stopped reading and sends input would make one per segment).
			if !writable(c.gc.Fd()) {
				return sendBlocked // the write poller is still armed
			}
			c.jobFull = false
		}
		if c.srv.disk != nil && c.tls == nil && !c.copyMode && n > 1 && (c.requested > 0 || c.onDisk(off, n)) {
			// A download whose next bytes are on the disk, or that met the disk before:
			// a worker reads them in and sends them (up to diskLoad at a time), as
			// nginx's "aio threads" do, so that neither the disk's waits nor the cold
			// download's sendfile calls hold up the loop's other clients. The last byte
			// of a download with a slot is the loop's (see above).
			m := min(int64(diskLoad), min(c.end, avail)-c.off)
			if c.slot != "" && c.ranges == nil && c.off+m == c.end {
				m--
			}
			return c.deferToDisk(off, m, true)
		}
		if c.srv.disk != nil && c.tls == nil && (c.copyMode || n == 1) && c.onDisk(off, n) {
			// The copy path (no sendfile), and single bytes (a download's last, kept
			// for the loop; a one-byte range): a worker reads the bytes in.
			return c.deferToDisk(off, min(int64(diskLoad), c.h.FileOffset(min(c.end, avail))-off), false)
		}
		if c.requested > 0 && off+n > c.requested-diskAhead/2 && c.requested < c.h.FileOffset(c.end) {
			// A download that met the disk: keep the kernel reading ahead of it, so it
			// does not stop at the end of what was asked for.
			c.prefetch(c.requested, diskAhead)
			c.requested += diskAhead
		}
		var w int
		switch {
		case c.tls != nil:
			// HTTPS reads its bytes, and the read is the probe (readInMemory).
			w, err = c.tlsSendFile(off, int(n))
		case c.copyMode:
			w, err = c.copyOut(off, int(n))
		default:
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
		case err == errNotInMemory:
			// The rest of the chunk is on the disk, not in memory: a worker reads it in.
			next := c.h.FileOffset(c.off)
			if left := c.h.FileOffset(min(c.end, avail)) - next; left > 0 {
				return c.deferToDisk(next, min(int64(diskLoad), left), false)
			}
			continue
		case err == unix.EAGAIN:
			return c.waitWritable()
		case err == unix.EINTR:
			continue
		case err != nil:
			if err == unix.EIO {
				c.srv.cfg.Logf("server: %s: disk read at %d: %v", c.req.Path, off, err)
			}
			c.failed = true
			return sendFailed // the client went away, or the disk failed
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
		// What a disk job loaded for the part before says nothing of this one's bytes
		// (parts come in the client's order, not the file's).
		c.loaded, c.requested = 0, 0
	} else {
		buf.B = proto.AppendPartsEnd(buf.B)
		// The closing delimiter is the answer's last bytes: free the slot first (see send).
		c.srv.cfg.Limiter.EndDownload(c.slot)
		c.slot = ""
	}
	c.part++
	c.sent += int64(len(buf.B))
	c.emit(buf.B, nil)
}

// copyBufs are the fallback path's buffers, used only where sendfile cannot serve.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyChunk); return &b }}

// copyChunk is one pread and write of the fallback path.
const copyChunk = 64 << 10

// copyOut is the fallback for sendfile: pread into a pooled buffer and write what the
// socket takes; the rest is read again next time, so a waiting connection holds no
// buffer at all.
func (c *conn) copyOut(off int64, n int) (int, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	r, err := unix.Pread(c.fd, (*bp)[:min(n, copyChunk)], off)
	if r <= 0 {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("pread: %w", err)
	}
	return unix.Write(c.gc.Fd(), (*bp)[:r])
}

// waitWritable waits for the socket to take more. The send-stall timer runs from the
// last byte the client accepted; a wait that starts with none running (after a wait
// for the fill, say) starts it, so a client that reads nothing is always dropped.
func (c *conn) waitWritable() sendResult {
	if c.deadline.Load() == 0 {
		c.setDeadline(c.srv.cfg.Timeout)
	}
	if c.tls != nil && c.tls.blockedAt == 0 {
		c.tls.blockedAt = time.Now().UnixNano()
	}
	if err := c.srv.poller.arm(c.gc.Fd(), c.gc); err != nil {
		c.srv.cfg.Logf("server: write poller: %v", err)
		return sendFailed
	}
	return sendBlocked
}

// deferToDisk hands the read of [off, off+n) of the data file to the disk pool (and,
// with send, the sendfile of those bytes to the client) and waits for it as for a
// full socket. The worker uses duplicates of the descriptors, which it closes:
// nothing it holds can be closed under it, nor its numbers reused.
func (c *conn) deferToDisk(off, n int64, send bool) sendResult {
	fd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	sock := -1
	if err == nil && send {
		if sock, err = unix.FcntlInt(uintptr(c.gc.Fd()), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		c.srv.cfg.Logf("server: %s: dup for a disk read: %v", c.req.Path, err)
		c.loaded = off + n // send from the loop rather than not at all
		c.requested = 0
		return c.send()
	}
	j := &diskJob{fd: fd, off: off, n: n, wake: c.wake, sock: sock, hintFrom: max(off, c.requested)}
	if !c.srv.disk.submit(j) {
		unix.Close(fd)
		if sock >= 0 {
			unix.Close(sock)
		}
		return sendFailed
	}
	c.disk = j
	c.srv.metrics.diskDeferrals.Inc()
	return sendBlocked
}

// prefetch asks a worker to have the kernel read [off, off+n) ahead; nobody waits.
func (c *conn) prefetch(off, n int64) {
	fd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return
	}
	if !c.srv.disk.submit(&diskJob{fd: fd, off: off, n: n, sock: -1, hintFrom: off}) {
		unix.Close(fd)
	}
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
	c.srv.metrics.request(c.status, c.sent, c.tls != nil)
	if c.log != nil {
		c.log.status, c.log.bytes, c.log.https = c.status, c.sent, c.tls != nil
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
	if c.disk != nil {
		c.disk.cancel.Store(true) // the worker stops sending at its next page
	}
	if c.tls != nil {
		c.tlsClose()
	}
	if c.phase == phaseHandshake {
		return // nothing asked, nothing held
	}
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
	c.dropOutput()
	if c.phase == phaseLinger {
		return // answered and finished already
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
func (c *conn) text(status int, reason, allow string) { c.answer(answer.Text(status, reason, allow)) }

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

// onDisk says the loop's probe found the first or last page of the data file's bytes
// [off, off+n) not in memory (bytes a disk job loaded are not probed again).
func (c *conn) onDisk(off, n int64) bool {
	return off+n > c.loaded && (!c.srv.disk.resident(c.fd, off) || !c.srv.disk.resident(c.fd, off+n-1))
}

// writable reports whether the socket fd can take bytes now (poll, no wait).
func writable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(fds, 0)
	return err != nil || n > 0 // an error: let the write say what it is
}

// clientGone says err is how a socket fails when its client left.
func clientGone(err error) bool {
	return err == unix.EPIPE || err == unix.ECONNRESET || err == unix.ETIMEDOUT
}
