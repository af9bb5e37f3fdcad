package cache

// Coordination between the processes that use one cache folder (offload serve, the
// processes of CGI mode, offload cache trim), through the file system only: flock(2)
// locks, which the kernel drops when their process dies, and two small files per key
// beside its data files, in the key's fan-out folder:
//
//	<name>.cur   a symlink to the key's current complete data file <name>-<gen>: how a
//	             process finds an entry by its key's name, without a scan. Every commit
//	             writes it (a new symlink renamed over the old); the scan of offload
//	             serve and offload cache trim write it for entries that have none. A
//	             pointer to nothing is a miss.
//	<name>.lock  the key's lock. Whoever holds an exclusive flock on it writes the key's
//	             .part files: a fill of a shared cache (the filler), a resumed fill of
//	             offload serve, trim removing a .part. Its content: a hit counter (for
//	             trim's policy) and, while a fill runs, the fill record, which names the
//	             .part being written, so that other processes can follow it.
//
// Every process that reads or writes a data file or a .part holds a shared flock on it;
// whoever removes one (trim) or shrinks one (a fill resuming a .part from before a
// reboot) first takes an exclusive flock without waiting, and leaves the file alone when
// it cannot. Removing a file someone still reads is harmless on Unix (the open
// descriptor keeps the bytes), but an in-use file is never removed by trim.
//
// A lock file is removed only by trim, holding its lock, and only when its key has no
// file left; whoever takes a lock checks afterwards that the file it locked is still
// the one at the path (else it locked a removed file, and opens the path again).

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// tmpSeq makes the names of pointers being written unique within the process.
var tmpSeq atomic.Uint32

const (
	lockSuffix = ".lock"
	curSuffix  = ".cur"
	tmpSuffix  = ".tmp"
	nameLen    = 32 // len(keyName(key))

	// The lock file: [0, 8) the hit counter, little-endian; [8, 8+fillRecLen) the fill
	// record while a fill runs.
	hitsLen    = 8
	fillRecLen = 48
	fillMagic  = "OFFLOADF"
)

// flock is flock(2), again after an interrupt.
func flock(f *os.File, how int) error {
	for {
		if err := unix.Flock(int(f.Fd()), how); err != unix.EINTR {
			return err
		}
	}
}

// tryFlock takes a flock without waiting; false when another open file holds a
// conflicting one.
func tryFlock(f *os.File, how int) (bool, error) {
	err := flock(f, how|unix.LOCK_NB)
	if err == unix.EWOULDBLOCK {
		return false, nil
	}
	return err == nil, err
}

