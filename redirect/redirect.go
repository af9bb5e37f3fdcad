// Package redirect is the base server's side of offload for Go servers: a middleware
// that answers requests for big static files with a 307 to one of the offload servers,
// by the same rules and the same host choice as the Apache module in apachemod/.
package redirect

import (
	"fmt"
	"io/fs"
	"log"
	"mime"
	"net"
	"net/http"
	"net/netip"
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
	Pick              string   // OffloadPick: "hash" (default) or "time" (ignores weights)
	ExcludeMimeTypes  []string // OffloadExcludeMimeType: shell wildcards, case-blind
	ExcludeUserAgents []string // OffloadExcludeUserAgent: one pattern each, spaces and all
	ExcludeAddresses  []string // OffloadExcludeAddress: addresses, wildcards (10.1.*) or CIDR
	// HostDownFile lists hosts out of rotation, one a line as in Hosts ("host:port",
	// "http://host:port/", "host:port 2", or a bare "host" for all its ports; '#'
	// comments); it is read again whenever it changes, so no restart is needed. Optional.
	HostDownFile string
	// ProbeInterval, when set, probes every host this often (Probe) and keeps the hosts
	// that fail out of rotation until they answer again; ProbeTimeout bounds one probe
	// (default 3s). Close stops it.
	ProbeInterval, ProbeTimeout time.Duration
	// ServerNames, when set, are the host names of the site the offload servers fetch
	// from (their --base): a request whose Host is another name is not offloaded, as an
	// Apache OffloadHost serves only its own virtual host. Empty: any Host.
	ServerNames []string
	// Files is where the files are, to see that a path is a regular file and its size.
	Files fs.StatFS
	// Resolve looks up the offload hosts' addresses, so requests from them (their
	// fetches) are never redirected. Default: net.LookupHost. A name that does not
	// resolve is logged and tried again a minute later; it stays in rotation.
	Resolve func(host string) ([]string, error)
	// Now is the clock for Pick "time"; default time.Now.
	Now func() time.Time
	// Logf reports what an admin must hear of (unresolvable hosts, an unreadable or
	// unmatched down file, hosts going down and up); default log.Printf.
	Logf func(format string, args ...any)
}

// DefaultMinSize is OffloadMinSize's default, as in the original.
const DefaultMinSize = 5120

// resolveRetry is how long a name that did not resolve waits before the next lookup.
const resolveRetry = time.Minute

// Redirector decides whether and where to offload a request.
type Redirector struct {
	hosts    []Host
	byTime   bool
	minSize  int64
	mimes    []string
	agents   []string
	addrPats []string
	cidrs    []netip.Prefix
	names    map[string]bool // ServerNames, lower case; nil: any
	files    fs.StatFS
	now      func() time.Time
	logf     func(format string, args ...any)
	resolve  func(host string) ([]string, error)
	downFile downFile
	stop     chan struct{} // closed by Close to end probing
	probed   sync.WaitGroup

	mu         sync.Mutex           // protects the fields below
	offload    map[netip.Addr]bool  // addresses of the offload hosts
	unresolved map[string]time.Time // host name → when to look it up again
	probeDown  map[string]bool      // Host.Addr → failed its last probe
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
		files: cfg.Files, now: cfg.Now, logf: cfg.Logf, resolve: cfg.Resolve, stop: make(chan struct{}),
		offload: map[netip.Addr]bool{}, unresolved: map[string]time.Time{}, probeDown: map[string]bool{}}
	if rd.now == nil {
		rd.now = time.Now
	}
	if rd.logf == nil {
		rd.logf = log.Printf
	}
	if rd.resolve == nil {
		rd.resolve = net.LookupHost
	}
	switch cfg.Pick {
	case "", "hash":
	case "time":
		rd.byTime = true
	default:
		return nil, errorf("Pick %q: want hash or time", cfg.Pick)
	}
	for _, spec := range cfg.Hosts {
		h, err := ParseHost(spec)
		if err != nil {
			return nil, err
		}
		for _, o := range rd.hosts {
			if o.Scheme == h.Scheme && strings.EqualFold(o.name(), h.name()) && o.port() == h.port() {
				return nil, errorf("offload host %q: listed twice (as %s://%s)", spec, o.Scheme, o.Addr)
			}
		}
		rd.hosts = append(rd.hosts, h)
		rd.unresolved[h.name()] = time.Time{}
	}
	rd.lookup(rd.takeDue()) // now, at start; a failure is logged and tried again later
	for _, a := range cfg.ExcludeAddresses {
		if err := checkAddrPattern(a); err != nil {
			return nil, err
		}
		if strings.Contains(a, "/") {
			rd.cidrs = append(rd.cidrs, netip.MustParsePrefix(a).Masked())
		} else {
			rd.addrPats = append(rd.addrPats, a)
		}
	}
	if len(cfg.ServerNames) > 0 {
		rd.names = map[string]bool{}
		for _, n := range cfg.ServerNames {
			rd.names[strings.ToLower(n)] = true
		}
	}
	rd.downFile = downFile{path: cfg.HostDownFile, logf: rd.logf}
	if cfg.ProbeInterval > 0 {
		timeout := cfg.ProbeTimeout
		if timeout <= 0 {
			timeout = DefaultProbeTimeout
		}
		rd.probed.Add(1)
		go rd.probeLoop(cfg.ProbeInterval, timeout)
	}
	return rd, nil
}

