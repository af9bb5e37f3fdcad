package cache

// A shared cache (Config.Shared) is the cache of CGI mode: every request is a process of
// its own that opens the cache folder, asks for one file and exits, while others do the
// same at the same moment. The folder is the one offload serve uses, in the same format
// (one may replace the other); what a shared cache does differently:
//
//   - Open does no scan and builds no index: an entry is found by its key's name, through
//     the pointer <name>.cur (lockfile.go), so opening costs the same for any cache size.
//     It removes nothing, and so never another process's fill.
//   - A fill is coalesced across processes through the key's lock file: the process that
//     takes the lock (flock, without waiting) is the filler; it GETs from the base into a
//     .part and names that .part in the fill record. Every other process follows the
//     .part: its bytes are good up to its size (the filler writes in order, and the page
//     cache is one for all processes), so readers learn what landed from fstat, looking
//     every millisecond at first, backing off to 20 ms while nothing lands. A filler that
//     dies drops its lock with its last descriptor; the next follower to try the lock
//     takes the fill over, in the same .part, asking the base for the rest with Range and
//     If-Range (the whole body, skipping what is there, when the base ignores ranges).
//     So followers never see the file they read change under them, and a reader is
//     never told a byte is there before it is. A fill that fails is an error for every
//     reader, never a short body.
//   - The cache's bound is kept by offload cache trim (trim.go), not by the policy in
//     memory: a shared cache writes and commits, and counts each request for a key in the
//     key's lock file for trim's policy.
//   - LookupFor finds nothing (no check is remembered between processes), so every
//     request asks the base with a HEAD, as Revalidate 0 does; HEADs are shared only
//     among the goroutines of one process.
//   - A file larger than the whole bound is streamed through a private file by each
//     process that asks for it, as offload serve does for one client.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// How a follower looks for bytes the filler of another process wrote: every pollMin at
// first, backing off to pollMax while nothing lands.
const (
	pollMin = time.Millisecond
	pollMax = 20 * time.Millisecond
)

// stallLimit is how long a follower waits for a filler that holds the lock but writes
// nothing (a base that stalls fails the filler's reads after Timeout, its retries after
// a few more), before it fails its readers.
func (c *Cache) stallLimit() time.Duration { return 4*c.cfg.Timeout + 10*time.Second }

// getShared is get for a shared cache.
func (c *Cache) getShared(ctx context.Context, path string, metaOnly bool, from, end int64) (*Handle, error) {
	key := c.key(path)
	tgt, err := target(path)
	if err != nil {
		return nil, &Error{Status: 400, Reason: "bad path", Err: err}
	}
	local := c.doc != nil && !metaOnly
	if local {
		if h := c.docTrusted(path, clientOf(ctx)); h != nil {
			return h, nil
		}
	}
	cur, cm := c.openCurrent(key)
	fromCur := func(stale bool) *Handle {
		if metaOnly {
			cur.Close()
			return &Handle{Meta: *cm, Stale: stale, Hit: true}
		}
		c.Stats.Hits.Add(1)
		c.bumpHits(key)
		return c.ownHandle(cur, cm, stale)
	}
	m, err := c.head(ctx, headKey(ctx, key), tgt)
	if err != nil {
		var ue *Error
		switch {
		case IsBaseDown(err) && cur != nil:
			c.cfg.Logf("cache: base down for %s, serving the cached copy: %v", key, err)
			c.Stats.Stale.Add(1)
			return fromCur(true), nil
		case errors.As(err, &ue) && (ue.Status == 404 || ue.Status == 410):
			c.purgeShared(key)
		}
		if cur != nil {
			cur.Close()
		}
		return nil, err
	}
	m.Key = key
	if local {
		cached := cur != nil && SameVersion(cm, m) // quiet: the cache has it anyway
		if h := c.docServe(path, m, clientOf(ctx), cached); h != nil {
			if cur != nil {
				cur.Close()
			}
			return h, nil
		}
	}
	if cur != nil {
		if SameVersion(cm, m) {
			return fromCur(false), nil
		}
		cur.Close()
	}
	if metaOnly {
		return &Handle{Meta: *m}, nil
	}
	c.Stats.Misses.Add(1)
	c.bumpHits(key)
	f, _ := c.startFill(ctx, key, tgt, m, false) // a shared cache has no index in memory
	return c.fillHandle(ctx, f, key, tgt, m, from, end)
}

