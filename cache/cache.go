// Package cache is the offload server's disk cache: entries keyed by base host and path,
// filled once from the base while every waiting reader follows the growing file,
// committed by atomic rename, revalidated with HEAD, bounded in bytes by ristretto.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sys/unix"
)

// Config says where the cache lives and how it reaches the base.
type Config struct {
	Dir        string        // cache folder; created if missing
	MaxBytes   int64         // bound on the bodies kept; 0: 90 % of the free space at start
	Base       string        // http://host[:port] the base is known by (Host header)
	BaseAddr   string        // host:port to connect to instead of resolving Base; optional
	UserAgent  string        // sent to the base
	Fetchers   int           // HEADs and GETs in flight to the base, each; default 64
	Timeout    time.Duration // connect, response head, idle body; default 45 s
	Revalidate time.Duration // trust a checked entry this long; 0: HEAD on every request
	MemBytes   int64         // memory for bodies of small files; default 64 MiB
	SmallFile  int64         // largest body kept in memory; default 64 KiB
	// Windows bounds the ranged fetches for readers far ahead of a fill, in all
	// (default 16) and per client address (WindowsPerClient, default 2); a reader past
	// either waits for the fill.
	Windows, WindowsPerClient int
	// DocRoot, when set, is a local copy of the base's web space to serve files from
	// instead of the cache, when the base's HEAD says the local file is its version
	// (docroot.go); FollowSymlinks lets its symlinks point outside it.
	DocRoot        string
	FollowSymlinks bool
	// Shared opens the folder for a process among many that use it at once, each for
	// a request or a few (CGI mode; shared.go): no scan and no index in memory, fills
	// coalesced across processes through lock files, the bound kept by offload cache
	// trim. Off: the cache of one long-running process (offload serve).
	Shared bool
	Logf   func(format string, args ...any)
}

// Stats counts what the cache did; read it with atomic loads.
type Stats struct {
	Hits, Misses, Stale, Fills, FillErrors, Heads, Gets, Evictions, Rejected atomic.Int64
	// Resumed counts fills continued where their bytes stopped: a .part kept from before
	// a restart, or the rest asked for after the base dropped the connection.
	Resumed atomic.Int64
	// Local counts requests answered from the DocRoot's local copy.
	Local atomic.Int64
	// OpenFiles is the data-file descriptors open now (shared by their readers), and
	// Windows the ranged fetches under way: both gauges.
	OpenFiles, Windows atomic.Int64
}

// Cache is the disk cache of one base server. Its methods are safe for concurrent use.
type Cache struct {
	cfg   Config
	host  string // base host, the first part of every key
	up    *upstream
	doc   *docRoot                         // the local copy (Config.DocRoot); nil without one
	index *ristretto.Cache[string, *entry] // the policy and the index: cost = body bytes
	mem   *ristretto.Cache[string, []byte] // bodies of small files, by data file path
	Stats Stats

	closing sync.RWMutex // held for reading around index changes from fills; Close takes it
	closed  bool         // guarded by closing
	// shutting is set before the policy closes: ristretto's Close evicts every item,
	// and those evictions must not delete the files the next start will index.
	shutting atomic.Bool

	// fsync is (*os.File).Sync. commit calls it on the data file before the rename and
	// on the folder after it; a field so that a test can see that order, which no run
	// without a power cut can observe otherwise.
	fsync func(*os.File) error
	// ckEvery is checkpointEvery (resume.go); a field so that a test can checkpoint
	// small fills.
	ckEvery int64

	closeq chan *os.File // files for the closer goroutine: closeLater
	stop   chan struct{} // closed by Close: ends the janitor

	idleMu   sync.Mutex          // protects idle; taken after an entry's mu, never before
	idle     map[*entry]struct{} // entries whose descriptor is open with no reader
	idleOpen atomic.Int64        // len(idle), for a check without the lock

	mu      sync.Mutex       // protects fills, heads and windows
	fills   map[string]*fill // fills in progress, by key
	heads   map[string]*headCall
	windows map[netip.Addr]int // windows under way per client address
}

