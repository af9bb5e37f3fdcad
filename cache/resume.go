package cache

// Fills that survive a restart, and fills that survive a base dropping the connection.
//
// A fill writes <name>.part. Every checkpointEvery bytes (and when the cache closes) it
// fsyncs the .part and only then records, in a sidecar <name>.resume, how many body bytes
// that fsync made durable. The sidecar holds two 512-byte records, written in turn, each
// with a sequence number, the durable length, the version's size, a digest of the .part's
// 4 KiB header (key, size, validators) and a CRC of all that: a record torn by a power
// cut fails its CRC and the other record, older but still true, is used. So a record never
// claims bytes that were not on the disk before it was written.
//
// At start the scan keeps a .part whose sidecar has a valid record, indexed as resumable
// (under partKey, cost = its durable bytes, so the cache bound counts it and the policy may
// evict it). The next fill of the key takes it: when the base's HEAD names the same
// version, the fill truncates the .part to its durable length and asks for the rest with
// Range and If-Range; otherwise, or when the base refuses the range, it starts over.

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// checkpointEvery is how many body bytes a fill writes between checkpoints.
	checkpointEvery = 64 << 20
	// maxRetries is how many times in a row a fill asks the base for the rest after the
	// connection broke; every checkpointEvery bytes landed since the last retry start the
	// count again, so a long fill over a flaky link goes on while a base that keeps
	// failing ends the fill after maxRetries.
	maxRetries = 3
	// retryPause is the pause before the first retry; it doubles for each next one.
	retryPause = 100 * time.Millisecond

	resumeSuffix = ".resume"
	recordSize   = 512 // one record per sector, so a torn write spoils at most one
	recordMagic  = "OFFLOADR"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// record is one checkpoint: the first durable body bytes of the .part whose header has
// the given digest.
type record struct {
	seq     uint64
	durable int64
	size    int64
	header  [16]byte // headerDigest of the .part's header block
}

func (r *record) encode() []byte {
	b := make([]byte, recordSize)
	copy(b, recordMagic)
	binary.LittleEndian.PutUint64(b[8:], r.seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(r.durable))
	binary.LittleEndian.PutUint64(b[24:], uint64(r.size))
	copy(b[32:48], r.header[:])
	binary.LittleEndian.PutUint32(b[48:], crc32.Checksum(b[:48], castagnoli))
	return b
}

func decodeRecord(b []byte) (record, bool) {
	var r record
	if len(b) < 52 || string(b[:8]) != recordMagic ||
		binary.LittleEndian.Uint32(b[48:]) != crc32.Checksum(b[:48], castagnoli) {
		return r, false
	}
	r.seq = binary.LittleEndian.Uint64(b[8:])
	r.durable = int64(binary.LittleEndian.Uint64(b[16:]))
	r.size = int64(binary.LittleEndian.Uint64(b[24:]))
	copy(r.header[:], b[32:48])
	return r, true
}

// headerDigest ties a sidecar's records to one .part's header.
func headerDigest(header []byte) [16]byte {
	sum := sha256.Sum256(header)
	var d [16]byte
	copy(d[:], sum[:16])
	return d
}

// readRecord is the newest valid record of a sidecar for a header with digest d.
func readRecord(sidecar string, d [16]byte, size int64) (record, error) {
	side, err := openRegular(sidecar, os.O_RDONLY)
	if err != nil {
		return record{}, err
	}
	b, err := io.ReadAll(io.LimitReader(side, 2*recordSize)) // two slots; a longer file is not ours
	side.Close()
	if err != nil {
		return record{}, err
	}
	var best record
	found := false
	for off := 0; off+recordSize <= len(b); off += recordSize {
		r, ok := decodeRecord(b[off : off+recordSize])
		if ok && r.header == d && r.size == size && (!found || r.seq > best.seq) {
			best, found = r, true
		}
	}
	if !found {
		return record{}, errors.New("no valid checkpoint record")
	}
	return best, nil
}

// partial is what a resumable .part adds to its entry.
type partial struct {
	sidecar string
	rec     record // the newest valid checkpoint
	// claimed is set by whoever gets the .part: a fill resuming it, or the policy
	// removing it. The other then leaves it alone.
	claimed atomic.Bool
}

// partKey is the index key of the resumable .part of key; no cleaned path holds a NUL.
func partKey(key string) string { return key + "\x00part" }

