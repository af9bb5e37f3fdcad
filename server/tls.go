package server

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"
)

// HTTPS on the event loop.
//
// crypto/tls speaks the protocol; this file moves its bytes. A handshake cannot be
// resumed once a non-blocking read comes back empty, so each handshake runs in a
// short-lived goroutine that reads the bytes the loop hands it and writes to a
// duplicate of the socket (the duplicate keeps the socket's number from being reused
// under it if gnet closes the connection meanwhile). Once the handshake is done the
// loop owns the tls.Conn, and no goroutine is left:
//
//   - reads feed it from gnet's input buffer and stop with a temporary error when that
//     is empty: crypto/tls keeps a partial record and goes on with it next time;
//   - writes collect its records in a pooled buffer that goes to the socket in one
//     write call; what the socket does not take is copied out to its exact size;
//   - plaintext is encrypted only up to the room the socket has (its send buffer less
//     what is queued in it), so a connection waiting for a slow client holds no record
//     and no buffer, as on a plain connection.
//
// The kernel here has no kTLS (see kernelTLS): every record is encrypted in userspace,
// so a body from a file is read with pread into a pooled buffer rather than sent with
// sendfile.

// maxTLSChunk is the most plaintext encrypted per write call: two full records. One
// HTTPS download of 1 GiB with curl, builds alternating with nginx in each round (ten
// rounds, median of the ratios to nginx): 16 KiB 0.96x, 32 KiB 0.99-1.06x, 64 KiB
// 0.93-0.94x, 256 KiB 0.89x. Smaller writes let the client start decrypting sooner;
// each costs four system calls beside its encryption (the socket's room, twice; the
// read; the write).
const maxTLSChunk = 32 << 10

// smallTLSWrite is the most plaintext written without asking the socket for its room
// first: a response head with a small body, one record. Two system calls would cost
// more than such a record can wait in memory, which happens only when the socket is
// full, where a connection has sent far more than this before.
const smallTLSWrite = 16 << 10

// minTLSChunk is the plaintext encrypted when the socket's room cannot be read.
const minTLSChunk = 2 << 10

// inputPool holds decrypted input buffers, apart from the shared pool of response
// heads, whose calibration they would skew.
var inputPool bytebufferpool.Pool

// wireBufs holds the buffers records are collected in, each with room for a full
// chunk's records. Not a bytebufferpool: it learns to keep the sizes most Puts have,
// and after many small answers it dropped every chunk-sized buffer at Put, so each
// chunk of a download grew a new one by appends (a single HTTPS download at half its
// speed after a burst of small requests).
var wireBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxTLSChunk+4*(5+256)); return &b }}

// putWire returns a record buffer to wireBufs; one an odd write grew past a chunk's
// size is left to the collector.
func putWire(b *[]byte) {
	if cap(*b) > 2*maxTLSChunk {
		return
	}
	*b = (*b)[:0]
	wireBufs.Put(b)
}

// maxClientHello is the largest ClientHello taken: a TLS record's plaintext limit
// (RFC 8446 5.1), which a ClientHello with post-quantum key shares stays well under.
const maxClientHello = 16 << 10

// helloScan follows a ClientHello as its records arrive: a client may split it over
// several (RFC 8446 5.1). Each record is read once, so a client that trickles a hello
// of tiny records costs the loop no more than its bytes.
type helloScan struct {
	off  int     // the records before off are read
	got  int     // the message's bytes in them
	head [4]byte // the message's type and length
	// whole: the whole ClientHello was read (the connection may still wait for a
	// place in the handshake gate, and ask again).
	whole bool
}

// more reads the records of buf past those read before (buf grows between calls, its
// start unchanged). here says buf begins with the whole ClientHello; bad says it
// cannot be one: not handshake records, an empty record, or a record or message over
// maxClientHello.
func (h *helloScan) more(buf []byte) (here, bad bool) {
	if h.whole {
		return true, false
	}
	for len(buf)-h.off >= 5 {
		rec := buf[h.off:]
		n := int(rec[3])<<8 | int(rec[4])
		if rec[0] != 0x16 || n == 0 || n > maxClientHello {
			return false, true
		}
		if len(rec) < 5+n {
			return false, false
		}
		copy(h.head[min(h.got, 4):], rec[5:5+n])
		h.got += n
		h.off += 5 + n
		if h.got >= 4 {
			size := 4 + (int(h.head[1])<<16 | int(h.head[2])<<8 | int(h.head[3]))
			if size > maxClientHello {
				return false, true
			}
			if h.got >= size {
				h.whole = true
				return true, false
			}
		}
	}
	return false, false
}