// openCurrent opens key's current data file through its pointer, with a shared flock
// (in use: trim leaves it alone), and reads its metadata; nil when there is none, or
// it is damaged or of another key.
func (c *Cache) openCurrent(key string) (*os.File, *Meta) {
	cur := c.curPath(key)
	name, err := os.Readlink(cur)
	if err != nil {
		return nil, nil
	}
	// The pointer names a file beside it, never a link or a FIFO planted there by
	// someone else who can write the folder (a FIFO would hang the open or the read).
	f, err := os.OpenFile(filepath.Join(filepath.Dir(cur), filepath.Base(name)), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, nil
	}
	// Best effort: trim may hold it for a moment, and removing a file that is open
	// takes nothing from its reader.
	_, _ = tryFlock(f, unix.LOCK_SH)
	m, err := readHeader(f)
	if err != nil || m.Key != key {
		f.Close()
		return nil, nil
	}
	if st, err := f.Stat(); err != nil || st.Size() != HeaderSize+m.Size {
		f.Close()
		return nil, nil
	}
	return f, m
}

// ownHandle is a handle with a descriptor of its own on a committed data file (a
// shared cache keeps none open between requests); a small body is read into memory.
func (c *Cache) ownHandle(f *os.File, m *Meta, stale bool) *Handle {
	c.Stats.OpenFiles.Add(1)
	h := &Handle{Meta: *m, Stale: stale, Hit: true, file: &sharedFile{f: f, refs: 1}, release: c.releaseLocal, hdr: HeaderSize}
	if m.Size <= c.cfg.SmallFile {
		body := make([]byte, m.Size)
		if _, err := f.ReadAt(body, HeaderSize); err == nil {
			h.Body = body
			h.Release()
		}
	}
	return h
}

// purgeShared drops key from a shared cache: the base says the file is gone. The
// pointer goes with the data file it names (a reader keeps its descriptor), and so does
// a .part left for a resume, unless a fill holds the key.
func (c *Cache) purgeShared(key string) {
	cur := c.curPath(key)
	if name, err := os.Readlink(cur); err == nil {
		removeQuiet(cur, filepath.Join(filepath.Dir(cur), filepath.Base(name)))
		c.cfg.Logf("cache: purged %s: gone on the base", key)
	}
	if !exists(c.lockPath(key)) {
		return
	}
	lk, err := openLock(c.lockPath(key))
	if err != nil {
		return
	}
	defer lk.close()
	if ok, _ := lk.tryLock(); ok {
		if r, ok := lk.readRecord(); ok {
			p := partOfGen(lk.path, r.gen)
			removeQuiet(p, sidecarOf(p))
			lk.clearRecord()
		}
	}
}

// fillHandle opens a reader on the fill f, or on a window of its own when the reader
// asks for bytes far past what the fill has landed (see GetFrom).
func (c *Cache) fillHandle(ctx context.Context, f *fill, key, tgt string, m *Meta, from, end int64) (*Handle, error) {
	if end <= 0 || end > m.Size {
		end = m.Size
	}
	if from > 0 && from < end && from > f.landed()+farAhead {
		if w := c.startWindow(ctx, key, tgt, m, from, end); w != nil {
			h, err := w.handle(ctx)
			if err == nil {
				f.unreserve()
				return h, nil
			}
			c.cfg.Logf("cache: %s: no window from %d (%v); the reader waits for the fill", key, from, err)
		}
	}
	return f.handle(ctx)
}