// sameFile reports whether f is still the file at path.
func sameFile(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// keyLock is an open lock file of one key.
type keyLock struct {
	path string
	f    *os.File
	held bool // this keyLock holds the exclusive flock
}

// lockPath is the lock file of key.
func (c *Cache) lockPath(key string) string {
	name := keyName(key)
	return filepath.Join(c.cfg.Dir, name[:2], name+lockSuffix)
}

// curPath is the pointer to key's current data file.
func (c *Cache) curPath(key string) string {
	name := keyName(key)
	return filepath.Join(c.cfg.Dir, name[:2], name+curSuffix)
}

// openLock opens (creating it, and its folder) the lock file at path. Never through a
// symlink: a lock is written (its counter, its record, cut back), and one planted in a
// folder someone else can write would make that a write to any file the user may write.
func openLock(path string) (*keyLock, error) {
	const flags = os.O_RDWR | os.O_CREATE | unix.O_NOFOLLOW
	f, err := os.OpenFile(path, flags, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
			f, err = os.OpenFile(path, flags, 0o644)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cache: lock %s: %w", path, err)
	}
	return &keyLock{path: path, f: f}, nil
}

// tryLock takes the key's exclusive lock without waiting: false when another process
// (or another keyLock of this one) holds it.
func (l *keyLock) tryLock() (bool, error) {
	for range 8 {
		ok, err := tryFlock(l.f, unix.LOCK_EX)
		if !ok || err != nil {
			return false, err
		}
		if sameFile(l.f, l.path) {
			l.held = true
			return true, nil
		}
		// Trim removed the file after we opened it: lock the one at the path now.
		l.f.Close()
		nl, err := openLock(l.path)
		if err != nil {
			return false, err
		}
		l.f = nl.f
	}
	return false, fmt.Errorf("cache: lock %s: keeps being replaced", l.path)
}

// unlock drops the exclusive lock.
func (l *keyLock) unlock() {
	if l.held {
		_ = flock(l.f, unix.LOCK_UN)
		l.held = false
	}
}

// close drops the lock, if held, and closes the file.
func (l *keyLock) close() {
	if l != nil {
		l.unlock()
		l.f.Close()
	}
}

// fillRecord says which .part the lock's holder writes: <name>-<gen>.part, in the boot
// boot. Bytes of a .part written in this boot are good up to its size (the page cache
// survives any process); of one from an earlier boot only up to its checkpoint.
type fillRecord struct {
	boot [16]byte
	pid  int32
	gen  int64
}

func (r *fillRecord) encode() []byte {
	b := make([]byte, fillRecLen)
	copy(b, fillMagic)
	copy(b[8:24], r.boot[:])
	binary.LittleEndian.PutUint32(b[24:], uint32(r.pid))
	binary.LittleEndian.PutUint64(b[28:], uint64(r.gen))
	binary.LittleEndian.PutUint32(b[36:], crc32.Checksum(b[:36], castagnoli))
	return b
}

// readRecord is the fill record in the lock file, if one is there whole.
func (l *keyLock) readRecord() (fillRecord, bool) {
	var r fillRecord
	b := make([]byte, fillRecLen)
	n, _ := l.f.ReadAt(b, hitsLen)
	if n < 40 || string(b[:8]) != fillMagic || binary.LittleEndian.Uint32(b[36:]) != crc32.Checksum(b[:36], castagnoli) {
		return r, false
	}
	copy(r.boot[:], b[8:24])
	r.pid = int32(binary.LittleEndian.Uint32(b[24:]))
	r.gen = int64(binary.LittleEndian.Uint64(b[28:]))
	return r, true
}

// writeRecord says that the holder writes the .part of generation gen.
func (l *keyLock) writeRecord(gen int64) error {
	boot, err := currentBoot()
	if err != nil {
		return err
	}
	r := fillRecord{boot: boot, pid: int32(os.Getpid()), gen: gen}
	if _, err := l.f.WriteAt(r.encode(), hitsLen); err != nil {
		return fmt.Errorf("cache: fill record %s: %w", l.path, err)
	}
	return nil
}

// clearRecord removes the fill record, keeping the hit counter: an empty lock file when
// there is no count, so a key's lock costs no data block.
func (l *keyLock) clearRecord() {
	size := int64(0)
	if readHits(l.f) > 0 {
		size = hitsLen
	}
	_ = l.f.Truncate(size)
}

// readHits is the hit counter of an open lock file.
func readHits(f *os.File) uint64 {
	var b [hitsLen]byte
	if n, _ := f.ReadAt(b[:], 0); n < hitsLen {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}

// writeHits sets the hit counter of an open lock file.
func writeHits(f *os.File, n uint64) error {
	var b [hitsLen]byte
	binary.LittleEndian.PutUint64(b[:], n)
	_, err := f.WriteAt(b[:], 0)
	return err
}

// bumpHits counts a request for key in its lock file (without the lock: two processes
// counting at once may count one, as a sketch may). Writing also sets the file's mtime,
// which trim reads as the key's last use.
func (c *Cache) bumpHits(key string) {
	l, err := openLock(c.lockPath(key))
	if err != nil {
		return // best effort: the policy only loses one count
	}
	defer l.close()
	_ = writeHits(l.f, readHits(l.f)+1)
}

var boot struct {
	once sync.Once
	id   [16]byte
	err  error
}

// currentBoot is the kernel's boot id: it tells a .part written before a reboot (good
// only up to its checkpoint) from one written since (good up to its size).
func currentBoot() ([16]byte, error) {
	boot.once.Do(func() {
		b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			boot.err = fmt.Errorf("cache: boot id: %w", err)
			return
		}
		s := strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")
		if n, err := hex.Decode(boot.id[:], []byte(s)); err != nil || n != 16 {
			boot.err = fmt.Errorf("cache: boot id %q is not a UUID", b)
		}
	})
	return boot.id, boot.err
}

// setCurrent points key's .cur at its data file final (a symlink renamed over the old
// one, so a reader sees the old pointer or the new, never none).
func setCurrent(final string) error {
	name := filepath.Base(final)
	if len(name) <= nameLen {
		return fmt.Errorf("cache: %s is not a data file name", final)
	}
	dir := filepath.Dir(final)
	cur := filepath.Join(dir, name[:nameLen]+curSuffix)
	tmp := cur + "." + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(uint64(tmpSeq.Add(1)), 10) + tmpSuffix
	if err := os.Symlink(name, tmp); err != nil {
		return fmt.Errorf("cache: pointer %s: %w", cur, err)
	}
	if err := os.Rename(tmp, cur); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("cache: pointer %s: %w", cur, err)
	}
	return nil
}

// genOf reads the generation out of a data file's or a .part's name (<name>-<gen hex>).
func genOf(path string) (int64, bool) {
	name := strings.TrimSuffix(filepath.Base(path), ".part")
	if len(name) <= nameLen+1 || name[nameLen] != '-' {
		return 0, false
	}
	g, err := strconv.ParseInt(name[nameLen+1:], 16, 64)
	return g, err == nil
}

// openRegular opens path with flag, never through a symlink and never blocked on a
// FIFO (O_NOFOLLOW, O_NONBLOCK, which a regular file ignores), and only as a regular
// file: in a cache folder someone else can write, a .part or sidecar planted as a link
// would have a filler truncate and write the file it names, and a FIFO would hang the
// process that opened it while it holds the key's lock.
func openRegular(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("cache: %s: not a regular file", path)
	}
	return f, nil
}

// removeUnused removes the file at path unless a process has it open with a flock
// (in use); trim removes it later.
func removeUnused(path string) {
	// Not through a link, and never blocked on a FIFO planted in the folder: what is
	// not a regular file where a data file belongs is removed as it is.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			_ = os.Remove(path)
		}
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		_ = os.Remove(path)
		return
	}
	if alone, _ := tryFlock(f, unix.LOCK_EX); alone && sameFile(f, path) {
		_ = os.Remove(path)
	}
}