// errWouldBlock tells crypto/tls that no more input is here yet. It is a net.Error
// whose Temporary is true, which crypto/tls does not keep as the connection's error.
var errWouldBlock = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "server: no input yet" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// tlsState is the TLS half of a connection on an HTTPS listener.
type tlsState struct {
	tc *tls.Conn
	nc *tlsNetConn
	// in is decrypted input not parsed yet; nil when there is none.
	in *bytebufferpool.ByteBuffer
	// left is ciphertext the socket did not take, at its own size; nil when none.
	left []byte
	eof  bool // the client closed its side (close_notify or EOF)
	// notified: our close_notify is written (or waits in left).
	notified bool
	// chunk caps the plaintext encrypted at once (0: maxTLSChunk). When the socket
	// takes less than its room said (the kernel under memory pressure, with many slow
	// clients), it drops to what the socket took, so that what waits in left stays
	// small; it doubles back with every write taken whole.
	chunk int
	// lowat is the socket's TCP_NOTSENT_LOWAT (fastLowat, then notSentLowat for a
	// slow client); blockedAt is when it last waited for a full socket (UnixNano; 0:
	// not waiting).
	lowat     int
	blockedAt int64
	// A client's speed, for its lowat: bytes sent since rateFrom (UnixNano).
	rateBytes int64
	rateFrom  int64

	hello   helloScan   // the ClientHello so far, until the goroutine starts
	started bool        // the handshake goroutine runs or ran
	queued  atomic.Bool // waits in the handshake gate for a place (see handshakeGate)
	done    atomic.Bool // the handshake goroutine has returned; err is its result
	err     error
}

// tlsNetConn is the net.Conn under a tls.Conn. During the handshake it is used by the
// handshake goroutine (reads wait for the loop to feed bytes; writes go to dupFd);
// after it, only by the loop (reads come from gnet; writes collect in wire).
type tlsNetConn struct {
	gc     gnet.Conn
	local  net.Addr
	remote net.Addr

	mu     sync.Mutex
	cond   sync.Cond
	feed   []byte // bytes from the loop that crypto/tls has not read yet
	closed bool   // the connection closed: the handshake's reads fail
	dupFd  int    // the handshake's duplicate of the socket

	loop bool    // the handshake is over; the loop owns this
	wire *[]byte // records written during one loop-side call (from wireBufs)
}

