package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/sys/unix"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/certs"
	"github.com/modoffload/offload/limiter"
	"github.com/modoffload/offload/server"
)

// serveConfig is everything `offload serve` is told, by flags or a config file.
type serveConfig struct {
	Base          string
	BaseAddr      string
	Listen        []string
	Cache         string
	CacheSize     int64
	MaxDupes      int
	MaxConnsPerIP int
	MaxConns      int
	TrustedProxy  []netip.Prefix
	Revalidate    time.Duration
	Timeout       time.Duration
	Grace         time.Duration
	Admin         string
	AccessLog     string
	User          string
	Fetchers      int
	Loops         int
	DiskWorkers   int
	// DocRoot is a local copy of the base's web space to serve from (the original's
	// no-cache mode); DocRootFollow lets its symlinks point outside it.
	DocRoot       string
	DocRootFollow bool
	// TLSListen are the HTTPS addresses. Their certificates come from the pairs
	// TLSCert[i], TLSKey[i] and/or from an ACME CA for ACMEDomain; ACMEDir keeps the
	// ACME account and certificates (default: acmeDirFor(Cache)).
	TLSListen  []string
	TLSCert    []string
	TLSKey     []string
	ACMEDomain []string
	ACMEEmail  string
	ACMECA     string
	ACMEDir    string
	ACMECARoot string
	// certs is what the settings above load, at parse time so that a bad file is a
	// bad setting (exit 2); nil without HTTPS.
	certs *certs.Store
}

// listFlag is a repeatable string flag.
type listFlag struct {
	vals *[]string
	set  bool // set on the command line: replaces the default, not appends to it
}

func (l *listFlag) String() string {
	if l.vals == nil {
		return ""
	}
	return strings.Join(*l.vals, ",")
}

func (l *listFlag) Set(v string) error {
	if !l.set {
		*l.vals = nil
		l.set = true
	}
	*l.vals = append(*l.vals, v)
	return nil
}

// sizeFlag is a byte count: 1048576, 500M, 10GiB (K, M, G, T are powers of 1024).
type sizeFlag struct{ v *int64 }

func (s sizeFlag) String() string {
	if s.v == nil {
		return "0"
	}
	return strconv.FormatInt(*s.v, 10)
}

func (s sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.v = n
	return nil
}

func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRight(t, "KMGTPkmgtpiIbB")
	unit := strings.ToUpper(strings.TrimSpace(t[len(num):]))
	num = strings.TrimSpace(num)
	mult := map[string]int64{"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
		"MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}[unit]
	f, err := strconv.ParseFloat(num, 64)
	if mult == 0 || err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("%q is not a size (examples: 1048576, 500M, 10GiB)", s)
	}
	return int64(f * float64(mult)), nil
}

// prefixFlag is a repeatable CIDR (or a single address).
type prefixFlag struct {
	vals *[]netip.Prefix
}

func (p prefixFlag) String() string { return "" }

func (p prefixFlag) Set(v string) error {
	pr, err := netip.ParsePrefix(v)
	if err != nil {
		a, err2 := netip.ParseAddr(v)
		if err2 != nil {
			return fmt.Errorf("%q is not an address or CIDR", v)
		}
		pr = netip.PrefixFrom(a, a.BitLen())
	}
	*p.vals = append(*p.vals, pr.Masked())
	return nil
}

// parseServeConfig reads flags, then the --config file for every setting the command
// line did not give, and loads the HTTPS certificates they name. Errors name the
// setting (and the file's line).
func parseServeConfig(args []string, stderr io.Writer) (*serveConfig, error) {
	cfg, err := parseServeSettings(args, stderr)
	if err != nil {
		return nil, err
	}
	return cfg, cfg.loadCerts()
}

