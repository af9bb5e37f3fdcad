// Package redirect is the base server's side of offload for Go servers: a middleware
// that answers requests for big static files with a 307 to one of the offload servers,
// by the same rules and the same host choice as the Apache module in apachemod/.
package redirect

import (
	"bufio"
	"fmt"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"strings"
	"sync"
	"time"
)

func errorf(format string, args ...any) error { return fmt.Errorf("redirect: "+format, args...) }

// Config is the middleware's settings; the names follow the Apache directives.
type Config struct {
	Hosts             []string // OffloadHost: "[scheme://]host[:port] [weight]"
	MinSize           int64    // OffloadMinSize: smallest file offloaded; 0 = any size
	Pick              string   // OffloadPick: "hash" (default) or "time"
	ExcludeMimeTypes  []string // OffloadExcludeMimeType: shell wildcards, case-blind
	ExcludeUserAgents []string // OffloadExcludeUserAgent
	ExcludeAddresses  []string // OffloadExcludeAddress: wildcards or CIDR
	// HostDownFile lists hosts out of rotation, one "host[:port]" a line ('#' comments);
	// it is read again whenever it changes, so no restart is needed. Optional.
	HostDownFile string
	// Files is where the files are, to see that a path is a regular file and its size.
	Files fs.StatFS
	// Resolve looks up the offload hosts' addresses, so requests from them (their
	// fetches) are never redirected. Default: net.DefaultResolver via net.LookupHost.
	Resolve func(host string) ([]string, error)
	// Now is the clock for Pick "time"; default time.Now.
	Now func() time.Time
}

// DefaultMinSize is OffloadMinSize's default, as in the original.
const DefaultMinSize = 5120

// Redirector decides whether and where to offload a request.
type Redirector struct {
	hosts    []Host
	byTime   bool
	minSize  int64
	mimes    []string
	agents   []string
	addrPats []string
	cidrs    []netip.Prefix
	offload  map[netip.Addr]bool // addresses of the offload hosts
	files    fs.StatFS
	now      func() time.Time
	downFile string

	mu       sync.Mutex      // protects the fields below
	downSeen time.Time       // mtime of HostDownFile when last read
	down     map[string]bool // host[:port] → out of rotation
}

// New checks cfg and resolves the offload hosts.
func New(cfg Config) (*Redirector, error) {
	if len(cfg.Hosts) == 0 {
		return nil, errorf("no offload hosts")
	}
	if cfg.Files == nil {
		return nil, errorf("Files is required")
	}
	if cfg.MinSize < 0 {
		return nil, errorf("MinSize %d: must be 0 or more", cfg.MinSize)
	}
	rd := &Redirector{minSize: cfg.MinSize, mimes: cfg.ExcludeMimeTypes, agents: cfg.ExcludeUserAgents,
		files: cfg.Files, now: cfg.Now, downFile: cfg.HostDownFile, offload: map[netip.Addr]bool{}, down: map[string]bool{}}
	if rd.now == nil {
		rd.now = time.Now
	}
	switch cfg.Pick {
	case "", "hash":
	case "time":
		rd.byTime = true
	default:
		return nil, errorf("Pick %q: want hash or time", cfg.Pick)
	}
	resolve := cfg.Resolve
	if resolve == nil {
		resolve = net.LookupHost
	}
	for _, spec := range cfg.Hosts {
		h, err := ParseHost(spec)
		if err != nil {
			return nil, err
		}
		name := h.Addr
		if host, _, err := net.SplitHostPort(h.Addr); err == nil {
			name = host
		}
		addrs, err := resolve(strings.Trim(name, "[]"))
		if err != nil {
			return nil, errorf("offload host %s: %v", h.Addr, err)
		}
		for _, a := range addrs {
			if ip, err := netip.ParseAddr(a); err == nil {
				rd.offload[ip.Unmap()] = true
			}
		}
		rd.hosts = append(rd.hosts, h)
	}
	for _, a := range cfg.ExcludeAddresses {
		if strings.Contains(a, "/") {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, errorf("exclude address %q: %v", a, err)
			}
			rd.cidrs = append(rd.cidrs, p.Masked())
		} else {
			rd.addrPats = append(rd.addrPats, a)
		}
	}
	return rd, nil
}

// Handler redirects what should be offloaded and passes everything else to next.
func (rd *Redirector) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if target, ok := rd.Target(r); ok {
			w.Header().Set("Location", target)
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Target applies the checklist of the original module to r and returns the redirect
// URL when r should be offloaded.
func (rd *Redirector) Target(r *http.Request) (string, bool) {
	if r.Method != http.MethodGet || strings.Contains(r.RequestURI, "?") || r.URL.RawQuery != "" {
		return "", false
	}
	if r.Header.Get("X-Mod-Offload-Bypass") != "" || r.Header.Get("Authorization") != "" {
		return "", false
	}
	if client := clientAddr(r); client.IsValid() && (rd.offload[client] || rd.excludedAddr(client)) {
		return "", false
	}
	ua := r.UserAgent()
	for _, p := range rd.agents {
		if wildcardMatch(p, ua) {
			return "", false
		}
	}
	name := path.Clean(r.URL.Path)
	if !strings.HasPrefix(name, "/") || strings.HasSuffix(r.URL.Path, "/") {
		return "", false
	}
	st, err := rd.files.Stat(strings.TrimPrefix(name, "/"))
	if err != nil || !st.Mode().IsRegular() || st.Size() < rd.minSize {
		return "", false
	}
	if len(rd.mimes) > 0 {
		ctype := mime.TypeByExtension(path.Ext(name))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		for _, p := range rd.mimes {
			if wildcardMatch(p, ctype) {
				return "", false
			}
		}
	}
	uri := r.RequestURI
	if uri == "" || !strings.HasPrefix(uri, "/") {
		uri = r.URL.EscapedPath()
	}
	i := rd.Pick(uri)
	if i < 0 {
		return "", false // every host is down: serve it here
	}
	return rd.hosts[i].URL(uri), true
}

// Pick returns the index of the host for the raw path, or -1 when all are down.
func (rd *Redirector) Pick(rawPath string) int {
	down := rd.downHosts()
	isDown := func(h Host) bool { return down[h.Addr] }
	if rd.byTime {
		return PickTime(rd.hosts, isDown, rd.now().Unix())
	}
	return PickHash(rd.hosts, isDown, rawPath)
}

// Hosts are the configured offload hosts, in order.
func (rd *Redirector) Hosts() []Host { return rd.hosts }

func (rd *Redirector) excludedAddr(a netip.Addr) bool {
	for _, p := range rd.cidrs {
		if p.Contains(a) {
			return true
		}
	}
	s := a.String()
	for _, p := range rd.addrPats {
		if wildcardMatch(p, s) {
			return true
		}
	}
	return false
}

// downHosts reads HostDownFile again when its mtime changed; a missing file means all up.
func (rd *Redirector) downHosts() map[string]bool {
	if rd.downFile == "" {
		return nil
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	st, err := os.Stat(rd.downFile)
	if err != nil {
		rd.down, rd.downSeen = map[string]bool{}, time.Time{}
		return rd.down
	}
	if st.ModTime().Equal(rd.downSeen) {
		return rd.down
	}
	f, err := os.Open(rd.downFile)
	if err != nil {
		return rd.down
	}
	defer f.Close()
	down := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			down[line] = true
		}
	}
	rd.down, rd.downSeen = down, st.ModTime()
	return down
}

func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
