// Package limiter caps simultaneous downloads per client and URL ("download
// accelerators"), connections per client address, and connections in all.
package limiter

import (
	"bytes"
	"net/netip"
	"strconv"
	"sync"
)

// Config holds the caps; zero means no cap.
type Config struct {
	MaxDupes      int            // simultaneous downloads of one URL by one client
	MaxConnsPerIP int            // open connections from one client address
	MaxConns      int            // open connections in all
	Trusted       []netip.Prefix // proxies whose X-Forwarded-For is believed
	// Slots, when set, keeps the MaxDupes cap in lock files shared by every process
	// that uses their folder (slots.go; CGI mode), instead of in this process's memory;
	// make it with NewSlots(dir, MaxDupes). StartDownload and EndDownload then do file
	// I/O. A slot that cannot be taken for an error lets the download go (and is
	// logged with Logf): a broken folder does not stop downloads.
	Slots *Slots
	Logf  func(format string, args ...any)
}

// Limiter counts what is open. Its methods are safe for concurrent use and hold its lock
// only for a map update, so the event loop may call them.
type Limiter struct {
	cfg Config

	mu        sync.Mutex
	downloads map[string]int     // client address + "\x00" + path → downloads open
	held      map[string]*Slot   // with Config.Slots: StartDownload's key → the slot it holds
	seq       int                // names the next held slot
	perIP     map[netip.Addr]int // socket peer → connections open
	conns     int
}

// New returns a Limiter with the given caps.
func New(cfg Config) *Limiter {
	return &Limiter{cfg: cfg, downloads: map[string]int{}, perIP: map[netip.Addr]int{}, held: map[string]*Slot{}}
}

// Refusal says which cap refused a connection.
type Refusal int

// The caps a connection can hit.
const (
	Allowed Refusal = iota
	TooManyConns
	TooManyConnsPerIP
)

// OpenConn counts a new connection from peer, or refuses it.
func (l *Limiter) OpenConn(peer netip.Addr) Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.MaxConns > 0 && l.conns >= l.cfg.MaxConns {
		return TooManyConns
	}
	if l.cfg.MaxConnsPerIP > 0 && l.perIP[peer] >= l.cfg.MaxConnsPerIP {
		return TooManyConnsPerIP
	}
	l.conns++
	l.perIP[peer]++
	return Allowed
}

// CloseConn gives back what OpenConn took.
func (l *Limiter) CloseConn(peer netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns--
	if n := l.perIP[peer] - 1; n > 0 {
		l.perIP[peer] = n
	} else {
		delete(l.perIP, peer)
	}
}

// Conns is how many connections are open.
func (l *Limiter) Conns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns
}

// Downloads is how many downloads hold a slot.
func (l *Limiter) Downloads() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.held)
	for _, v := range l.downloads {
		n += v
	}
	return n
}

// StartDownload takes a slot for client downloading path. It returns the slot's key,
// to give to EndDownload, and false when the client already has MaxDupes downloads of
// that path open. With no cap it returns "" and true.
func (l *Limiter) StartDownload(client netip.Addr, path string) (string, bool) {
	if l.cfg.MaxDupes <= 0 {
		return "", true
	}
	if l.cfg.Slots != nil {
		return l.takeSlot(client, path)
	}
	key := client.String() + "\x00" + path
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.downloads[key] >= l.cfg.MaxDupes {
		return "", false
	}
	l.downloads[key]++
	return key, true
}

// EndDownload frees a slot taken by StartDownload; "" is ignored.
func (l *Limiter) EndDownload(key string) {
	if key == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if sl := l.held[key]; sl != nil {
		delete(l.held, key)
		sl.Release()
		return
	}
	if n := l.downloads[key] - 1; n > 0 {
		l.downloads[key] = n
	} else {
		delete(l.downloads, key)
	}
}

// takeSlot is StartDownload with Config.Slots.
func (l *Limiter) takeSlot(client netip.Addr, path string) (string, bool) {
	sl, err := l.cfg.Slots.Take(client, path)
	if err != nil {
		if l.cfg.Logf != nil {
			l.cfg.Logf("limiter: %v; download let through", err)
		}
		return "", true
	}
	if sl == nil {
		return "", false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	key := "\x00slot" + strconv.Itoa(l.seq) // no client address starts with a NUL
	l.held[key] = sl
	return key, true
}

// ClientIP is the address a request is counted against: the socket peer, or, when the
// peer is a trusted proxy, the right-most X-Forwarded-For address that is not itself a
// trusted proxy (the left-most entries are whatever the client chose to send).
func (l *Limiter) ClientIP(peer netip.Addr, xff []byte) netip.Addr {
	if len(xff) == 0 || !l.trusted(peer) {
		return peer
	}
	client := peer
	for len(xff) > 0 {
		i := bytes.LastIndexByte(xff, ',')
		item := bytes.TrimSpace(xff[i+1:])
		if i < 0 {
			xff = nil
		} else {
			xff = xff[:i]
		}
		a, err := netip.ParseAddr(string(item))
		if err != nil {
			break
		}
		client = a.Unmap()
		if !l.trusted(client) {
			break
		}
	}
	return client
}

func (l *Limiter) trusted(a netip.Addr) bool {
	for _, p := range l.cfg.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
