package cache

// Local copy mode (the original's GNOCACHE): the offload host holds a copy of the base's
// web space (rsync'd, NFS-mounted) and serves files from it instead of filling the
// cache, still asking the base with a HEAD (or trusting a check for --revalidate, for
// the client it was made for) whether this client may have the file, and which version
// is current.
//
// The local file is served only when it is the base's version by this rule: a regular
// file, the same length as the HEAD's Content-Length, and a modification time equal, to
// the second, to the HEAD's Last-Modified. The ETag is not compared: a base computes it
// from things the copy does not share (Apache's default is size and mtime in
// microseconds, others hash the bytes or use the inode), so an equal length and date are
// what a copy that keeps mtimes (rsync -t, -a; NFS) can show. A HEAD without
// Last-Modified, a shorter or longer file, another date, a path that is no regular file
// or one that leaves the folder: the request is served as without --docroot, from the
// cache (filling it). Base answers other than 200 are relayed as always, and a base that
// cannot be asked gets no local file served (only a cached copy, stale, as always).
//
// No request path leaves the folder: the path is the cleaned one of the cache key and is
// opened relative to the folder with openat2(RESOLVE_BENEATH), which refuses ".." and
// absolute symlinks and any symlink that resolves outside (symlinks within the folder
// work). Without openat2 (Linux before 5.6) each component is opened with O_NOFOLLOW, so
// every symlink is refused. FollowSymlinks follows symlinks wherever they point.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// docRoot is the local copy of the base's web space.
type docRoot struct {
	// dir is an O_PATH descriptor of the folder; paths are opened relative to it. It is
	// never closed: a request after Close must not open relative to a reused number.
	dir    int
	follow bool // follow symlinks that leave the folder

	mu     sync.Mutex           // protects checks
	checks map[string]*docCheck // by path: the last HEAD that found the local file current
}

// docCheck is a HEAD that found a local file to be the base's version, for --revalidate:
// the file is trusted for the client it was made for while it stays the same file.
type docCheck struct {
	meta  Meta
	by    netip.Addr
	at    int64 // UnixNano of the HEAD
	ident fileIdent
}

// fileIdent tells whether a path still names the file a check saw.
type fileIdent struct {
	dev, ino     uint64
	size, mtimeN int64
}

func identOf(st *unix.Stat_t) fileIdent {
	return fileIdent{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtimeN: st.Mtim.Nano()}
}

// maxDocChecks bounds the checks kept for --revalidate (about 300 bytes each).
const maxDocChecks = 1 << 15

// openat2 is unix.Openat2; a variable so that a test can take the fallback.
var openat2 = unix.Openat2

func openDocRoot(dir string, follow bool) (*docRoot, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cache: docroot %s: %w", dir, err)
	}
	return &docRoot{dir: fd, follow: follow, checks: map[string]*docCheck{}}, nil
}

// open opens the local file for the cleaned path p, never outside the folder (unless
// symlinks are followed). O_NONBLOCK: a FIFO in the folder must not hang the open; it
// is then refused as no regular file.
func (d *docRoot) open(p string) (*os.File, *unix.Stat_t, error) {
	if p == "" || p[0] != '/' || path.Clean(p) != p || strings.IndexByte(p, 0) >= 0 {
		return nil, nil, fmt.Errorf("not a cleaned path: %q", p)
	}
	rel := p[1:]
	if rel == "" {
		rel = "."
	}
	const flags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	how := unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS}
	if d.follow {
		how.Resolve = unix.RESOLVE_NO_MAGICLINKS
	}
	fd, err := openat2(d.dir, rel, &how)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) && !d.follow {
		// No openat2 (or a seccomp filter refusing it): walk with O_NOFOLLOW.
		fd, err = d.walk(rel, flags)
	}
	if err != nil {
		return nil, nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, nil, errors.New("not a regular file")
	}
	return os.NewFile(uintptr(fd), p), &st, nil
}

