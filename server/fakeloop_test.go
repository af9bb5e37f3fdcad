package server

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// fakeLoop stands in for one gnet event loop so that a test can drive a connection's
// state machine one step at a time, with every close point chosen by the test: gnet
// itself cannot be made to close a connection at an exact moment. The socket is real
// (a TCP connection on 127.0.0.1: its server side is the conn's fd), so every write,
// sendfile and poller registration of the server is real; only the event loop is not.
// The fake does what gnet v2.9.7 does where it matters (connection_unix.go,
// eventloop_unix.go): Wake, Close and AsyncWrite are queued to the loop and ignored
// once the connection is closed, and Write/Writev/Flush close the connection inside
// the call when the socket write fails. It records every use of a closed connection.
type fakeLoop struct {
	tb    testing.TB
	s     *Server
	tasks chan func()
}

// fakeConn is one connection on a fakeLoop.
type fakeConn struct {
	gnet.Conn // nil: a method the fake does not provide panics, so no call goes unseen
	loop      *fakeLoop
	fd        int
	peer      *net.TCPConn // the client's side
	keep      *net.TCPConn // the server's side, kept open by the fake until close
	in        []byte
	ctx       any
	closing   bool // OnClose is running
	closed    bool // OnClose ran and the fd is closed

	mu       sync.Mutex
	misuse   []string // calls after the close that the server must never make
	afterUse bool
}

func newFakeLoop(tb testing.TB, s *Server) *fakeLoop {
	return &fakeLoop{tb: tb, s: s, tasks: make(chan func(), 1024)}
}

// open makes a real TCP connection and hands its server side to the server.
func (l *fakeLoop) open() *fakeConn {
	l.tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		l.tb.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		l.tb.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		l.tb.Fatal(err)
	}
	fc := &fakeConn{loop: l, peer: peer.(*net.TCPConn), keep: srv.(*net.TCPConn)}
	raw, _ := fc.keep.SyscallConn()
	raw.Control(func(fd uintptr) { fc.fd = int(fd) })
	out, act := l.s.OnOpen(fc)
	if len(out) > 0 {
		unix.Write(fc.fd, out)
	}
	if act == gnet.Close {
		fc.doClose()
	}
	return fc
}

// step delivers bytes from the client and runs the loop until it is idle.
func (l *fakeLoop) step(fc *fakeConn, data []byte) {
	if !fc.closed {
		fc.in = append(fc.in, data...)
		fc.act(l.s.OnTraffic(fc))
	}
	l.run(5 * time.Millisecond)
}

// run executes queued tasks until none arrives for quiet; a loop that never goes
// quiet (a connection waking itself forever) fails the test.
func (l *fakeLoop) run(quiet time.Duration) {
	busy := time.Now().Add(10 * time.Second)
	for {
		if time.Now().After(busy) {
			l.tb.Fatal("the loop never went idle")
		}
		select {
		case task := <-l.tasks:
			task()
		case <-time.After(quiet):
			return
		}
	}
}

func (fc *fakeConn) act(a gnet.Action) {
	if a == gnet.Close {
		fc.doClose()
	}
}

// doClose is gnet's eventloop.close: OnClose, then the fd closed.
func (fc *fakeConn) doClose() {
	if fc.closed || fc.closing {
		return
	}
	fc.closing = true // gnet: connections.delConn, so a second close is a no-op
	fc.loop.s.OnClose(fc, nil)
	fc.closed = true // the fd is closed after OnClose: any use from here on is a bug
	fc.keep.Close()
}

func (fc *fakeConn) used(what string) {
	if fc.closed {
		fc.mu.Lock()
		fc.misuse = append(fc.misuse, what)
		fc.mu.Unlock()
	}
}

func (fc *fakeConn) Context() any       { return fc.ctx }
func (fc *fakeConn) SetContext(ctx any) { fc.ctx = ctx }
func (fc *fakeConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
}
func (fc *fakeConn) Fd() int { fc.used("Fd"); return fc.fd }
func (fc *fakeConn) Peek(n int) ([]byte, error) {
	fc.used("Peek")
	if n < 0 || n > len(fc.in) {
		return fc.in, nil
	}
	return fc.in[:n], nil
}
func (fc *fakeConn) Discard(n int) (int, error) {
	fc.used("Discard")
	if n < 0 || n > len(fc.in) {
		n = len(fc.in)
	}
	fc.in = fc.in[n:]
	return n, nil
}
func (fc *fakeConn) InboundBuffered() int { fc.used("InboundBuffered"); return len(fc.in) }

// Write is gnet's conn.write: on a failed socket write it closes the connection
// before it returns.
func (fc *fakeConn) Write(p []byte) (int, error) {
	fc.used("Write")
	n, err := unix.Write(fc.fd, p)
	if err != nil && err != unix.EAGAIN {
		fc.doClose()
	}
	return n, err
}

func (fc *fakeConn) Writev(bs [][]byte) (int, error) {
	fc.used("Writev")
	n, err := unix.Writev(fc.fd, bs)
	if err != nil && err != unix.EAGAIN {
		fc.doClose()
	}
	return n, err
}

func (fc *fakeConn) OutboundBuffered() int { fc.used("OutboundBuffered"); return 0 }
func (fc *fakeConn) Flush() error          { fc.used("Flush"); return nil }

// The calls gnet allows off the loop: queued, and ignored once closed.
func (fc *fakeConn) Wake(cb gnet.AsyncCallback) error {
	fc.loop.tasks <- func() {
		if fc.closed {
			return
		}
		fc.act(fc.loop.s.OnTraffic(fc))
		if cb != nil {
			cb(fc, nil)
		}
	}
	return nil
}