// entry is one committed version of a file: its data file and metadata.
type entry struct {
	c       *Cache
	meta    Meta
	path    string       // data file; unique per version, so removing it never hits another
	checked atomic.Int64 // UnixNano of the last HEAD that confirmed it

	checkedBy atomic.Pointer[netip.Addr] // the client that HEAD was for (forward.go)

	mu      sync.Mutex // protects file and removed; never held across I/O
	file    *sharedFile
	removed bool // the data file is unlinked: close its descriptor with the last reader

	part *partial // set for a resumable .part (resume.go), indexed under partKey
}

// sharedFile is one open descriptor shared by every reader of a version: sendfile takes
// its own offset, so readers need no file position of their own.
type sharedFile struct {
	f    *os.File
	refs int   // guarded by the owner's mutex
	idle int64 // UnixNano when refs last fell to 0 (entries only; see keepOpen)
}

// Open makes the cache folder, scans it and returns the cache. Complete entries are
// indexed, and so are unfinished fills with a checkpoint (they resume on the next
// request for their file); other unfinished fills and damaged files are removed, but
// not those another process has open (lockfile.go).
//
// With cfg.Shared it does none of that (shared.go): it makes the folder if need be and
// returns, in the same time whatever the cache holds.
func Open(cfg Config) (*Cache, error) {
	if cfg.Fetchers <= 0 {
		cfg.Fetchers = 64
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 45 * time.Second
	}
	if cfg.MemBytes <= 0 {
		cfg.MemBytes = 64 << 20
	}
	if cfg.SmallFile <= 0 {
		cfg.SmallFile = 64 << 10
	}
	if cfg.Windows <= 0 {
		cfg.Windows = 16
	}
	if cfg.WindowsPerClient <= 0 {
		cfg.WindowsPerClient = 2
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "offload"
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	up, err := newUpstream(&cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if cfg.MaxBytes <= 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(cfg.Dir, &st); err != nil {
			return nil, fmt.Errorf("cache: statfs %s: %w", cfg.Dir, err)
		}
		cfg.MaxBytes = int64(st.Bavail) * int64(st.Bsize) * 9 / 10
		if cfg.MaxBytes <= 0 {
			return nil, fmt.Errorf("cache: %s has no free space", cfg.Dir)
		}
	}
	c := &Cache{cfg: cfg, host: up.base.Host, up: up, fills: map[string]*fill{}, heads: map[string]*headCall{},
		fsync: (*os.File).Sync, ckEvery: checkpointEvery, windows: map[netip.Addr]int{}, closeq: make(chan *os.File, 4096),
		stop: make(chan struct{}), idle: map[*entry]struct{}{}}
	go c.runCloser(c.closeq)
	if cfg.Shared {
		if _, err := currentBoot(); err != nil {
			return nil, err
		}
		if cfg.DocRoot != "" {
			if c.doc, err = openDocRoot(cfg.DocRoot, cfg.FollowSymlinks); err != nil {
				return nil, err
			}
		}
		return c, nil
	}
	go c.runJanitor()
	// Ten counters per entry the cache could hold at 1 MiB an entry; each costs about
	// 3 bytes of memory, so the cap keeps an idle daemon small on a huge disk.
	counters := cfg.MaxBytes / (1 << 20) * 10
	counters = min(max(counters, 10_000), 1_000_000)
	c.index, err = ristretto.NewCache(&ristretto.Config[string, *entry]{
		NumCounters:        counters,
		MaxCost:            cfg.MaxBytes,
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict: func(it *ristretto.Item[*entry]) {
			c.Stats.Evictions.Add(1)
			c.remove(it.Value)
		},
		OnReject: func(it *ristretto.Item[*entry]) {
			c.Stats.Rejected.Add(1) // admission chose the entries already cached
			c.remove(it.Value)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.mem, err = ristretto.NewCache(&ristretto.Config[string, []byte]{
		NumCounters: max(cfg.MemBytes/cfg.SmallFile*10, 1000),
		MaxCost:     cfg.MemBytes,
		BufferItems: 64,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	if err := c.scan(); err != nil {
		return nil, err
	}
	if cfg.DocRoot != "" {
		if c.doc, err = openDocRoot(cfg.DocRoot, cfg.FollowSymlinks); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Close checkpoints the fills in progress, so that the next start resumes them, and
// stops the policy goroutines. Open handles stay readable.
func (c *Cache) Close() {
	c.checkpointFills()
	c.closing.Lock()
	defer c.closing.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.shutting.Store(true)
	close(c.stop)
	c.closeIdle(true)
	if c.index != nil {
		c.index.Close()
		c.mem.Close()
	}
}

// MaxBytes is the bound in force.
func (c *Cache) MaxBytes() int64 { return c.cfg.MaxBytes }

func (c *Cache) key(path string) string { return c.host + path }

// remove deletes an entry's data file; readers holding it open keep reading.
func (c *Cache) remove(e *entry) {
	if e == nil || c.shutting.Load() {
		return
	}
	if e.part != nil {
		c.removePart(e)
		return
	}
	if err := os.Remove(e.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.cfg.Logf("cache: remove %s: %v", e.path, err)
	}
	c.mem.Del(e.path)
	e.mu.Lock()
	e.removed = true
	if e.file != nil && e.file.refs == 0 {
		c.closeLater(e.file.f) // the disk space comes back with the last close
		e.file = nil
		c.unidle(e)
	}
	e.mu.Unlock()
}

// scan indexes the complete entries and the resumable fills under the cache folder and
// removes everything else, but for what other processes use (lockfile.go): lock files,
// and .parts someone has open. It reads one 4 KiB header per file, so it takes time in
// proportion to the entries. It points every key's .cur at the entry it indexes.
func (c *Cache) scan() error {
	newest := map[string]*entry{}
	var parts, sidecars []string
	err := filepath.WalkDir(c.cfg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != c.cfg.Dir && !fanout(d.Name()) {
				return filepath.SkipDir // not the cache's (the download slots of CGI mode)
			}
			return nil
		}
		name := d.Name()
		switch {
		case strings.HasSuffix(name, ".part"):
			parts = append(parts, path) // after the walk, with its sidecar
			return nil
		case strings.HasSuffix(name, resumeSuffix):
			sidecars = append(sidecars, path)
			return nil
		case strings.HasSuffix(name, lockSuffix), strings.HasSuffix(name, curSuffix):
			return nil // pointers are checked below
		case strings.HasSuffix(name, tmpSuffix):
			if info, err := d.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
				_ = os.Remove(path) // a pointer whose writer died before its rename
			}
			return nil
		}
		e, err := c.loadEntry(path)
		if err != nil {
			c.cfg.Logf("cache: removing %s: %v", path, err)
			return os.Remove(path)
		}
		if old := newest[e.meta.Key]; old != nil {
			if old.meta.Stored.After(e.meta.Stored) {
				return os.Remove(e.path)
			}
			_ = os.Remove(old.path)
		}
		newest[e.meta.Key] = e
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: scan %s: %w", c.cfg.Dir, err)
	}
	for k, e := range newest {
		if !c.index.Set(k, e, e.meta.Size) {
			c.remove(e)
		}
	}
	c.indexParts(parts, sidecars, newest)
	c.index.Wait()
	for _, e := range newest {
		if cur := curOf(e.path); exists(e.path) {
			if name, err := os.Readlink(cur); err != nil || name != filepath.Base(e.path) {
				if err := setCurrent(e.path); err != nil {
					c.cfg.Logf("cache: %v", err)
				}
			}
		}
	}
	return nil
}

// fanout reports whether name is one of the cache's fan-out folders.
func fanout(name string) bool {
	if len(name) != 2 {
		return false
	}
	for i := range 2 {
		if !strings.ContainsRune("0123456789abcdef", rune(name[i])) {
			return false
		}
	}
	return true
}

// curOf is the pointer of the key whose data file (or .part, or lock) is path.
func curOf(path string) string {
	return filepath.Join(filepath.Dir(path), filepath.Base(path)[:nameLen]+curSuffix)
}

func (c *Cache) loadEntry(path string) (*entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := readHeader(f)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != HeaderSize+m.Size {
		return nil, fmt.Errorf("length %d, header says %d", st.Size()-HeaderSize, m.Size)
	}
	if !strings.HasPrefix(m.Key, c.host+"/") {
		return nil, fmt.Errorf("entry of another base (%s)", m.Key)
	}
	if !strings.HasPrefix(filepath.Base(path), keyName(m.Key)+"-") {
		return nil, fmt.Errorf("file name does not match key %s", m.Key)
	}
	return &entry{c: c, meta: *m, path: path}, nil
}

// dataPath is where version gen of key lives: two levels of fan-out by hash.
func (c *Cache) dataPath(key string, gen int64) string {
	name := keyName(key)
	return filepath.Join(c.cfg.Dir, name[:2], fmt.Sprintf("%s-%x", name, gen))
}

// Handle is one reader's view of a version: metadata, and the bytes in memory or in a
// file (complete or still filling). Release it exactly once.
type Handle struct {
	Meta  Meta
	Body  []byte // the whole body, for small files kept in memory; else nil
	Stale bool   // the base could not be asked; this is the last known version
	Hit   bool   // served from a committed entry

	file    *sharedFile
	release func(*sharedFile)
	fill    *fill // nil once the body is complete on disk
	base    int64 // body offset of the file's first body byte: non-zero for a window
	end     int64 // a window's end (exclusive); 0 otherwise
	hdr     int64 // where the body starts in the file: HeaderSize, or 0 for a docroot file
}

// FileOffset is where body byte off is in the file (Fd): after the data file's header,
// or at off itself in a local copy's file. A window handle holds only the bytes from
// its base on.
func (h *Handle) FileOffset(off int64) int64 { return h.hdr + off - h.base }

// Base is the first body byte the handle can give: 0 but for a window.
func (h *Handle) Base() int64 { return h.base }

// End is one past the last body byte the handle can give: Meta.Size but for a window.
func (h *Handle) End() int64 {
	if h.base > 0 {
		return h.end
	}
	return h.Meta.Size
}

// Fd is the descriptor to sendfile from; body byte off is at FileOffset(off).
func (h *Handle) Fd() int { return int(h.file.f.Fd()) }

// File is the open file (body byte off at FileOffset(off)), or nil for an in-memory body.
func (h *Handle) File() *os.File {
	if h.file == nil {
		return nil
	}
	return h.file.f
}

// Available is how many body bytes can be read now, and the fill's error if it failed.
// A complete body has Size bytes available and no error.
func (h *Handle) Available() (int64, error) {
	if h.fill == nil {
		return h.Meta.Size, nil
	}
	n, err := h.fill.available()
	return h.base + n, err
}

// Wait arranges for wake to be called once, when more than have bytes are available or
// the fill ends. It returns false, without arranging anything, when that is already so.
func (h *Handle) Wait(have int64, wake func()) bool {
	if h.fill == nil {
		return false
	}
	return h.fill.wait(have-h.base, wake)
}

// Release gives the handle's descriptor back.
func (h *Handle) Release() {
	if h.file != nil {
		h.release(h.file)
		h.file = nil
	}
}

// LookupFor returns a handle for path without asking the base, when a committed entry
// exists and was confirmed for client within the revalidation period; otherwise nil. It
// does not touch the network or read file data (it may open the data file), so the event
// loop may call it.
func (c *Cache) LookupFor(path string, client netip.Addr) *Handle {
	if c.cfg.Revalidate <= 0 || c.cfg.Shared {
		return nil
	}
	e, ok := c.index.Get(c.key(path))
	if !ok || !e.trustedFor(client, c.cfg.Revalidate) {
		return nil
	}
	if e.meta.Size <= c.cfg.SmallFile {
		// Small bodies are answered from memory; one not there yet is read by Get, off
		// the event loop, which also puts it in memory.
		body, ok := c.mem.Get(e.path)
		if !ok {
			return nil
		}
		c.Stats.Hits.Add(1)
		return &Handle{Meta: e.meta, Body: body, Hit: true}
	}
	// Only a descriptor already open for other readers: opening a file may wait for the
	// disk, which the event loop must not; Get opens it off the loop.
	sf := e.acquireOpen()
	if sf == nil {
		return nil
	}
	c.Stats.Hits.Add(1)
	return &Handle{Meta: e.meta, Hit: true, file: sf, release: e.releaseFile, hdr: HeaderSize}
}

// Stat is Get for a HEAD request: the metadata of the current version, from the cache
// when it is current, else from the base's HEAD, without filling anything. The handle
// has no body.
func (c *Cache) Stat(ctx context.Context, path string) (*Handle, error) {
	return c.get(ctx, path, true, 0, 0)
}

// Get returns a handle for path after asking the base whether the cached version is
// current, starting a fill when it is not. path is the cleaned, decoded request path
// (proto.Request.Path): the key, and, encoded again, what the base is asked for.
// Errors are *Error values to relay.
func (c *Cache) Get(ctx context.Context, path string) (*Handle, error) {
	return c.get(ctx, path, false, 0, 0)
}

// GetFrom is Get for a reader that wants the bytes [from, end) (end 0: to the end of
// the file). When the file must be filled and `from` is far past what the fill has
// landed, the reader gets a window of its own, fetched with a Range request for just
// those bytes, while the fill goes on for the cache: it need not wait for gigabytes to
// land first. Its handle's Base is then `from`. A window stops fetching when its reader
// leaves, and windows are capped in all and per client (WithClient).
func (c *Cache) GetFrom(ctx context.Context, path string, from, end int64) (*Handle, error) {
	return c.get(ctx, path, false, from, end)
}

// farAhead is how far past a fill's landed bytes a reader must ask before it gets a window.
const farAhead = 16 << 20

func (c *Cache) get(ctx context.Context, path string, metaOnly bool, from, end int64) (*Handle, error) {
	if c.cfg.Shared {
		return c.getShared(ctx, path, metaOnly, from, end)
	}
	key := c.key(path)
	tgt, err := target(path)
	if err != nil {
		return nil, &Error{Status: 400, Reason: "bad path", Err: err}
	}
	fromCache := func(e *entry, stale bool) (*Handle, error) {
		if metaOnly {
			return &Handle{Meta: e.meta, Stale: stale, Hit: true}, nil
		}
		return c.hit(e, stale)
	}
	local := c.doc != nil && !metaOnly // a local copy to serve from (docroot.go)
	if local {
		if h := c.docTrusted(path, clientOf(ctx)); h != nil {
			return h, nil
		}
	}
	e, _ := c.index.Get(key)
	if e != nil && e.trustedFor(clientOf(ctx), c.cfg.Revalidate) {
		if h, err := fromCache(e, false); err == nil {
			return h, nil
		}
		e = nil // evicted between the lookup and the open: fill again
	}
	m, err := c.head(ctx, headKey(ctx, key), tgt)
	if err != nil {
		var ue *Error
		switch {
		case IsBaseDown(err) && e != nil:
			c.cfg.Logf("cache: base down for %s, serving the cached copy: %v", key, err)
			c.Stats.Stale.Add(1)
			return fromCache(e, true)
		case errors.As(err, &ue) && (ue.Status == 404 || ue.Status == 410):
			c.purge(key)
		}
		return nil, err
	}
	m.Key = key
	if local {
		cached := e != nil && SameVersion(&e.meta, m) // quiet: the cache has it anyway
		if h := c.docServe(path, m, clientOf(ctx), cached); h != nil {
			return h, nil
		}
	}
	if e != nil && SameVersion(&e.meta, m) {
		e.confirm(clientOf(ctx))
		if h, err := fromCache(e, false); err == nil {
			return h, nil
		}
		// Evicted between the lookup and the open: fill again.
	}
	if metaOnly {
		return &Handle{Meta: *m}, nil
	}
	f, done := c.startFill(ctx, key, tgt, m, true)
	if done != nil {
		// Filled while our HEAD was out.
		done.confirm(clientOf(ctx))
		if h, err := fromCache(done, false); err == nil {
			return h, nil
		}
		f, _ = c.startFill(ctx, key, tgt, m, false)
	}
	c.Stats.Misses.Add(1)
	return c.fillHandle(ctx, f, key, tgt, m, from, end)
}

// hit opens a handle on a committed entry.
func (c *Cache) hit(e *entry, stale bool) (*Handle, error) {
	c.Stats.Hits.Add(1)
	h := &Handle{Meta: e.meta, Stale: stale, Hit: true}
	if e.meta.Size <= c.cfg.SmallFile {
		if body, ok := c.mem.Get(e.path); ok {
			h.Body = body
			return h, nil
		}
	}
	sf, err := e.acquire()
	if err != nil {
		// Evicted or removed under us: forget it, the next request fills again.
		c.index.Del(e.meta.Key)
		return nil, &Error{Status: 503, Reason: "cached file vanished, try again", Err: err}
	}
	h.file, h.release, h.hdr = sf, e.releaseFile, HeaderSize
	if e.meta.Size <= c.cfg.SmallFile {
		body := make([]byte, e.meta.Size)
		if _, err := sf.f.ReadAt(body, HeaderSize); err == nil {
			c.mem.Set(e.path, body, int64(len(body))+64)
			h.Body = body
			h.Release()
		}
	}
	return h, nil
}

// acquire takes a reference on the entry's shared descriptor, opening the file if no
// reader has it open. e.mu is never held across the open, so the event loop (which
// takes it in acquireOpen and releaseFile) never waits for the disk.
func (e *entry) acquire() (*sharedFile, error) {
	if sf := e.acquireOpen(); sf != nil {
		return sf, nil
	}
	f, err := os.Open(e.path)
	if err != nil {
		return nil, err
	}
	_, _ = tryFlock(f, unix.LOCK_SH) // in use (lockfile.go): trim leaves it alone
	e.c.Stats.OpenFiles.Add(1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.file != nil {
		// Opened by another reader meanwhile: share theirs.
		e.c.closeLater(f)
		e.file.refs++
		return e.file, nil
	}
	e.file = &sharedFile{f: f, refs: 1}
	return e.file, nil
}

// acquireOpen is acquire when the descriptor is open already, else nil: no I/O.
func (e *entry) acquireOpen() *sharedFile {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.file == nil {
		return nil
	}
	if e.file.refs == 0 {
		e.c.unidle(e) // idle no more
	}
	e.file.refs++
	return e.file
}

// releaseFile drops a reference. The descriptor of a current entry stays open for
// keepOpen after its last reader (so that Lookup, on the event loop, finds it open
// next time); closeIdle closes it after that. A removed entry's closes at once.
func (e *entry) releaseFile(sf *sharedFile) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sf.refs--
	if sf.refs > 0 {
		return
	}
	if e.file != sf || e.removed || e.c.idleOpen.Load() >= maxIdleOpen {
		e.c.closeLater(sf.f)
		if e.file == sf {
			e.file = nil
		}
		return
	}
	sf.idle = time.Now().UnixNano()
	e.c.setIdle(e)
}

// setIdle and unidle keep c.idle, the entries whose descriptor is open with no reader,
// and its size idleOpen; the caller holds e.mu.
func (c *Cache) setIdle(e *entry) {
	c.idleMu.Lock()
	defer c.idleMu.Unlock()
	if _, ok := c.idle[e]; !ok {
		c.idle[e] = struct{}{}
		c.idleOpen.Add(1)
	}
}

func (c *Cache) unidle(e *entry) {
	c.idleMu.Lock()
	defer c.idleMu.Unlock()
	if _, ok := c.idle[e]; ok {
		delete(c.idle, e)
		c.idleOpen.Add(-1)
	}
}

// keepIdle gives a new entry a descriptor of its own, a dup of the fill's, kept open
// as if its last reader had just left: the next Lookup finds it open.
func (c *Cache) keepIdle(e *entry, f *os.File) {
	if c.idleOpen.Load() >= maxIdleOpen {
		return
	}
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return
	}
	unix.CloseOnExec(fd)
	c.Stats.OpenFiles.Add(1)
	e.file = &sharedFile{f: os.NewFile(uintptr(fd), e.path), idle: time.Now().UnixNano()}
	c.setIdle(e)
}

// keepOpen is how long a data file stays open after its last reader, and maxIdleOpen
// how many may be open so with no reader, so idle descriptors never crowd out sockets.
const (
	keepOpen    = 10 * time.Second
	maxIdleOpen = 1024
)

// closeIdle closes the descriptors that have had no reader for keepOpen; all of them
// when all is set.
func (c *Cache) closeIdle(all bool) {
	now := time.Now().UnixNano()
	c.idleMu.Lock()
	idle := make([]*entry, 0, len(c.idle))
	for e := range c.idle {
		idle = append(idle, e)
	}
	c.idleMu.Unlock()
	for _, e := range idle {
		e.mu.Lock()
		sf := e.file
		switch {
		case sf == nil || sf.refs > 0:
			// Closed since, or taken up again by a reader.
		case all || e.removed || now-sf.idle > int64(keepOpen):
			c.closeLater(sf.f)
			e.file = nil
		default:
			e.mu.Unlock()
			continue
		}
		c.unidle(e)
		e.mu.Unlock()
	}
}

func (c *Cache) runJanitor() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.closeIdle(false)
		}
	}
}

// purge drops the entry for key, and a resumable fill of it: the base says the file is gone.
func (c *Cache) purge(key string) {
	if e, ok := c.index.Get(key); ok {
		c.index.Del(key)
		c.remove(e)
		c.cfg.Logf("cache: purged %s: gone on the base", key)
	}
	if p := c.takePart(key); p != nil {
		removeQuiet(p.path, p.part.sidecar)
	}
}

// headCall is a HEAD in flight that later callers for the same key wait for.
type headCall struct {
	done chan struct{}
	meta *Meta
	err  error
}

// head asks the base about key once however many callers ask at the same moment.
func (c *Cache) head(ctx context.Context, key, tgt string) (*Meta, error) {
	c.mu.Lock()
	if call, ok := c.heads[key]; ok {
		c.mu.Unlock()
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, &Error{Status: 503, Reason: "request canceled", Err: ctx.Err()}
		}
		if call.meta == nil {
			return nil, call.err
		}
		m := *call.meta
		return &m, nil
	}
	call := &headCall{done: make(chan struct{})}
	c.heads[key] = call
	c.mu.Unlock()

	c.Stats.Heads.Add(1)
	// The HEAD serves every waiter, so it does not die with the first caller's request.
	call.meta, call.err = c.up.head(context.WithoutCancel(ctx), tgt)
	c.mu.Lock()
	delete(c.heads, key)
	c.mu.Unlock()
	close(call.done)
	if call.meta == nil {
		return nil, call.err
	}
	m := *call.meta
	return &m, nil
}