// walk opens rel one component at a time, refusing every symlink, unless they are
// followed (then the kernel resolves rel whole).
func (d *docRoot) walk(rel string, flags int) (int, error) {
	if d.follow {
		return unix.Openat(d.dir, rel, flags, 0)
	}
	parts := strings.Split(rel, "/")
	cur := d.dir
	for i, name := range parts {
		if name == ".." {
			return -1, errors.New("path climbs out of the folder")
		}
		var fd int
		var err error
		if i == len(parts)-1 {
			fd, err = unix.Openat(cur, name, flags|unix.O_NOFOLLOW, 0)
		} else {
			fd, err = unix.Openat(cur, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if cur != d.dir {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	return cur, nil
}

// matches says why the local file is not the version m describes, or "" when it is.
func matches(st *unix.Stat_t, m *Meta) string {
	if st.Size != m.Size {
		return fmt.Sprintf("%d bytes, the base has %d", st.Size, m.Size)
	}
	if m.LastModified == "" {
		return "the base sent no Last-Modified to compare"
	}
	if mt := m.ModTime(); st.Mtim.Sec != mt.Unix() {
		return fmt.Sprintf("modified %s, the base's is %s", time.Unix(st.Mtim.Sec, 0).UTC().Format(time.RFC3339),
			mt.UTC().Format(time.RFC3339))
	}
	return ""
}

// localHandle is a handle over a local file: its body starts at offset 0.
func (c *Cache) localHandle(f *os.File, m *Meta) *Handle {
	c.Stats.OpenFiles.Add(1)
	c.Stats.Local.Add(1)
	return &Handle{Meta: *m, Hit: true, file: &sharedFile{f: f, refs: 1}, release: c.releaseLocal}
}

// releaseLocal closes a local file's descriptor, off the caller's goroutine (closeLater).
func (c *Cache) releaseLocal(sf *sharedFile) {
	c.closeLater(sf.f)
}

// docServe opens the local copy of path for a request whose HEAD said m, or returns nil
// (and logs why, unless quiet) when the copy is not that version.
func (c *Cache) docServe(path string, m *Meta, client netip.Addr, quiet bool) *Handle {
	f, st, err := c.doc.open(path)
	if err == nil {
		if why := matches(st, m); why != "" {
			f.Close()
			err = errors.New(why)
		}
	}
	if err != nil {
		if !quiet {
			c.cfg.Logf("cache: %s: not served from the docroot (%v); from the cache", path, err)
		}
		return nil
	}
	if c.cfg.Revalidate > 0 {
		c.doc.remember(path, &docCheck{meta: *m, by: client, at: time.Now().UnixNano(), ident: identOf(st)},
			c.cfg.Revalidate)
	}
	return c.localHandle(f, m)
}

// docTrusted is a handle on the local file for path when a HEAD for client found it
// current within Revalidate and it is still the same file; else nil.
func (c *Cache) docTrusted(path string, client netip.Addr) *Handle {
	if c.cfg.Revalidate <= 0 {
		return nil
	}
	c.doc.mu.Lock()
	ck := c.doc.checks[path]
	c.doc.mu.Unlock()
	if ck == nil || ck.by != client || time.Now().UnixNano()-ck.at > int64(c.cfg.Revalidate) {
		return nil
	}
	f, st, err := c.doc.open(path)
	if err != nil {
		return nil
	}
	if identOf(st) != ck.ident {
		f.Close()
		return nil
	}
	return c.localHandle(f, &ck.meta)
}

// remember keeps a check for --revalidate, within maxDocChecks: when full, the expired
// checks go first, then all.
func (d *docRoot) remember(path string, ck *docCheck, ttl time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.checks) >= maxDocChecks {
		for p, old := range d.checks {
			if ck.at-old.at > int64(ttl) {
				delete(d.checks, p)
			}
		}
		if len(d.checks) >= maxDocChecks {
			clear(d.checks)
		}
	}
	d.checks[path] = ck
}