// sidecarOf and partOf map a data file's .part and sidecar names to each other.
func sidecarOf(part string) string { return strings.TrimSuffix(part, ".part") + resumeSuffix }
func partOf(sidecar string) string { return strings.TrimSuffix(sidecar, resumeSuffix) + ".part" }
func finalOf(part string) string   { return strings.TrimSuffix(part, ".part") }
func removeQuiet(paths ...string) { // best effort: a leftover is removed by the next scan
	for _, p := range paths {
		_ = os.Remove(p)
	}
}

// loadPart checks an unfinished fill found by the scan: a header of this base under its
// key's name, a valid checkpoint, and at least the bytes it says are durable.
func (c *Cache) loadPart(path string) (*entry, error) {
	f, err := openRegular(path, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, HeaderSize)
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	m, err := parseHeader(buf)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(m.Key, c.host+"/") {
		return nil, fmt.Errorf("fill of another base (%s)", m.Key)
	}
	if !strings.HasPrefix(filepath.Base(path), keyName(m.Key)+"-") {
		return nil, fmt.Errorf("file name does not match key %s", m.Key)
	}
	if m.Size > c.cfg.MaxBytes {
		return nil, fmt.Errorf("%d bytes is more than the cache's bound", m.Size)
	}
	rec, err := readRecord(sidecarOf(path), headerDigest(buf), m.Size)
	if err != nil {
		return nil, fmt.Errorf("not resumable: %w", err)
	}
	if rec.durable <= 0 || rec.durable >= m.Size {
		return nil, fmt.Errorf("checkpoint of %d bytes for a %d-byte file", rec.durable, m.Size)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < HeaderSize+rec.durable {
		return nil, fmt.Errorf("%d body bytes on disk, checkpoint says %d durable", st.Size()-HeaderSize, rec.durable)
	}
	return &entry{c: c, meta: *m, path: path, part: &partial{sidecar: sidecarOf(path), rec: rec}}, nil
}

// indexParts keeps the best resumable .part of each key (the most bytes durable) and
// removes the others, the ones a complete entry stored later makes useless, and every
// sidecar left without its .part.
func (c *Cache) indexParts(parts, sidecars []string, complete map[string]*entry) {
	best := map[string]*entry{}
	for _, path := range parts {
		if inUse(path) {
			c.cfg.Logf("cache: leaving %s alone: another process fills it", path)
			continue
		}
		p, err := c.loadPart(path)
		if err != nil {
			c.cfg.Logf("cache: removing unfinished fill %s: %v", path, err)
			removeQuiet(path, sidecarOf(path))
			continue
		}
		if e := complete[p.meta.Key]; e != nil && !e.meta.Stored.Before(p.meta.Stored) {
			removeQuiet(path, p.part.sidecar)
			continue
		}
		if old := best[p.meta.Key]; old != nil {
			if old.part.rec.durable >= p.part.rec.durable {
				removeQuiet(path, p.part.sidecar)
				continue
			}
			removeQuiet(old.path, old.part.sidecar)
		}
		best[p.meta.Key] = p
	}
	for _, s := range sidecars {
		if _, err := os.Stat(partOf(s)); errors.Is(err, fs.ErrNotExist) {
			removeQuiet(s)
		}
	}
	for k, p := range best {
		if !c.index.Set(partKey(k), p, p.part.rec.durable) {
			c.remove(p)
		}
	}
	c.index.Wait()
	for k, p := range best {
		if p.part.claimed.Load() {
			c.cfg.Logf("cache: removed unfinished fill of %s: no room under the bound", k)
		} else {
			c.cfg.Logf("cache: keeping unfinished fill of %s (%d of %d bytes durable): it resumes on the next request",
				k, p.part.rec.durable, p.meta.Size)
		}
	}
}

// inUse reports whether another process holds the .part at path (lockfile.go): its
// key's lock, or a flock on the file itself.
func inUse(path string) bool {
	if len(filepath.Base(path)) <= nameLen {
		return false
	}
	lock := filepath.Join(filepath.Dir(path), filepath.Base(path)[:nameLen]+lockSuffix)
	if exists(lock) {
		if lk, err := openLock(lock); err == nil {
			ok, _ := lk.tryLock()
			lk.close()
			if !ok {
				return true
			}
		}
	}
	f, err := openRegular(path, os.O_RDONLY)
	if err != nil {
		return false
	}
	defer f.Close()
	alone, _ := tryFlock(f, unix.LOCK_EX)
	return !alone
}

// removePart deletes a resumable .part and its sidecar unless a fill claimed it first.
func (c *Cache) removePart(e *entry) {
	if e.part.claimed.CompareAndSwap(false, true) {
		removeQuiet(e.path, e.part.sidecar)
	}
}

// takePart hands the resumable .part of key, if there is one, to the fill that calls it.
func (c *Cache) takePart(key string) *entry {
	if c.index == nil {
		return nil // a shared cache: fills find .parts through the fill record
	}
	p, ok := c.index.Get(partKey(key))
	if !ok || p.part == nil || !p.part.claimed.CompareAndSwap(false, true) {
		return nil
	}
	c.index.Del(partKey(key))
	return p
}

// resume continues the .part p for the fill: same version as the base's HEAD, then the
// rest asked for with Range and If-Range. It returns the open .part, truncated to its
// durable bytes, the body of the rest, and where the rest starts; or a nil file when it
// cannot resume, having removed p: the fill then starts over. When the base cannot be
// reached for the rest, p is kept for the next request and the error fails this fill.
//
// The fill takes the key's lock first (lockfile.go): a fill of a shared cache may have
// taken the .part over since the scan, and then it is theirs (this fill starts a new
// one). A .part that processes of a shared cache follow is not truncated: they follow
// only .parts written in this boot, whose bytes are good up to their size, and the rest
// is asked for from there.
func (f *fill) resume(p *entry) (*os.File, io.ReadCloser, int64, error) {
	c := f.c
	if lk, err := openLock(c.lockPath(f.key)); err != nil {
		c.cfg.Logf("cache: resume %s: %v", f.key, err) // resumed without the lock, as before locks
	} else if ok, _ := lk.tryLock(); ok {
		f.own = lk
	} else {
		lk.close()
		c.cfg.Logf("cache: not resuming %s: another process fills it", f.key)
		return nil, nil, 0, nil
	}
	drop := func(why string, err error) (*os.File, io.ReadCloser, int64, error) {
		c.cfg.Logf("cache: not resuming %s at %d: %s: %v; starting over", f.key, p.part.rec.durable, why, err)
		removeQuiet(p.path, p.part.sidecar)
		return nil, nil, 0, nil
	}
	if !SameVersion(&p.meta, f.want) {
		return drop("the base has another version", errors.New("validators differ"))
	}
	file, err := openRegular(p.path, os.O_RDWR)
	if err != nil {
		return drop("open", err)
	}
	at := p.part.rec.durable
	if alone, _ := tryFlock(file, unix.LOCK_EX); alone {
		if err := file.Truncate(HeaderSize + at); err != nil {
			file.Close()
			return drop("truncate", err)
		}
	} else if st, err := file.Stat(); err == nil {
		at = min(max(at, st.Size()-HeaderSize), p.meta.Size-1)
	}
	_ = flock(file, unix.LOCK_SH) // in use, and no longer alone
	c.Stats.Gets.Add(1)
	m, resp, err := c.up.get(f.ctx, f.target, at, p.meta.Size, &p.meta)
	if err == nil && !SameVersion(&p.meta, m) {
		resp.Body.Close()
		err = errors.New("validators differ")
	}
	if err != nil {
		file.Close()
		if unreachable(err) {
			f.releaseOwn()
			p.part.claimed.Store(false)
			if !c.index.Set(partKey(f.key), p, p.part.rec.durable) {
				c.removePart(p)
			}
			return nil, nil, 0, fmt.Errorf("cache: resume %s at %d: %w", f.key, at, err)
		}
		return drop("ranged GET", err)
	}
	if f.own != nil {
		if gen, ok := genOf(p.path); ok {
			_ = f.own.writeRecord(gen) // processes of a shared cache may follow it now
		}
	}
	c.Stats.Resumed.Add(1)
	c.cfg.Logf("cache: resuming %s at %d of %d bytes", f.key, at, p.meta.Size)
	return file, resp.Body, at, nil
}

// releaseOwn gives the key's lock back at the end of a fill. The fill record goes unless
// the .part it names is kept for the next filler; a lock file left with neither record
// nor hit count is removed (holding the lock, as lockfile.go requires).
func (f *fill) releaseOwn() {
	l := f.own
	if l == nil {
		return
	}
	f.own = nil
	if r, ok := l.readRecord(); !ok || !exists(partOfGen(l.path, r.gen)) {
		l.clearRecord()
		if st, err := l.f.Stat(); err == nil && st.Size() == 0 {
			_ = os.Remove(l.path)
		}
	}
	l.close()
}

// partOfGen is the .part of generation gen of the key whose lock file is lock.
func partOfGen(lock string, gen int64) string {
	name := filepath.Base(lock)[:nameLen]
	return filepath.Join(filepath.Dir(lock), fmt.Sprintf("%s-%x.part", name, gen))
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// unreachable reports whether err says the base could not be reached or stalled, as
// opposed to an answer it gave.
func unreachable(err error) bool {
	var ue *Error
	return errors.As(err, &ue) && ue.Err != nil && (ue.Status == 502 || ue.Status == 504)
}

// rest asks the base for the bytes of the version being filled from body byte at on,
// after the connection broke. again says whether a failure is worth another try: the
// base could not be reached, as opposed to a base that answered but not with the range
// of this version (the file changed, or it ignores ranges).
func (f *fill) rest(at int64) (body io.ReadCloser, again bool, err error) {
	f.c.Stats.Gets.Add(1)
	m, resp, err := f.c.up.get(f.ctx, f.target, at, f.end, &f.meta)
	if err != nil {
		return nil, unreachable(err), err
	}
	if !SameVersion(&f.meta, m) {
		resp.Body.Close()
		return nil, false, errors.New("the file changed on the base")
	}
	return resp.Body, false, nil
}

// pause waits d, or less when the fill's context ends (a window's reader left).
func (f *fill) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-f.ctx.Done():
	}
}