// Close stops probing the hosts (Config.ProbeInterval). The Redirector goes on working
// with the hosts' last known state.
func (rd *Redirector) Close() error {
	select {
	case <-rd.stop:
	default:
		close(rd.stop)
	}
	rd.probed.Wait()
	return nil
}

// takeDue returns the host names due for a lookup and sets their next try, so each is
// looked up by one caller at a time. Called with mu held.
func (rd *Redirector) takeDue() []string {
	var due []string
	now := time.Now()
	for name, at := range rd.unresolved {
		if !now.Before(at) {
			due = append(due, name)
			rd.unresolved[name] = now.Add(resolveRetry)
		}
	}
	return due
}

// lookup resolves names into the offload hosts' addresses; a failure is logged, and the
// name tried again after resolveRetry.
func (rd *Redirector) lookup(names []string) {
	for _, name := range names {
		addrs, err := rd.resolve(name)
		rd.mu.Lock()
		if err != nil {
			rd.logf("redirect: offload host %s: cannot resolve it now (%v); it stays in rotation and is looked up again in %v", name, err, resolveRetry)
		} else {
			delete(rd.unresolved, name)
			for _, a := range addrs {
				if ip, err := netip.ParseAddr(a); err == nil {
					rd.offload[ip.Unmap()] = true
				}
			}
		}
		rd.mu.Unlock()
	}
}

// fromOffloadHost reports whether a is an offload host's address; names that did not
// resolve are looked up again in the background when their time has come.
func (rd *Redirector) fromOffloadHost(a netip.Addr) bool {
	rd.mu.Lock()
	due := rd.takeDue()
	is := rd.offload[a]
	rd.mu.Unlock()
	if len(due) > 0 {
		go rd.lookup(due)
	}
	return is
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
	if rd.names != nil {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if !rd.names[strings.ToLower(strings.Trim(host, "[]"))] {
			return "", false // another site: its offload servers are not these
		}
	}
	if client := clientAddr(r); client.IsValid() && (rd.fromOffloadHost(client) || rd.excludedAddr(client)) {
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
		bare, _, _ := strings.Cut(ctype, ";")
		bare = strings.TrimSpace(bare)
		for _, p := range rd.mimes {
			if wildcardMatch(p, ctype) || wildcardMatch(p, bare) {
				return "", false
			}
		}
	}
	// The path as the client escaped it, also from an absolute-form request target.
	uri := r.RequestURI
	if uri == "" || !strings.HasPrefix(uri, "/") {
		uri = r.URL.EscapedPath()
	}
	uri, _, _ = strings.Cut(uri, "#")
	i := rd.Pick(uri)
	if i < 0 {
		return "", false // every host is down: serve it here
	}
	return rd.hosts[i].URL(uri), true
}

// Pick returns the index of the host for the raw path, or -1 when all are down.
func (rd *Redirector) Pick(rawPath string) int {
	fileDown := rd.downFile.down(rd.hosts)
	rd.mu.Lock()
	probeDown := rd.probeDown
	rd.mu.Unlock()
	isDown := func(h Host) bool { return fileDown[h.Addr] || probeDown[h.Addr] }
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

func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
