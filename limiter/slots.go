package limiter

// The cap on downloads of one file by one address, across processes: in CGI mode every
// download is a process of its own, so no process can count the others in memory. A
// download holds a slot instead: an exclusive flock(2) on one of MaxDupes lock files
// named by a hash of the address and the path. The kernel drops the lock with the
// download's process, however it ends, so a crash never leaves a slot taken.
//
// Slot files are empty. A file is removed only by whoever holds its lock: the download
// that releases it (else every address and path ever asked for would keep an inode under
// the folder), and Sweep, for those a killed process left. Whoever takes a slot checks,
// holding the lock, that the file it locked is still the one at the path, and takes the
// path again when it was removed meanwhile; so no two downloads ever hold "one" slot.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Slots caps simultaneous downloads of one path by one client address at max, over
// every process that uses the folder dir. Its methods are safe for concurrent use; they
// do file I/O, so an event loop must not call them.
type Slots struct {
	dir string
	max int
}

// NewSlots returns the slots kept in dir (made if missing), max per address and path.
func NewSlots(dir string, max int) (*Slots, error) {
	if max <= 0 {
		return nil, fmt.Errorf("limiter: %d slots per address and path", max)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("limiter: slots: %w", err)
	}
	return &Slots{dir: dir, max: max}, nil
}

// Slot is one download's place. Release it when the download ends.
type Slot struct {
	f    *os.File
	path string
}

// Release frees the slot and removes its file, still holding the lock: one who opened it
// meanwhile finds, once it has the lock, that the file is no longer at the path.
func (s *Slot) Release() {
	if s != nil && s.f != nil {
		if sameFile(s.f, s.path) {
			_ = os.Remove(s.path)
		}
		s.f.Close() // drops the flock
		s.f = nil
	}
}

// Take takes a slot for client downloading path: nil, and no error, when the client
// already holds max downloads of path, in this process or any other.
func (s *Slots) Take(client netip.Addr, path string) (*Slot, error) {
	sum := sha256.Sum256([]byte(client.String() + "\x00" + path)) // the in-memory key
	name := hex.EncodeToString(sum[:16])
	for i := range s.max {
		p := filepath.Join(s.dir, name[:2], name+"."+strconv.Itoa(i))
		f, err := lockSlot(p)
		if err != nil {
			return nil, err
		}
		if f != nil {
			return &Slot{f: f, path: p}, nil
		}
	}
	return nil, nil
}

// lockSlot takes the slot file p without waiting: nil when another holds it. Never
// through a symlink, which O_CREAT would follow to make a file wherever it points.
func lockSlot(p string) (*os.File, error) {
	const flags = os.O_RDONLY | os.O_CREATE | unix.O_NOFOLLOW
	for range 8 {
		f, err := os.OpenFile(p, flags, 0o644)
		if errors.Is(err, fs.ErrNotExist) {
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				f, err = os.OpenFile(p, flags, 0o644)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("limiter: slot %s: %w", p, err)
		}
		ok, err := tryLock(f)
		if err != nil || !ok {
			f.Close()
			return nil, err
		}
		if sameFile(f, p) {
			return f, nil
		}
		f.Close() // Sweep removed it after we opened it: take the one at the path
	}
	return nil, fmt.Errorf("limiter: slot %s keeps being replaced", p)
}

// Sweep removes the slot files nobody holds that were made more than age ago (left by
// a process killed before its Release), and reports how many it removed.
func (s *Slots) Sweep(age time.Duration) (int, error) {
	removed := 0
	err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil || time.Since(info.ModTime()) < age {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		if ok, _ := tryLock(f); ok && sameFile(f, p) && os.Remove(p) == nil {
			removed++
		}
		return nil
	})
	return removed, err
}

func tryLock(f *os.File) (bool, error) {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch err {
		case nil:
			return true, nil
		case unix.EWOULDBLOCK:
			return false, nil
		case unix.EINTR:
			continue
		}
		return false, fmt.Errorf("limiter: flock %s: %w", f.Name(), err)
	}
}

func sameFile(f *os.File, p string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(p, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}