// checkpoint makes the bytes the fill has announced durable and records their count in
// the sidecar: the .part first, then the record, so the record never claims more than
// the disk holds. Failures only cost progress: they are logged. It reports whether the
// fill is still ckEvery or more past the new record (it went on during the fsync).
func (f *fill) checkpoint() (behind bool) {
	f.ckMu.Lock()
	defer f.ckMu.Unlock()
	if f.sealed || f.ckFile == nil {
		return false
	}
	n := f.landed() // every announced byte was written before it was announced
	if n <= f.ckRec.durable || n >= f.ckRec.size {
		return false
	}
	c := f.c
	if err := c.fsync(f.ckFile); err != nil {
		c.cfg.Logf("cache: checkpoint %s: %v", f.key, err)
		return false
	}
	first := f.ckRec.seq == 0
	side, err := os.OpenFile(f.ckPath, os.O_WRONLY|os.O_CREATE|unix.O_NOFOLLOW, 0o644) // as a lock (openLock)
	if err != nil {
		c.cfg.Logf("cache: checkpoint %s: %v", f.key, err)
		return false
	}
	rec := f.ckRec
	rec.seq++
	rec.durable = n
	_, err = side.WriteAt(rec.encode(), int64(rec.seq%2)*recordSize)
	if err == nil {
		err = c.fsync(side)
	}
	if cerr := side.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		c.cfg.Logf("cache: checkpoint %s: %v", f.key, err)
		return false
	}
	if first {
		// The folder's entries for the .part and the sidecar: without them neither is
		// found after a power cut.
		if dir, err := os.Open(filepath.Dir(f.ckPath)); err == nil {
			_ = c.fsync(dir)
			dir.Close()
		}
	}
	f.ckRec = rec
	return f.landed()-rec.durable >= c.ckEvery
}

// checkpointLater runs a checkpoint off the fill's goroutine, so the copy goes on during
// the fsync; at most one at a time, and another at once when the fill went on by ckEvery
// meanwhile (so a fill that stops soon after still has its bytes recorded). It reports
// whether it started.
func (f *fill) checkpointLater() bool {
	if !f.ckBusy.CompareAndSwap(false, true) {
		return false
	}
	f.ckWG.Add(1)
	go func() {
		defer f.ckWG.Done()
		defer f.ckBusy.Store(false)
		for f.checkpoint() {
		}
	}()
	return true
}

// seal ends the checkpoints, waiting for one under way: the fill commits or fails next.
func (f *fill) seal() {
	f.ckMu.Lock()
	f.sealed = true
	f.ckMu.Unlock()
}

// checkpointFills checkpoints every fill in progress: the cache is closing, and the next
// start resumes them.
func (c *Cache) checkpointFills() {
	c.mu.Lock()
	fills := make([]*fill, 0, len(c.fills))
	for _, f := range c.fills {
		fills = append(fills, f)
	}
	c.mu.Unlock()
	for _, f := range fills {
		f.checkpoint()
	}
}