func (fc *fakeConn) Close() error {
	fc.loop.tasks <- fc.doClose
	return nil
}

func (fc *fakeConn) AsyncWrite(p []byte, cb gnet.AsyncCallback) error {
	fc.loop.tasks <- func() {
		var err error
		if fc.closed {
			err = net.ErrClosed
		}
		if cb != nil {
			cb(fc, err)
		}
	}
	return nil
}

// reset makes the client go away with a TCP RST: the server's next write fails.
func (fc *fakeConn) reset() {
	fc.peer.SetLinger(0)
	fc.peer.Close()
	time.Sleep(time.Millisecond) // the RST crosses loopback
}

// finish closes the connection the way gnet would on a read error and runs the loop
// until the server let go of everything; it fails the test on any misuse or leak.
func (l *fakeLoop) finish(fc *fakeConn) {
	l.tb.Helper()
	fc.peer.Close()
	if !fc.closed {
		fc.doClose()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.run(5 * time.Millisecond)
		if l.s.Downloads() == 0 && l.s.cfg.Limiter.Downloads() == 0 && l.s.cfg.Limiter.Conns() == 0 {
			break
		}
		if time.Now().After(deadline) {
			l.tb.Fatalf("leaked: %d requests in flight, %d download slots, %d connections",
				l.s.Downloads(), l.s.cfg.Limiter.Downloads(), l.s.cfg.Limiter.Conns())
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.misuse) > 0 {
		l.tb.Fatalf("the server used a closed connection: %v", fc.misuse)
	}
}

// fakeServer is a Server that is never started on gnet: a fakeLoop drives it.
func fakeServer(tb testing.TB, b *base, revalidate time.Duration) *Server {
	tb.Helper()
	c, err := cache.Open(cache.Config{Dir: tb.TempDir(), MaxBytes: 1 << 30, Base: b.url, UserAgent: "offload/test",
		Timeout: 5 * time.Second, Revalidate: revalidate})
	if err != nil {
		tb.Fatal(err)
	}
	s, err := New(Config{Listen: []string{"127.0.0.1:0"}, Cache: c, Limiter: limiter.New(limiter.Config{MaxDupes: 1})})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.poller.close()
		if s.disk != nil {
			s.disk.close()
		}
		c.Close()
	})
	return s
}

// TestCloseDuringAnswerUsesNothingAfter: a client that resets before the server writes
// its answer (the head, a part head, a small body from memory) makes the write fail.
// In gnet a failed Write closes the connection inside the call; the server must not
// touch the connection, its handle, its slot or its fd after that, and must free all of
// them. Each case runs on a fake loop so the reset lands exactly there.
func TestCloseDuringAnswerUsesNothingAfter(t *testing.T) {
	b := newBase(t)
	b.write(t, "/big.bin", randomBytes(300<<10))
	b.write(t, "/small.bin", randomBytes(2000))
	for _, tc := range []struct {
		name       string
		revalidate time.Duration
		req        string
	}{
		{"disk file, asked the base first", 0, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"disk file, multi-range", 0, "GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0,1000-1999,200000-\r\n\r\n"},
		{"memory body", 0, "GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"cache hit on the loop", time.Hour, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"memory hit on the loop", time.Hour, "GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"an error answer", 0, "BREW /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fakeServer(t, b, tc.revalidate)
			l := newFakeLoop(t, s)
			// Warm the cache through a first connection that reads its answers.
			warm := l.open()
			for range 2 {
				l.step(warm, []byte(tc.req))
				l.run(200 * time.Millisecond)
			}
			l.finish(warm)
			fc := l.open()
			fc.reset()
			l.step(fc, []byte(tc.req))
			l.finish(fc)
		})
	}
}

// FuzzConn drives a connection's state machine with an arbitrary byte stream, cut into
// arbitrary chunks, and a close of an arbitrary kind at an arbitrary point: the client
// resets, half-closes, or the server closes it (timeout, drain). Whatever happens, the
// server must not panic, must never use the connection after its close, and must free
// every slot, request and connection.
//
//	go test -run '^$' -fuzz '^FuzzConn$' -fuzztime 60s ./server
func FuzzConn(f *testing.F) {
	b := newBase(f)
	b.write(f, "/big.bin", randomBytes(600<<10))
	b.write(f, "/small.bin", randomBytes(3000))
	servers := []*Server{fakeServer(f, b, 0), fakeServer(f, b, time.Hour)}
	seeds := []string{
		"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0,5-9,100000-\r\n\r\n",
		"HEAD /big.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /small.bin HTTP/1.0\r\n\r\n",
		"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=500000-500010\r\nIf-Range: \"x\"\r\n\r\n",
		"POST /big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"GET //big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /../x HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), uint8(i), uint8(i%5), uint16(7*i+3))
	}
	f.Fuzz(func(t *testing.T, stream []byte, closeAt, closeKind uint8, chunk uint16) {
		s := servers[int(closeKind>>4)%len(servers)]
		l := newFakeLoop(t, s)
		fc := l.open()
		size := int(chunk)%512 + 1
		step := 0
		for len(stream) > 0 || step <= int(closeAt%8) {
			if step == int(closeAt%8) {
				switch closeKind % 5 {
				case 1:
					fc.reset()
				case 2:
					// gnet closes a connection whose read returns EOF.
					fc.peer.CloseWrite()
					fc.doClose()
				case 3:
					fc.Close() // the sweeper, a drain
				case 4:
					fc.peer.Close()
				}
			}
			n := min(size, len(stream))
			l.step(fc, stream[:n])
			stream = stream[n:]
			step++
			if step > 64 {
				break
			}
		}
		l.finish(fc)
	})
}
