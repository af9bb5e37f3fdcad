package server

import (
	"errors"
	"fmt"
	"sync"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// writePoller tells a connection when its socket can take more bytes. gnet has no
// "outbound drained" callback, so a connection whose sendfile hit EAGAIN registers its fd
// here (EPOLLOUT|EPOLLONESHOT in an epoll set of our own) and holds no buffer while it
// waits; the poller's goroutine then calls Conn.Wake, which resumes the connection on
// its own event loop. The kernel drops the registration when the socket closes, which
// is when gnet closes the fd unless a disk worker still holds a duplicate (disk.go): then
// a registration may outlive the connection and wake a new one on the same fd number
// once, for nothing (forget clears the connection it would wake).
type writePoller struct {
	epfd int

	mu    sync.Mutex
	conns []gnet.Conn // by fd: who to wake; cleared when the connection closes
}

func newWritePoller() (*writePoller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("server: epoll_create1: %w", err)
	}
	p := &writePoller{epfd: fd}
	go p.run()
	return p, nil
}

// arm asks for one wake-up of gc once fd is writable (or has an error or hang-up).
func (p *writePoller) arm(fd int, gc gnet.Conn) error {
	p.mu.Lock()
	if fd >= len(p.conns) {
		grown := make([]gnet.Conn, max(fd+1, 2*len(p.conns)))
		copy(grown, p.conns)
		p.conns = grown
	}
	p.conns[fd] = gc
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT | unix.EPOLLRDHUP, Fd: int32(fd)}
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
	if errors.Is(err, unix.ENOENT) {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	}
	return err
}

// forget drops fd before gnet closes it, so a later connection on the same fd number is
// not woken for this one.
func (p *writePoller) forget(fd int) {
	p.mu.Lock()
	if fd < len(p.conns) {
		p.conns[fd] = nil
	}
	p.mu.Unlock()
}

func (p *writePoller) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return // closed
		}
		for i := range n {
			fd := int(events[i].Fd)
			p.mu.Lock()
			var gc gnet.Conn
			if fd < len(p.conns) {
				gc = p.conns[fd]
			}
			p.mu.Unlock()
			if gc != nil {
				_ = gc.Wake(nil)
			}
		}
	}
}

func (p *writePoller) close() { unix.Close(p.epfd) }