// Drain waits until the fills this process runs have ended, or ctx does: a CGI process
// that has answered its request lets the fill it leads finish for the processes that
// follow it (one that follows only stops once its readers have left). A process that
// exits without it only costs a follower's takeover.
func (c *Cache) Drain(ctx context.Context) error {
	for {
		c.mu.Lock()
		n := len(c.fills)
		c.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// runShared is the fill of a shared cache: the filler if it takes the key's lock, else a
// follower of the filler in another process, which takes the fill over if that dies.
func (f *fill) runShared() {
	c := f.c
	defer f.forget()
	lk, err := openLock(c.lockPath(f.key))
	if err != nil {
		f.fail(&Error{Status: 500, Reason: "cache folder not writable", Err: err}, "", false)
		return
	}
	defer func() {
		if f.own != nil {
			f.releaseOwn()
		} else {
			lk.close()
		}
	}()
	took, err := lk.tryLock()
	if err == nil && !took {
		took, err = f.follow(lk)
	}
	if err == errOtherVersion {
		// The file changed on the base while another process fills the version it had:
		// waiting for that fill would serve nothing (and time out on a big file), and
		// its lock is not ours to take. This reader's version streams through a file of
		// its own; the next request after that fill's commit fills the new version.
		f.private = true
		f.run()
		return
	}
	if err != nil {
		f.fail(&Error{Status: 500, Reason: "cache lock failed", Err: err}, "", false)
		f.dropSelf()
		return
	}
	if took {
		f.own = lk
		f.fillLocked()
	}
}

// dropSelf gives back the fill's own reference on its file, when it has one and no
// pump (which gives it back itself) ran.
func (f *fill) dropSelf() {
	f.mu.Lock()
	sf := f.file
	f.mu.Unlock()
	if sf != nil {
		f.releaseFile(sf)
	}
}

// complete ends the fill with the whole body in the file.
func (f *fill) complete() {
	f.forget()
	f.advance(0, true, nil)
	f.dropSelf()
}

// leftAlone ends a follower whose readers have all left, so that the process need not
// wait for another's fill; atomically with startFill, so no reader joins it meanwhile.
func (f *fill) leftAlone() bool {
	c := f.c
	c.mu.Lock()
	f.mu.Lock()
	alone := f.reserved == 0 && (f.file == nil || f.file.refs <= 1)
	if alone && c.fills[f.key] == f {
		delete(c.fills, f.key)
	}
	f.mu.Unlock()
	c.mu.Unlock()
	if !alone {
		return false
	}
	select {
	case <-f.ready:
	default:
		f.mu.Lock()
		f.err, f.done = &Error{Status: 503, Reason: "request canceled"}, true
		f.mu.Unlock()
		close(f.ready)
	}
	f.advance(0, true, &Error{Status: 503, Reason: "request canceled"})
	f.dropSelf()
	return true
}

// follow follows the fill of another process: the .part its record names, while its
// lock is held. It returns took when the lock came free before the body was whole (the
// filler died or failed): the caller holds it and takes the fill over. Otherwise the
// fill has ended: complete, failed (its readers told), or left alone.
func (f *fill) follow(lk *keyLock) (took bool, err error) {
	c := f.c
	bootID, err := currentBoot()
	if err != nil {
		return false, err
	}
	var partPath string // the .part followed, once f.file is set
	wait, lastProgress := pollMin, time.Now()
	for {
		if f.leftAlone() {
			return false, nil
		}
		r, recOK := lk.readRecord()
		recOK = recOK && r.boot == bootID // a record from before a reboot names no fill under way
		if partPath == "" {
			switch {
			case recOK:
				l, ok, other := f.openFollowed(partOfGen(lk.path, r.gen))
				if ok {
					partPath = l.part
					f.publish(l.file, l.m, l.written)
					lastProgress = time.Now()
					continue
				}
				if other {
					return false, errOtherVersion
				}
			default:
				// No fill under way: committed since our HEAD?
				if file, m := c.openCurrent(f.key); file != nil {
					if SameVersion(m, f.want) {
						c.Stats.OpenFiles.Add(1)
						f.publish(file, m, m.Size)
						f.complete()
						return false, nil
					}
					file.Close()
				}
			}
		} else {
			var st unix.Stat_t
			if err := unix.Fstat(int(f.file.f.Fd()), &st); err != nil {
				return false, err
			}
			n := min(max(st.Size-HeaderSize, 0), f.meta.Size)
			if have := f.landed(); n > have {
				f.advance(n-have, false, nil)
				wait, lastProgress = pollMin, time.Now()
			}
			if n == f.meta.Size {
				f.complete()
				return false, nil
			}
			if st.Nlink == 0 || recOK && partOfGen(lk.path, r.gen) != partPath {
				f.fail(&Error{Status: 502, Reason: "the fill in another process was abandoned"}, "", false)
				f.dropSelf()
				return false, nil
			}
		}
		if ok, err := lk.tryLock(); err != nil || ok {
			return ok, err
		}
		if time.Since(lastProgress) > c.stallLimit() {
			f.fail(&Error{Status: 504, Reason: "the fill in another process stalled"}, "", false)
			f.dropSelf()
			return false, nil
		}
		time.Sleep(wait)
		wait = min(2*wait, pollMax)
	}
}

// openFollowed opens the .part at path to follow it, when it is of the version this
// fill wants and not held exclusively (by a filler shrinking it to its checkpoint, or
// trim removing it). Opened for writing too: this process may take the fill over.
func (f *fill) openFollowed(path string) (l landing, ok, other bool) {
	file, err := openRegular(path, os.O_RDWR)
	if err != nil {
		return landing{}, false, false
	}
	if ok, _ := tryFlock(file, unix.LOCK_SH); !ok {
		file.Close()
		return landing{}, false, false
	}
	m, err := readHeader(file)
	st, serr := file.Stat()
	if err != nil || serr != nil || m.Key != f.key {
		file.Close()
		return landing{}, false, false
	}
	if !SameVersion(m, f.want) {
		file.Close() // another version being filled
		return landing{}, false, true
	}
	f.c.Stats.OpenFiles.Add(1)
	return landing{m: m, file: file, part: path, final: finalOf(path), written: min(max(st.Size()-HeaderSize, 0), m.Size)}, true, false
}

// errOtherVersion says that the fill another process runs is of another version than
// the one a follower wants.
var errOtherVersion = errors.New("cache: another process fills another version")

// fillLocked fills, holding the key's lock: it continues the .part this process
// followed, or the one a dead filler's record names, or starts a new one.
func (f *fill) fillLocked() {
	c := f.c
	var l landing
	defer func() {
		if l.body != nil {
			l.body.Close()
		}
	}()
	bootID, err := currentBoot()
	if err != nil {
		f.fail(err, "", false)
		f.dropSelf()
		return
	}
	r, recOK := f.own.readRecord()
	if f.file != nil {
		// Took over the .part it followed: the filler may have finished between the
		// follower's last look and the lock (then the body is whole); else the .part
		// must still be there, and the one the record names, if any.
		path := f.file.f.Name()
		if st, err := f.file.f.Stat(); err == nil && st.Size() >= HeaderSize+f.meta.Size {
			f.advance(f.meta.Size-f.landed(), false, nil)
			f.complete()
			return
		}
		if recOK && partOfGen(f.own.path, r.gen) != path || !sameFile(f.file.f, path) {
			f.fail(&Error{Status: 502, Reason: "the fill in another process was abandoned"}, "", false)
			f.dropSelf()
			return
		}
		var ok bool
		if l, ok = f.takeOver(path, true, f.file.f); !ok {
			f.fail(&Error{Status: 502, Reason: "the fill in another process left an unusable file"}, "", false)
			f.dropSelf()
			return
		}
	} else {
		if file, m := c.openCurrent(f.key); file != nil {
			if SameVersion(m, f.want) { // committed between our HEAD and the lock
				c.Stats.OpenFiles.Add(1)
				f.publish(file, m, m.Size)
				f.complete()
				return
			}
			file.Close()
		}
		if recOK {
			l, _ = f.takeOver(partOfGen(f.own.path, r.gen), r.boot == bootID, nil)
		}
	}
	c.up.gets <- struct{}{}
	defer func() { <-c.up.gets }()

	if l.file == nil {
		// A new .part: the record names it once its header is there to read.
		m, body, err := f.get()
		if err != nil {
			f.fail(err, "", false)
			return
		}
		l.m, l.body = m, body
		header, err := f.create(&l, time.Now().UnixNano())
		if err != nil {
			f.fail(err, "", false)
			return
		}
		if _, err := l.file.WriteAt(header, 0); err != nil {
			c.closeLater(l.file)
			f.fail(&Error{Status: 500, Reason: "cache write failed", Err: err}, l.part, false)
			return
		}
		if gen, ok := genOf(l.part); ok {
			if err := f.own.writeRecord(gen); err != nil {
				c.cfg.Logf("cache: fill %s: %v", f.key, err) // not followed: others wait, then fill
			}
		}
		f.pump(&l, nil)
		return
	}

	// Continuing a .part: the bytes in it are the readers' at once.
	if gen, ok := genOf(l.part); ok {
		_ = f.own.writeRecord(gen)
	}
	f.publish(l.file, l.m, l.written)
	if have := f.landed(); l.written > have {
		f.advance(l.written-have, false, nil)
	}
	c.Stats.Resumed.Add(1)
	c.cfg.Logf("cache: taking over the fill of %s at %d of %d bytes", f.key, l.written, l.m.Size)
	switch body, again, err := f.restOrAll(l.written); {
	case err != nil:
		f.fail(err, l.part, again)
		f.dropSelf()
		return
	default:
		l.body = body
	}
	f.pump(&l, nil)
}

// restOrAll asks the base for the body of the version being filled from byte at on:
// with Range and If-Range, or, when the base will not give that range, the whole body
// of the same version, read past the first at bytes. again says whether a failure is
// the base being unreachable (worth a later try).
func (f *fill) restOrAll(at int64) (io.ReadCloser, bool, error) {
	if at >= f.meta.Size {
		return io.NopCloser(eofReader{}), false, nil
	}
	body, again, err := f.rest(at)
	if err == nil || again {
		return body, again, err
	}
	f.c.Stats.Gets.Add(1)
	m, resp, err := f.c.up.get(f.ctx, f.target, 0, 0, &f.meta)
	if err != nil {
		return nil, unreachable(err), err
	}
	if !SameVersion(&f.meta, m) {
		resp.Body.Close()
		return nil, false, &Error{Status: 502, Reason: "the file changed on the base"}
	}
	return &skipReader{rc: resp.Body, skip: at}, false, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// skipReader reads rc past its first skip bytes.
type skipReader struct {
	rc   io.ReadCloser
	skip int64
}

func (r *skipReader) Read(p []byte) (int, error) {
	for r.skip > 0 {
		n, err := r.rc.Read(p[:min(int64(len(p)), r.skip)])
		r.skip -= int64(n)
		if err == io.EOF {
			return 0, io.ErrUnexpectedEOF
		}
		if err != nil {
			return 0, err
		}
	}
	return r.rc.Read(p)
}

func (r *skipReader) Close() error { return r.rc.Close() }

// takeOver opens the .part at path that a filler left (dead, or failed with the part
// kept), to continue it: from its size when it was written in this boot (sameBoot), else
// from its checkpoint, truncating it, which only a .part nobody else has open allows.
// file is the .part already open (the one this process followed), or nil. ok false: a
// new .part is needed; the old one is removed when it is of no use and nobody has it.
func (f *fill) takeOver(path string, sameBoot bool, file *os.File) (l landing, ok bool) {
	c := f.c
	opened := file == nil
	if opened {
		var err error
		if file, err = openRegular(path, os.O_RDWR); err != nil {
			return landing{}, false
		}
	}
	giveUp := func(remove bool) (landing, bool) {
		if remove {
			if alone, _ := tryFlock(file, unix.LOCK_EX); alone {
				removeQuiet(path, sidecarOf(path))
			}
		}
		if opened {
			file.Close()
		}
		return landing{}, false
	}
	hdr := make([]byte, HeaderSize)
	if _, err := file.ReadAt(hdr, 0); err != nil {
		return giveUp(true)
	}
	m, err := parseHeader(hdr)
	if err != nil || m.Key != f.key {
		return giveUp(true)
	}
	if !SameVersion(m, f.want) {
		return giveUp(true) // a version the base no longer has
	}
	st, err := file.Stat()
	if err != nil {
		return giveUp(false)
	}
	written := min(max(st.Size()-HeaderSize, 0), m.Size)
	rec := record{size: m.Size, header: headerDigest(hdr)}
	if r, err := readRecord(sidecarOf(path), rec.header, m.Size); err == nil {
		rec = r
	}
	if !sameBoot {
		// Bytes past the checkpoint may not have reached the disk before the reboot.
		if alone, _ := tryFlock(file, unix.LOCK_EX); !alone {
			return giveUp(false)
		}
		written = min(written, rec.durable)
		if err := file.Truncate(HeaderSize + written); err != nil {
			return giveUp(true)
		}
	}
	_ = flock(file, unix.LOCK_SH)
	f.ckRec = rec
	if opened {
		c.Stats.OpenFiles.Add(1)
	}
	return landing{m: m, file: file, part: path, final: finalOf(path), written: written}, true
}

// Reader reads the body bytes [from, to) of h as they land, blocking while a fill
// catches up: for a front end that may block, as CGI's does. A fill that fails ends the
// read with its error, never early with io.EOF; so does ctx. It does not release h.
func (h *Handle) Reader(ctx context.Context, from, to int64) io.Reader {
	return &bodyReader{h: h, ctx: ctx, off: from, end: to}
}

type bodyReader struct {
	h        *Handle
	ctx      context.Context
	off, end int64
}

func (r *bodyReader) Read(p []byte) (int, error) {
	h := r.h
	if r.off >= r.end {
		return 0, io.EOF
	}
	if r.off < h.Base() || r.end > h.End() {
		return 0, fmt.Errorf("cache: bytes %d-%d are not in the handle (%d-%d)", r.off, r.end, h.Base(), h.End())
	}
	if h.Body != nil {
		n := copy(p, h.Body[r.off:r.end])
		r.off += int64(n)
		return n, nil
	}
	for {
		avail, err := h.Available()
		if err != nil {
			return 0, err
		}
		if avail > r.off {
			n := min(int64(len(p)), min(avail, r.end)-r.off)
			got, err := h.File().ReadAt(p[:n], h.FileOffset(r.off))
			r.off += int64(got)
			if got > 0 {
				return got, nil
			}
			if err != nil {
				return 0, fmt.Errorf("cache: read %s: %w", h.Meta.Key, err)
			}
			return 0, fmt.Errorf("cache: read %s: no bytes at %d", h.Meta.Key, r.off)
		}
		woke := make(chan struct{})
		if h.Wait(avail, func() { close(woke) }) {
			select {
			case <-woke:
			case <-r.ctx.Done():
				return 0, r.ctx.Err()
			}
		}
	}
}