func (n *tlsNetConn) Read(p []byte) (int, error) {
	if n.loop {
		if len(n.feed) > 0 {
			k := copy(p, n.feed)
			n.feed = n.feed[k:]
			if len(n.feed) == 0 {
				n.feed = nil
			}
			return k, nil
		}
		k, _ := n.gc.Read(p)
		if k == 0 {
			return 0, errWouldBlock
		}
		return k, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for len(n.feed) == 0 && !n.closed {
		n.cond.Wait()
	}
	if len(n.feed) == 0 {
		return 0, net.ErrClosed
	}
	k := copy(p, n.feed)
	n.feed = n.feed[k:]
	if len(n.feed) == 0 {
		n.feed = nil
	}
	return k, nil
}

func (n *tlsNetConn) Write(p []byte) (int, error) {
	if n.loop {
		if n.wire == nil {
			n.wire = wireBufs.Get().(*[]byte)
		}
		*n.wire = append(*n.wire, p...)
		return len(p), nil
	}
	// The handshake's flights: a few KiB into an empty socket, so EAGAIN is rare; wait
	// for room with poll, bounded by the connection's close (the sweeper's deadline).
	written := 0
	for written < len(p) {
		k, err := unix.Write(n.dupFd, p[written:])
		if k > 0 {
			written += k
		}
		switch {
		case err == nil || err == unix.EINTR:
		case err == unix.EAGAIN:
			n.mu.Lock()
			closed := n.closed
			n.mu.Unlock()
			if closed {
				return written, net.ErrClosed
			}
			fds := []unix.PollFd{{Fd: int32(n.dupFd), Events: unix.POLLOUT}}
			_, _ = unix.Poll(fds, 250)
		default:
			return written, err
		}
	}
	return written, nil
}

// Close ends the handshake's waits; the socket itself is gnet's.
func (n *tlsNetConn) Close() error {
	n.mu.Lock()
	n.closed = true
	n.cond.Broadcast()
	n.mu.Unlock()
	return nil
}

func (n *tlsNetConn) LocalAddr() net.Addr              { return n.local }
func (n *tlsNetConn) RemoteAddr() net.Addr             { return n.remote }
func (n *tlsNetConn) SetDeadline(time.Time) error      { return nil }
func (n *tlsNetConn) SetReadDeadline(time.Time) error  { return nil }
func (n *tlsNetConn) SetWriteDeadline(time.Time) error { return nil }

// newTLSState readies a connection of an HTTPS listener for its handshake.
func newTLSState(gc gnet.Conn, cfg *tls.Config) *tlsState {
	_ = unix.SetsockoptInt(gc.Fd(), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
	lowat := notSentLowat
	nc := &tlsNetConn{gc: gc, local: gc.LocalAddr(), remote: gc.RemoteAddr(), dupFd: -1}
	nc.cond.L = &nc.mu
	return &tlsState{tc: tls.Server(nc, cfg), nc: nc, lowat: lowat}
}

// handshake runs the connection's handshake phase on the loop: it starts the
// handshake goroutine on the first bytes, hands it what arrives, and once it is done
// moves the connection to reading requests. done says the connection may go on.
func (c *conn) handshake() (act gnet.Action, done bool) {
	t := c.tls
	if t.done.Load() {
		if t.err != nil {
			return gnet.Close, false
		}
		if t.tc.ConnectionState().NegotiatedProtocol == "acme-tls/1" {
			return gnet.Close, false // an ACME CA's validation: it needs the certificate only
		}
		t.nc.mu.Lock()
		t.nc.loop = true
		t.nc.mu.Unlock()
		trimTLS(t.tc)
		c.phase = phaseRead
		c.setDeadline(c.srv.cfg.IdleTimeout)
		return gnet.None, true
	}
	buf, _ := c.gc.Peek(-1)
	if len(buf) == 0 {
		return gnet.None, false
	}
	if !t.started {
		if buf[0] != 0x16 { // not a TLS handshake record
			if buf[0] >= 'A' && buf[0] <= 'Z' {
				// Plain HTTP sent to the HTTPS port: say so in plain HTTP, then close.
				c.tls = nil
				c.phase = phaseRead
				c.keepAlive = false
				c.text(400, "this port speaks HTTPS: use an https:// address", "")
				return c.linger(), false
			}
			return gnet.Close, false
		}
		// The goroutine starts once the whole ClientHello is here, so a client that
		// sends part of it and stalls holds no goroutine, only its bytes in gnet's
		// buffer, until the head timeout closes it.
		switch here, bad := t.hello.more(buf); {
		case bad || !here && len(buf) > maxInbound: // tiny records: the input bound holds
			return gnet.Close, false
		case !here:
			return gnet.None, false
		}
		if !c.srv.handshakes.enter(c) {
			return gnet.None, false // woken when a place is free
		}
		fd, err := unix.FcntlInt(uintptr(c.gc.Fd()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			c.srv.handshakes.leave()
			c.srv.cfg.Logf("server: dup for a TLS handshake: %v", err)
			return gnet.Close, false
		}
		t.started = true
		t.nc.dupFd = fd
		go func() {
			err := t.tc.Handshake()
			unix.Close(fd)
			c.srv.handshakes.leave()
			// Counted here, not on the loop: a connection closed meanwhile (a client
			// that resets midway, or closes right after its Finished) never gets there.
			result := "ok"
			if err != nil {
				result = "failed"
			}
			c.srv.metrics.handshakes.WithLabelValues(result).Inc()
			t.err = err
			t.done.Store(true)
			c.wake()
		}()
	}
	t.nc.mu.Lock()
	over := len(t.nc.feed)+len(buf) > maxInbound
	if !over {
		t.nc.feed = append(t.nc.feed, buf...)
		t.nc.cond.Signal()
	}
	t.nc.mu.Unlock()
	if over {
		return gnet.Close, false
	}
	_, _ = c.gc.Discard(len(buf))
	return gnet.None, false
}

// tlsInbound decrypts what has arrived and returns the plaintext not parsed yet.
func (c *conn) tlsInbound() []byte {
	t := c.tls
	for !t.eof && (t.in == nil || len(t.in.B) < maxInbound) {
		if t.in == nil {
			t.in = inputPool.Get()
		}
		b := t.in.B
		if cap(b)-len(b) < 4<<10 {
			b = append(b, make([]byte, 4<<10)...)[:len(b)]
		}
		k, err := t.tc.Read(b[len(b):cap(b)])
		t.in.B = b[:len(b)+k]
		if err == errWouldBlock {
			break
		}
		if err != nil {
			// close_notify or EOF: the client sends no more. Anything else is a bad
			// record, and crypto/tls has queued the alert that says so: close.
			t.eof = true
			if err != io.EOF {
				c.failed = true
			}
		}
	}
	c.tlsSendWire() // a KeyUpdate's answer, an alert
	if t.eof {
		// Nothing reads gnet's input after a close_notify: what a client sends after
		// it would pile up there, unbounded, while it is answered. It means nothing.
		_, _ = c.gc.Discard(c.gc.InboundBuffered())
	}
	if t.in != nil && len(t.in.B) == 0 {
		putInput(t.in)
		t.in = nil
	}
	if t.in == nil {
		return nil
	}
	return t.in.B
}

// putInput returns an input buffer to its pool. bytebufferpool learns the sizes to
// keep from the lengths it is given back, and an input buffer comes back empty: it is
// handed back at its capacity, so that the pool keeps buffers of the size reads need.
func putInput(b *bytebufferpool.ByteBuffer) {
	b.B = b.B[:cap(b.B)]
	inputPool.Put(b)
}

// tlsConsume drops n parsed bytes of plaintext.
func (c *conn) tlsConsume(n int) {
	t := c.tls
	if t.in == nil {
		return
	}
	if n >= len(t.in.B) {
		putInput(t.in)
		t.in = nil
		return
	}
	t.in.B = t.in.B[:copy(t.in.B, t.in.B[n:])]
}

// tlsRoom is how much plaintext to encrypt now: what the socket will take, by the
// kernel's own test (a write is taken while the bytes queued, with their overhead,
// are under the send buffer: SO_MEMINFO gives both), less an eighth for the records'
// overhead, at most maxTLSChunk. The queue's byte count (SIOCOUTQ) is no guide: under
// many slow clients it runs past the send buffer, which the kernel shrinks under
// memory pressure, and records encrypted by it would wait in memory.
func (c *conn) tlsRoom() int {
	var info [unix.SK_MEMINFO_VARS]uint32
	size := uint32(len(info) * 4)
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(c.gc.Fd()), unix.SOL_SOCKET, soMeminfo,
		uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return minTLSChunk
	}
	room := int(info[unix.SK_MEMINFO_SNDBUF]) - int(info[unix.SK_MEMINFO_WMEM_QUEUED])
	t := c.tls
	if t.blockedAt != 0 {
		// Woken after a full socket: a client that kept us waiting long is slow, and
		// from now on its socket holds little it has not taken (see notSentLowat).
		if time.Now().UnixNano()-t.blockedAt > int64(slowClientWait) && t.lowat > notSentLowat {
			if unix.SetsockoptInt(c.gc.Fd(), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat) == nil {
				t.lowat = notSentLowat
			}
		}
		t.blockedAt = 0
	}
	if unsent, err := unix.IoctlGetInt(c.gc.Fd(), unix.SIOCOUTQNSD); err == nil {
		room = min(room, t.lowat-unsent)
	}
	if c.tls.chunk > 0 {
		room = min(room, c.tls.chunk)
	}
	return min(room-room/8, maxTLSChunk)
}

// notSentLowat caps the bytes a slow client's HTTPS socket holds that the network has
// not taken yet (TCP_NOTSENT_LOWAT): beyond what is in flight, its records wait as
// file bytes, not as kernel memory. Without it the kernel lets send buffers of slow
// clients grow to megabytes, reaches its TCP memory limit with a few thousand of
// them, and then takes less than a socket's own room says: the records it refuses
// would wait in our memory instead. A client that takes fastClientBytes within a
// second gets fastLowat instead, so that its download does not stop for the write
// poller every 64 KiB (which cost a single HTTPS download half its speed); it is back
// to notSentLowat once a full socket keeps it waiting longer than slowClientWait.
const (
	notSentLowat    = 64 << 10
	fastLowat       = 1 << 20
	fastClientBytes = 4 << 20
	slowClientWait  = 100 * time.Millisecond
)

// noteSent counts n bytes sent for the client's speed, and gives a fast client
// fastLowat.
func (c *conn) noteSent(n int) {
	t := c.tls
	if t.lowat >= fastLowat {
		return
	}
	now := time.Now().UnixNano()
	if now-t.rateFrom > int64(time.Second) {
		t.rateFrom, t.rateBytes = now, 0
	}
	if t.rateBytes += int64(n); t.rateBytes >= fastClientBytes {
		if unix.SetsockoptInt(c.gc.Fd(), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, fastLowat) == nil {
			t.lowat = fastLowat
		}
	}
}

// soMeminfo is SO_MEMINFO (asm-generic/socket.h), which x/sys does not name.
const soMeminfo = 55

// tlsWrite encrypts up to the socket's room of a then b and writes the records: the
// TLS side of emit and flush. It returns the plaintext bytes taken (their records are
// out, or kept in c.tls.left) and unix.EAGAIN when it took none.
func (c *conn) tlsWrite(a, b []byte) (int, error) {
	t := c.tls
	if len(t.left) > 0 {
		return 0, unix.EAGAIN // the records before go first: flush sends them
	}
	room := len(a) + len(b)
	if room > smallTLSWrite {
		if room = c.tlsRoom(); room <= 0 {
			return 0, unix.EAGAIN
		}
	}
	a = a[:min(len(a), room)]
	b = b[:min(len(b), room-len(a))]
	var err error
	if len(a) > 0 && len(b) > 0 && len(a)+len(b) <= maxTLSChunk {
		// One record for a head and a small body, not two.
		buf := bytebufferpool.Get()
		buf.B = append(append(buf.B, a...), b...)
		_, err = t.tc.Write(buf.B)
		bytebufferpool.Put(buf)
	} else {
		if len(a) > 0 {
			_, err = t.tc.Write(a)
		}
		if err == nil && len(b) > 0 {
			_, err = t.tc.Write(b)
		}
	}
	if err != nil {
		c.dropWire()
		return 0, err
	}
	if err := c.tlsSendWire(); err != nil {
		return 0, err
	}
	return len(a) + len(b), nil
}

// tlsSendFile sends n bytes of the data file from off: pread into a pooled buffer,
// encrypt, write. Like copyOut, bytes the socket has no room for are read again
// later rather than held. Past what a disk job loaded, the read takes only what is in
// memory, and errNotInMemory (with the bytes sent before it) says where that ended.
func (c *conn) tlsSendFile(off int64, n int) (int, error) {
	if len(c.tls.left) > 0 {
		return 0, unix.EAGAIN
	}
	room := c.tlsRoom()
	if room <= 0 {
		return 0, unix.EAGAIN
	}
	bp := copyBufs.Get().(*[]byte) // copyChunk, at least maxTLSChunk
	defer copyBufs.Put(bp)
	p := (*bp)[:min(n, room, len(*bp))]
	var r int
	var err error
	short := false // the read stopped at a page that is not in memory
	if off < c.loaded {
		// What the last disk job loaded, read as loaded: every job moves the download on.
		p = p[:min(int64(len(p)), c.loaded-off)]
		r, err = unix.Pread(c.fd, p, off)
	} else if d := c.srv.disk; d != nil {
		r, err = d.cached(c.fd, p, off)
		if err == unix.EAGAIN {
			return 0, errNotInMemory
		}
		short = r > 0 && r < len(p)
	} else {
		r, err = unix.Pread(c.fd, p, off)
	}
	if r <= 0 {
		if err == nil {
			return 0, nil // shorter than its metadata: send reports it
		}
		return 0, err
	}
	if _, err := c.tls.tc.Write((*bp)[:r]); err != nil {
		c.dropWire()
		return 0, err
	}
	if err := c.tlsSendWire(); err != nil {
		return 0, err
	}
	c.noteSent(r)
	if short {
		return r, errNotInMemory
	}
	return r, nil
}

// errNotInMemory says the next bytes of the data file are on the disk only: send hands
// their read to the disk pool.
var errNotInMemory = errors.New("server: not in memory")

// tlsSendWire writes the records crypto/tls just made; what the socket does not take
// waits in c.tls.left, copied to its own size so that no pooled buffer waits with it.
func (c *conn) tlsSendWire() error {
	nc := c.tls.nc
	if nc.wire == nil {
		return nil
	}
	wire := nc.wire
	nc.wire = nil
	defer putWire(wire)
	b := *wire
	for len(b) > 0 {
		k, err := unix.Write(c.gc.Fd(), b)
		if k > 0 {
			b = b[k:]
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
		case err != nil:
			c.failed = true
			return err
		}
		if err == unix.EAGAIN {
			break
		}
	}
	t := c.tls
	if len(b) > 0 {
		t.chunk = max(len(*wire)-len(b), minTLSChunk)
		t.left = append([]byte(nil), b...)
		c.notePending()
	} else if t.chunk > 0 {
		if t.chunk *= 2; t.chunk >= maxTLSChunk {
			t.chunk = 0
		}
	}
	return nil
}

// tlsFlushLeft writes ciphertext the socket did not take before: nil once it is out.
func (c *conn) tlsFlushLeft() error {
	t := c.tls
	for len(t.left) > 0 {
		k, err := unix.Write(c.gc.Fd(), t.left)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			if err != unix.EAGAIN {
				c.failed = true
			}
			return err
		}
		t.left = t.left[k:]
		if k > 0 {
			c.setDeadline(c.srv.cfg.Timeout)
		}
	}
	t.left = nil
	return nil
}

func (c *conn) dropWire() {
	if nc := c.tls.nc; nc.wire != nil {
		putWire(nc.wire)
		nc.wire = nil
	}
}

// tlsCloseWrite sends close_notify (into c.tls.left if the socket is full).
func (c *conn) tlsCloseWrite() {
	if c.tls.tc.CloseWrite() == nil {
		_ = c.tlsSendWire()
	} else {
		c.dropWire()
	}
}

// tlsClose frees a connection's TLS state when gnet closes it.
func (c *conn) tlsClose() {
	t := c.tls
	if !t.done.Load() {
		t.nc.Close() // a handshake still running fails and its goroutine ends
		return
	}
	if t.in != nil {
		putInput(t.in)
		t.in = nil
	}
	c.dropWire()
	t.left = nil
}

// crypto/tls keeps two byte buffers per connection that grow during the handshake and
// never shrink: rawInput (received records) and hand (handshake messages). After the
// handshake both are empty, yet hold about 5 KiB a connection (a ClientHello with a
// post-quantum key share is 1.5 KiB, and bytes.Buffer grows in steps). trimTLS drops
// them when they are empty, so a connection that waits for a slow client holds none.
// crypto/tls has no API for it; the fields are found by name and type once, and when
// a Go release renames them the trim does nothing (TestTLSTrimFindsItsFields fails).
var tlsBufferOffsets = func() (offs []uintptr) {
	t := reflect.TypeFor[tls.Conn]()
	for _, name := range []string{"rawInput", "hand"} {
		if f, ok := t.FieldByName(name); ok && f.Type == reflect.TypeFor[bytes.Buffer]() {
			offs = append(offs, f.Offset)
		}
	}
	return offs
}()

// trimTLS frees tc's empty receive and handshake buffers. Loop only.
func trimTLS(tc *tls.Conn) {
	for _, off := range tlsBufferOffsets {
		if b := (*bytes.Buffer)(unsafe.Add(unsafe.Pointer(tc), off)); b.Len() == 0 {
			*b = bytes.Buffer{}
		}
	}
}

// kernelTLS says whether this kernel can encrypt TLS records itself (kTLS), which
// would let sendfile serve HTTPS. The server does not use it yet; it says so at start.
func kernelTLS() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_ulp")
	return err == nil && strings.Contains(string(b), "tls")
}