// parseServeSettings is parseServeConfig without loading certificates: offload cgi
// reads the same settings and serves no HTTPS of its own (its web server does), so it
// need not read, or be allowed to read, the daemon's keys.
func parseServeSettings(args []string, stderr io.Writer) (*serveConfig, error) {
	cfg := &serveConfig{
		Listen:   []string{":80"},
		Cache:    "/var/cache/offload",
		MaxDupes: 1,
		Timeout:  45 * time.Second,
		Grace:    30 * time.Second,
		Admin:    "127.0.0.1:9080",
		Fetchers: 64,
	}
	fset := flag.NewFlagSet("offload serve", flag.ContinueOnError)
	fset.SetOutput(stderr)
	var configFile string
	fset.StringVar(&cfg.Base, "base", "", "base server URL, http://host[:port] (required)")
	fset.StringVar(&cfg.BaseAddr, "base-addr", "", "connect to the base at this host:port instead of resolving its name")
	fset.Var(&listFlag{vals: &cfg.Listen}, "listen", "address to listen on, repeatable (default :80)")
	fset.StringVar(&cfg.Cache, "cache", cfg.Cache, "cache folder")
	fset.Var(sizeFlag{&cfg.CacheSize}, "cache-size", "cache bound in bytes, e.g. 500G (default 90% of the free space)")
	fset.IntVar(&cfg.MaxDupes, "max-dupes", cfg.MaxDupes, "simultaneous downloads of one file per client address (0: no cap)")
	fset.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", 0, "connections per client address (0: no cap)")
	fset.IntVar(&cfg.MaxConns, "max-conns", 0, "connections in all (0: no cap)")
	fset.Var(prefixFlag{&cfg.TrustedProxy}, "trusted-proxy", "proxy whose X-Forwarded-For is believed, CIDR, repeatable")
	fset.DurationVar(&cfg.Revalidate, "revalidate", 0, "trust a checked cache entry this long (0: ask the base on every request)")
	fset.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "drop a client that accepts no bytes this long; also the base's timeout")
	fset.DurationVar(&cfg.Grace, "grace", cfg.Grace, "on SIGTERM, let downloads finish this long")
	fset.StringVar(&cfg.Admin, "admin", cfg.Admin, "address for /metrics and /healthz (empty: none)")
	fset.StringVar(&cfg.AccessLog, "access-log", "", "access log file in Combined Log Format, - for stdout (default: none)")
	fset.StringVar(&cfg.User, "user", "", "when started as root: drop to this user after binding")
	fset.IntVar(&cfg.Fetchers, "fetchers", cfg.Fetchers, "requests in flight to the base, each for HEAD and GET")
	fset.IntVar(&cfg.Loops, "loops", 0, "event loops (0: one per core)")
	fset.StringVar(&cfg.DocRoot, "docroot", "", "serve files from this local copy of the base's web space when the base's HEAD says it is current")
	fset.BoolVar(&cfg.DocRootFollow, "docroot-follow-symlinks", false, "let symlinks in --docroot point outside it")
	fset.IntVar(&cfg.DiskWorkers, "disk-workers", 16, "threads that read file pages not in memory, so no event loop waits for the disk (0: the loops read)")
	fset.Var(&listFlag{vals: &cfg.TLSListen}, "tls-listen", "address to serve HTTPS on, repeatable (needs --tls-cert and --tls-key, or --acme-domain)")
	fset.Var(&listFlag{vals: &cfg.TLSCert}, "tls-cert", "certificate file (PEM, leaf first), repeatable; paired in order with --tls-key; chosen by SNI, the first is the default")
	fset.Var(&listFlag{vals: &cfg.TLSKey}, "tls-key", "private key file of the --tls-cert in the same place, repeatable")
	fset.Var(&listFlag{vals: &cfg.ACMEDomain}, "acme-domain", "obtain a certificate for this name from the ACME CA, repeatable")
	fset.StringVar(&cfg.ACMEEmail, "acme-email", "", "contact address registered with the ACME CA")
	fset.StringVar(&cfg.ACMECA, "acme-ca", "", "ACME directory URL (default Let's Encrypt's, "+acme.LetsEncryptURL+")")
	fset.StringVar(&cfg.ACMEDir, "acme-dir", "", "folder for the ACME account key and certificates (default: acme in the --cache folder)")
	fset.StringVar(&cfg.ACMECARoot, "acme-ca-root", "", "PEM file of extra roots to trust when talking to the ACME CA (a private or test CA)")
	fset.StringVar(&configFile, "config", "", "file of name = value lines with the same settings")
	if err := fset.Parse(args); err != nil {
		return nil, err
	}
	if fset.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fset.Arg(0))
	}
	if configFile != "" {
		set := map[string]bool{}
		fset.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if err := readConfigFile(configFile, fset, set); err != nil {
			return nil, err
		}
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// loadCerts loads and checks the HTTPS certificates the settings name.
func (c *serveConfig) loadCerts() error {
	if len(c.TLSListen) == 0 {
		return nil
	}
	if len(c.ACMEDomain) > 0 && c.ACMEDir == "" {
		c.ACMEDir = acmeDirFor(c.Cache)
	}
	pairs := make([]certs.Pair, len(c.TLSCert))
	for i := range c.TLSCert {
		pairs[i] = certs.Pair{Cert: c.TLSCert[i], Key: c.TLSKey[i]}
	}
	var err error
	c.certs, err = certs.New(certs.Config{Pairs: pairs, ACMEDomains: c.ACMEDomain, ACMEEmail: c.ACMEEmail,
		ACMECA: c.ACMECA, ACMEDir: c.ACMEDir, ACMECARoots: c.ACMECARoot})
	return err
}

// acmeDirFor is the default ACME folder: "acme" in the cache folder, which the daemon's
// user can write (the systemd unit's CacheDirectory, or handed over by --user). The
// cache's start-up scan leaves its subfolders other than its own fan-out alone;
// TestServeKeepsTheACMEFolderInTheCache checks that it stays so.
func acmeDirFor(cacheDir string) string {
	return filepath.Join(cacheDir, "acme")
}

// readConfigFile applies `name = value` lines to the flags not set on the command line;
// a name that is no flag of fset is an error naming its line.
func readConfigFile(path string, fset *flag.FlagSet, set map[string]bool) error {
	return readSettings(path, fset, set, func(name string) (bool, error) {
		if name == "config" || fset.Lookup(name) == nil {
			return false, fmt.Errorf("unknown setting %q", name)
		}
		return true, nil
	})
}

// readSettings reads a config file of `name = value` lines (# starts a comment, values
// may be quoted) and sets each flag that take says this command takes, unless the
// command line set it. Errors name the file and line.
func readSettings(path string, fset *flag.FlagSet, set map[string]bool, take func(name string) (bool, error)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if i := strings.Index(text, "#"); i >= 0 {
			text = strings.TrimSpace(text[:i])
		}
		if text == "" {
			continue
		}
		name, value, ok := strings.Cut(text, "=")
		name, value = strings.TrimSpace(name), strings.Trim(strings.TrimSpace(value), `"`)
		if !ok || name == "" {
			return fmt.Errorf("config %s:%d: want name = value, got %q", path, line, text)
		}
		use, err := take(name)
		if err != nil {
			return fmt.Errorf("config %s:%d: %w", path, line, err)
		}
		if !use || set[name] {
			continue // another command's setting, or the command line wins
		}
		if err := fset.Set(name, value); err != nil {
			return fmt.Errorf("config %s:%d: %s: %v", path, line, name, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

func (c *serveConfig) check() error {
	if c.Base == "" {
		return errors.New("--base is required (the base server's URL, e.g. http://www.example.org)")
	}
	if u, err := url.Parse(c.Base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("--base %q: want http://host[:port] (no path: the offload server asks the base for the client's own path)", c.Base)
	}
	if c.Admin != "" {
		if _, _, err := net.SplitHostPort(c.Admin); err != nil {
			return fmt.Errorf("--admin %q: want host:port", c.Admin)
		}
	}
	if c.User != "" {
		if _, err := user.Lookup(c.User); err != nil {
			return fmt.Errorf("--user %q: no such user", c.User)
		}
	}
	if c.BaseAddr != "" {
		if _, _, err := net.SplitHostPort(c.BaseAddr); err != nil {
			return fmt.Errorf("--base-addr %q: want host:port", c.BaseAddr)
		}
	}
	for _, l := range c.Listen {
		if _, _, err := net.SplitHostPort(l); err != nil {
			return fmt.Errorf("--listen %q: want [host]:port", l)
		}
	}
	for _, l := range c.TLSListen {
		if _, _, err := net.SplitHostPort(l); err != nil {
			return fmt.Errorf("--tls-listen %q: want [host]:port", l)
		}
	}
	if len(c.TLSCert) != len(c.TLSKey) {
		return fmt.Errorf("--tls-cert and --tls-key come in pairs: %d certificates, %d keys", len(c.TLSCert), len(c.TLSKey))
	}
	certSource := len(c.TLSCert) > 0 || len(c.ACMEDomain) > 0
	if len(c.TLSListen) > 0 && !certSource {
		return errors.New("--tls-listen needs certificates: --tls-cert and --tls-key, or --acme-domain")
	}
	if certSource && len(c.TLSListen) == 0 {
		return errors.New("--tls-cert and --acme-domain need --tls-listen (the HTTPS address)")
	}
	if len(c.ACMEDomain) == 0 && (c.ACMEEmail != "" || c.ACMECA != "" || c.ACMEDir != "" || c.ACMECARoot != "") {
		return errors.New("--acme-email, --acme-ca, --acme-dir and --acme-ca-root need --acme-domain")
	}
	if c.DocRoot != "" {
		if st, err := os.Stat(c.DocRoot); err != nil || !st.IsDir() {
			return fmt.Errorf("--docroot %q: not a folder", c.DocRoot)
		}
	}
	switch {
	case c.MaxDupes < 0:
		return errors.New("--max-dupes must be 0 or more")
	case c.MaxConns < 0 || c.MaxConnsPerIP < 0:
		return errors.New("--max-conns and --max-conns-per-ip must be 0 or more")
	case c.Timeout <= 0:
		return errors.New("--timeout must be positive")
	case c.Revalidate < 0 || c.Grace < 0:
		return errors.New("--revalidate and --grace must not be negative")
	case c.Fetchers <= 0:
		return errors.New("--fetchers must be positive")
	case c.DiskWorkers < 0:
		return errors.New("--disk-workers must not be negative")
	case c.DocRootFollow && c.DocRoot == "":
		return errors.New("--docroot-follow-symlinks needs --docroot")
	case c.Cache == "":
		return errors.New("--cache must name a folder")
	}
	return nil
}

func runServe(args []string) int {
	cfg, err := parseServeConfig(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "offload serve:", err)
		return 2
	}
	logger := log.New(os.Stderr, "offload: ", log.LstdFlags)
	if err := serve(cfg, logger, nil); err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

// serve runs the daemon until SIGTERM or SIGINT; started, if not nil, gets the server
// once it listens (the demo uses it).
func serve(cfg *serveConfig, logger *log.Logger, started func(*server.Server)) error {
	if len(cfg.TLSListen) > 0 && os.Getenv("GOGC") == "" {
		// An HTTPS connection's state is Go heap (about 7 KiB: the tls.Conn, its two
		// AES-GCM states), where a plain one's is a few hundred bytes; with Go's default
		// the heap may grow to twice what is live before a collection. Half of it keeps
		// a slow HTTPS download within its memory budget (scripts/bench.sh step 6)
		// for a little more collector work during handshakes. GOGC overrides it.
		debug.SetGCPercent(50)
	}
	c, err := cache.Open(cache.Config{
		Dir: cfg.Cache, MaxBytes: cfg.CacheSize, Base: cfg.Base, BaseAddr: cfg.BaseAddr,
		UserAgent: "offload/" + version, Fetchers: cfg.Fetchers, Timeout: cfg.Timeout,
		Revalidate: cfg.Revalidate, DocRoot: cfg.DocRoot, FollowSymlinks: cfg.DocRootFollow, Logf: logger.Printf,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	var alog *server.AccessLog
	if cfg.AccessLog != "" {
		if alog, err = server.OpenAccessLog(cfg.AccessLog); err != nil {
			return err
		}
	}
	if cfg.certs != nil && cfg.certs.ACME() {
		// Made now, while the daemon may still be root, so that the user it drops to
		// (privilegeDrop hands it over) can write the certificates it obtains later.
		if err := os.MkdirAll(cfg.ACMEDir, 0o700); err != nil {
			return fmt.Errorf("--acme-dir: %w", err)
		}
	}
	var drop func() error
	if cfg.User != "" {
		if drop, err = privilegeDrop(cfg); err != nil {
			return err
		}
	}
	scfg := server.Config{
		Listen: cfg.Listen, Cache: c, AccessLog: alog, Timeout: cfg.Timeout, Loops: cfg.Loops, OnBoot: drop,
		DiskWorkers: diskWorkers(cfg.DiskWorkers),
		Limiter: limiter.New(limiter.Config{MaxDupes: cfg.MaxDupes, MaxConnsPerIP: cfg.MaxConnsPerIP,
			MaxConns: cfg.MaxConns, Trusted: cfg.TrustedProxy}),
		Logf: logger.Printf,
	}
	if cfg.certs != nil {
		scfg.TLSListen, scfg.TLS = cfg.TLSListen, cfg.certs.TLSConfig()
		if cfg.certs.ACME() {
			scfg.ACMEChallenge = cfg.certs.ACMEChallenge
		}
	}
	srv, err := server.New(scfg)
	if err != nil {
		return err
	}
	if cfg.Admin != "" {
		ln, err := net.Listen("tcp", cfg.Admin)
		if err != nil {
			return fmt.Errorf("--admin %s: %w", cfg.Admin, err)
		}
		admin := &http.Server{Handler: srv.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}
		go admin.Serve(ln)
		defer admin.Close()
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		<-srv.Ready()
		if a := srv.Addr(); a != nil {
			logger.Printf("offloading %s on %s (cache %s, bound %d bytes)", cfg.Base, a, cfg.Cache, c.MaxBytes())
		}
		if len(cfg.TLSListen) > 0 {
			logger.Printf("HTTPS on %s: %d certificate files, ACME for %v (folder %s)", strings.Join(cfg.TLSListen, ", "),
				len(cfg.TLSCert), cfg.ACMEDomain, cfg.ACMEDir)
		}
		if started != nil {
			started(srv)
		}
		for sig := range sigs {
			if sig == syscall.SIGHUP {
				if alog != nil {
					if err := alog.Reopen(); err != nil {
						logger.Print(err)
					}
				}
				if len(cfg.TLSCert) > 0 {
					if err := cfg.certs.Reload(); err != nil {
						logger.Printf("SIGHUP: %v (still serving the certificates loaded before)", err)
					} else {
						logger.Printf("SIGHUP: reloaded %d certificates", len(cfg.TLSCert))
					}
				}
				continue
			}
			logger.Printf("%v: draining for up to %v", sig, cfg.Grace)
			ctx, cancel := context.WithTimeout(context.Background(), cfg.Grace)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				logger.Print(err)
			}
			return
		}
	}()
	err = srv.Serve()
	alog.Flush()
	return err
}

// privilegeDrop prepares the switch to cfg.User: the cache and the log become theirs
// now, the uid changes once the listeners are bound (ports below 1024 need root).
func privilegeDrop(cfg *serveConfig) (func() error, error) {
	u, err := user.Lookup(cfg.User)
	if err != nil {
		return nil, fmt.Errorf("--user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if os.Geteuid() != 0 {
		if os.Geteuid() == uid {
			return nil, nil
		}
		return nil, fmt.Errorf("--user %s: only root can switch users (or run as %s, with CAP_NET_BIND_SERVICE for port 80)", cfg.User, cfg.User)
	}
	err = filepath.WalkDir(cfg.Cache, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		return nil, fmt.Errorf("--user: chown %s: %w", cfg.Cache, err)
	}
	if cfg.certs != nil && cfg.certs.ACME() {
		err = filepath.WalkDir(cfg.ACMEDir, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, uid, gid)
		})
		if err != nil {
			return nil, fmt.Errorf("--user: chown %s: %w", cfg.ACMEDir, err)
		}
	}
	if cfg.AccessLog != "" && cfg.AccessLog != "-" {
		_ = os.Chown(cfg.AccessLog, uid, gid)
	}
	return func() error {
		if err := unix.Setgroups([]int{gid}); err != nil {
			return fmt.Errorf("--user: setgroups: %w", err)
		}
		if err := unix.Setresgid(gid, gid, gid); err != nil {
			return fmt.Errorf("--user: setgid: %w", err)
		}
		if err := unix.Setresuid(uid, uid, uid); err != nil {
			return fmt.Errorf("--user: setuid: %w", err)
		}
		// Check it really dropped: getting root back must fail.
		if unix.Geteuid() != uid || unix.Getuid() != uid || unix.Setuid(0) == nil {
			return fmt.Errorf("--user: still root after dropping to %s", cfg.User)
		}
		return nil
	}, nil
}

// diskWorkers maps the flag (0: none) to server.Config's (negative: none).
func diskWorkers(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
