package server

import "sync"

// maxHandshakes bounds the TLS handshake goroutines alive at once.
const maxHandshakes = 1024

// handshakeGate bounds the TLS handshake goroutines alive at once, those of connections
// already closed included. A handshake can outlive its connection by minutes:
// GetCertificate waits while ACME obtains a certificate for the name asked for, neither
// the client's reset nor the close of its connection interrupts that wait, and the
// goroutine holds a duplicate of the socket meanwhile. Without a bound, clients that send
// a ClientHello for such a name and reset at once pile up goroutines and descriptors
// until accept fails for everyone. A connection whose whole ClientHello is here while the
// gate is full waits for a place holding no goroutine (its head timeout still runs), and
// is woken when a handshake ends.
type handshakeGate struct {
	max     int
	mu      sync.Mutex // protects running and waiting
	running int
	waiting []waiter // in order of arrival; each connection at most once (tlsState.queued)
}

// waiter is a connection waiting in the gate, with its TLS state: the loop may drop
// c.tls meanwhile, the gate holds on to what it marked.
type waiter struct {
	c *conn
	t *tlsState
}

// enter takes a place for c's handshake goroutine; false queues c, which is woken when
// a place may be free and asks again.
func (g *handshakeGate) enter(c *conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running < g.max {
		g.running++
		return true
	}
	if !c.tls.queued.Swap(true) {
		g.waiting = append(g.waiting, waiter{c, c.tls})
	}
	return false
}

// leave gives a handshake goroutine's place back, and wakes the first connection
// still open that waits for one.
func (g *handshakeGate) leave() {
	g.mu.Lock()
	g.running--
	g.mu.Unlock()
	g.kick()
}

// kick drops the waiters whose connections closed and wakes the others while places
// are free. leave calls it; so does the sweeper, which also keeps the queue from
// holding closed connections (their conn and TLS state) while the gate stays full:
// clients that send a ClientHello and reset would otherwise pile them up until a
// handshake ends, minutes later in the case the gate is for.
func (g *handshakeGate) kick() {
	g.mu.Lock()
	var wake []*conn
	free := g.max - g.running
	kept := g.waiting[:0]
	for _, w := range g.waiting {
		switch {
		case w.c.closed.Load():
			w.t.queued.Store(false)
		case free > 0:
			w.t.queued.Store(false)
			wake = append(wake, w.c)
			free--
		default:
			kept = append(kept, w)
		}
	}
	clear(g.waiting[len(kept):]) // let the dropped go
	g.waiting = kept
	if len(g.waiting) == 0 {
		g.waiting = nil // and the backing array
	}
	g.mu.Unlock()
	for _, c := range wake {
		c.wake()
	}
}
