package redirect

import (
	"net"
	"strconv"
	"strings"
)

// Host is one offload server a request may be sent to.
type Host struct {
	Scheme string // "http" or "https"
	Addr   string // host[:port] as configured; also the name hashing uses
	Weight int    // share of the files, 1 to 100
}

// URL is the redirect target for the raw request target uri.
func (h Host) URL(uri string) string { return h.Scheme + "://" + h.Addr + uri }

// name is the host part of Addr, without brackets.
func (h Host) name() string {
	if host, _, err := net.SplitHostPort(h.Addr); err == nil {
		return host
	}
	return strings.Trim(h.Addr, "[]")
}

// port is the port of Addr, or the scheme's default.
func (h Host) port() string {
	if _, port, err := net.SplitHostPort(h.Addr); err == nil {
		return port
	}
	if h.Scheme == "https" {
		return "443"
	}
	return "80"
}

// ParseHost reads "[scheme://]host[:port] [weight]", the syntax of OffloadHost.
func ParseHost(spec string) (Host, error) {
	fields := strings.Fields(spec)
	if len(fields) == 0 || len(fields) > 2 {
		return Host{}, errorf("offload host %q: want [scheme://]host[:port] [weight]", spec)
	}
	h := Host{Scheme: "http", Addr: fields[0], Weight: 1}
	if scheme, rest, ok := strings.Cut(h.Addr, "://"); ok {
		h.Scheme, h.Addr = strings.ToLower(scheme), rest
	}
	if h.Scheme != "http" && h.Scheme != "https" {
		return Host{}, errorf("offload host %q: scheme must be http or https", spec)
	}
	if h.Addr == "" || strings.ContainsAny(h.Addr, "/?#@ \t") {
		return Host{}, errorf("offload host %q: want host[:port]", spec)
	}
	if len(fields) == 2 {
		w, err := strconv.Atoi(fields[1])
		if err != nil || w < 1 || w > 100 {
			return Host{}, errorf("offload host %q: weight must be a whole number from 1 to 100", spec)
		}
		h.Weight = w
	}
	return h, nil
}

// fnv1a64 is 64-bit FNV-1a: small, and the same in C, so both sides pick alike.
func fnv1a64(parts ...string) uint64 {
	h := uint64(14695981039346656037)
	for _, p := range parts {
		for i := 0; i < len(p); i++ {
			h ^= uint64(p[i])
			h *= 1099511628211
		}
	}
	return h
}

// score is a host's rendezvous weight for path: the highest hash of its Weight virtual
// copies, so a host of weight 2 wins about twice as often, with integers only.
func score(h Host, path string) uint64 {
	var best uint64
	for i := 0; i < h.Weight; i++ {
		if s := fnv1a64(h.Addr, "\n", strconv.Itoa(i), "\n", path); s > best {
			best = s
		}
	}
	return best
}

// PickHash chooses the host for path by rendezvous (highest-random-weight) hashing,
// skipping hosts that are down: each file lives on one host, and when a host goes down
// only its files move, each to its next-ranked host. Ties go to the host listed first.
// It returns -1 when every host is down.
func PickHash(hosts []Host, down func(Host) bool, path string) int {
	best, bestScore := -1, uint64(0)
	for i, h := range hosts {
		if down != nil && down(h) {
			continue
		}
		if s := score(h, path); best < 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// PickTime is the original's choice: the hosts that are up, in turn, one per second.
func PickTime(hosts []Host, down func(Host) bool, unixSeconds int64) int {
	up := make([]int, 0, len(hosts))
	for i, h := range hosts {
		if down == nil || !down(h) {
			up = append(up, i)
		}
	}
	if len(up) == 0 {
		return -1
	}
	return up[unixSeconds%int64(len(up))]
}
