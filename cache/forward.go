package cache

// The base decides access for the client the offload server asks for, not for the
// offload server (the contract: X-Forwarded-For names the client, and the base applies
// "Require ip" and the like to it). So the base's answer for one client is not another
// client's: a HEAD in flight is shared only among requests of one client, and an entry
// confirmed for one client is trusted for Revalidate only for that client.

import (
	"context"
	"net/http"
	"net/netip"
	"time"
)

// forwardFor names in req the client it is for (WithClient), as X-Forwarded-For: the one
// address, whatever the client itself sent.
func forwardFor(req *http.Request) {
	if a := clientOf(req.Context()); a.IsValid() {
		req.Header.Set("X-Forwarded-For", a.Unmap().String())
	}
}

// headKey is the key under which a HEAD in flight for key is shared: per client.
func headKey(ctx context.Context, key string) string {
	return key + "\x00" + clientOf(ctx).String()
}

// trustedFor reports whether e was confirmed by a HEAD for client within d.
func (e *entry) trustedFor(client netip.Addr, d time.Duration) bool {
	if d <= 0 || time.Now().UnixNano()-e.checked.Load() > int64(d) {
		return false
	}
	by := e.checkedBy.Load()
	return by != nil && *by == client
}

// confirm records that a HEAD for client found e current. The client is stored before
// the time, so a reader never pairs a fresh time with a client it was not checked for.
func (e *entry) confirm(client netip.Addr) {
	e.checkedBy.Store(&client)
	e.checked.Store(time.Now().UnixNano())
}

// Lookup is LookupFor a request with no client named: it finds only entries confirmed
// for such requests (WithClient not used).
func (c *Cache) Lookup(path string) *Handle { return c.LookupFor(path, netip.Addr{}) }
