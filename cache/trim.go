package cache

// Trim keeps a cache folder under its bound when no process does: a shared cache (CGI
// mode) writes and commits but keeps no index in memory, so offload cache trim, run from
// cron or a systemd timer, removes entries until the bodies fit the bound again.
//
// What to remove, in this order:
//  1. what no request can use: versions older than the newest, pointers to nothing,
//     pointers being written whose writer died, lock files of keys with nothing left;
//  2. while the bodies are over the bound: entries (and unfinished fills nobody is
//     writing), the least often asked for first, as ristretto's policy (TinyLFU) in
//     offload serve decides by an estimate of how often each key was asked for. Here
//     the estimate is the hit counter in the key's lock file, which a shared cache
//     bumps on every request for the key, and which Trim halves once the counts add up
//     to ten per entry, as TinyLFU halves its counters after ten samples per counter
//     (so old popularity fades). Among entries asked for equally often, the one unused
//     longest goes first (the last use is the latest of the data file's mtime and
//     atime and the lock file's mtime, to the hour: atime moves only once a day under
//     relatime); among those, the largest, which frees the room with fewest entries
//     lost. Entries offload serve cached have no count: they go before counted ones.
//
// It never removes a file in use: one a live process reads or fills holds a shared flock
// (lockfile.go), and Trim removes a file only once it holds an exclusive flock on it
// (without waiting: it skips what it cannot lock), and a .part only once it also holds
// its key's lock. So it is safe while offload serve and CGI processes run; an entry of
// serve's index that Trim removed is filled again on its next request.
//
// It reads the folder's names and their metadata, no file's contents but lock files'.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// TrimStats says what Trim found and did.
type TrimStats struct {
	Entries int   // complete entries and unfinished fills found
	Before  int64 // their body bytes before
	After   int64 // and after
	Removed int   // entries and unfinished fills removed (not counting leftovers)
	Garbage int   // superseded versions, dangling pointers, leftovers removed
	InUse   int   // files Trim would have removed, but a live process uses
	// Failed counts files Trim could not remove (a folder not writable by the user it
	// runs as, say); FailedErr is the first such error.
	Failed    int
	FailedErr error
}

// trimFile is one data file or .part found by Trim.
type trimFile struct {
	path    string
	gen     int64
	size    int64 // body bytes
	lastUse time.Time
	part    bool
	removed bool
}

// trimKey is what Trim found of one key.
type trimKey struct {
	name  string
	dir   string
	data  []*trimFile
	parts []*trimFile
	cur   string // the pointer's target, "" for none
	lock  bool   // a lock file exists
	hits  uint64
	used  time.Time // the lock file's mtime
}

// Trim removes entries from the cache folder dir until their bodies take at most
// maxBytes, by the policy above; logf (may be nil) hears what it removes.
func Trim(dir string, maxBytes int64, logf func(format string, args ...any)) (TrimStats, error) {
	var st TrimStats
	if logf == nil {
		logf = func(string, ...any) {}
	}
	keys, err := trimScan(dir, &st)
	if err != nil {
		return st, err
	}
	var items []*trimFile
	owner := map[*trimFile]*trimKey{}
	var totalHits uint64
	for _, k := range keys {
		cur := k.current()
		for _, f := range k.data {
			st.Before += f.size
			if f != cur {
				if trimRemove(k, f, &st) {
					st.Garbage++
				}
				continue
			}
			items = append(items, f)
			owner[f] = k
		}
		for _, f := range k.parts {
			st.Before += f.size
			if cur != nil && f.gen < cur.gen {
				if trimRemove(k, f, &st) { // a fill of a version older than the entry
					st.Garbage++
				}
				continue
			}
			items = append(items, f)
			owner[f] = k
		}
		if cur != nil && k.cur != filepath.Base(cur.path) {
			if err := setCurrent(cur.path); err != nil { // a key offload serve cached before pointers
				logf("cache trim: %v", err)
			}
		}
		if cur == nil && k.cur != "" && trimDangling(k) {
			st.Garbage++
		}
		totalHits += k.hits
	}
	st.Entries = len(items)
	st.After = st.Before
	for _, k := range keys {
		for _, f := range slices.Concat(k.data, k.parts) {
			if f.removed {
				st.After -= f.size
			}
		}
	}
	slices.SortStableFunc(items, func(a, b *trimFile) int {
		ka, kb := owner[a], owner[b]
		switch {
		case ka.hits != kb.hits:
			return cmpU(ka.hits, kb.hits)
		case !a.lastUse.Truncate(time.Hour).Equal(b.lastUse.Truncate(time.Hour)):
			return a.lastUse.Compare(b.lastUse)
		}
		return cmpI(b.size, a.size)
	})
	for _, f := range items {
		if st.After <= maxBytes {
			break
		}
		if trimRemove(owner[f], f, &st) {
			st.Removed++
			st.After -= f.size
			logf("cache trim: removed %s (%d bytes, %d hits)", f.path, f.size, owner[f].hits)
		}
	}
	for _, k := range keys {
		if k.lock && len(k.live()) == 0 {
			trimLock(k)
		}
	}
	if len(items) > 0 && totalHits > 10*uint64(len(items)) {
		for _, k := range keys {
			if k.hits > 0 {
				trimAge(k)
			}
		}
	}
	return st, nil
}

func cmpU(a, b uint64) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

func cmpI(a, b int64) int { return cmpU(uint64(a), uint64(b)) }

// trimScan reads the names under dir's fan-out folders, one ReadDir each.
func trimScan(dir string, st *TrimStats) ([]*trimKey, error) {
	subs, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cache trim: %w", err)
	}
	var keys []*trimKey
	for _, sub := range subs {
		if !sub.IsDir() || !fanout(sub.Name()) {
			continue
		}
		folder := filepath.Join(dir, sub.Name())
		ents, err := os.ReadDir(folder)
		if err != nil {
			return nil, fmt.Errorf("cache trim: %w", err)
		}
		byName := map[string]*trimKey{}
		key := func(name string) *trimKey {
			k := byName[name]
			if k == nil {
				k = &trimKey{name: name, dir: folder}
				byName[name] = k
				keys = append(keys, k)
			}
			return k
		}
		for _, e := range ents {
			name := e.Name()
			path := filepath.Join(folder, name)
			if len(name) <= nameLen || e.IsDir() {
				continue
			}
			stem := name[:nameLen]
			info, err := e.Info()
			if err != nil {
				continue // removed meanwhile
			}
			switch rest := name[nameLen:]; {
			case rest == lockSuffix:
				if !info.Mode().IsRegular() {
					continue // not one of ours (a symlink planted, a FIFO that would block): left alone
				}
				k := key(stem)
				k.lock, k.used = true, info.ModTime()
				if f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0); err == nil {
					k.hits = readHits(f)
					f.Close()
				}
			case rest == curSuffix:
				if target, err := os.Readlink(path); err == nil {
					key(stem).cur = filepath.Base(target)
				}
			case strings.HasSuffix(rest, tmpSuffix):
				if time.Since(info.ModTime()) > time.Minute && os.Remove(path) == nil {
					st.Garbage++
				}
			case strings.HasSuffix(rest, resumeSuffix):
				if !exists(partOf(path)) && time.Since(info.ModTime()) > time.Minute && os.Remove(path) == nil {
					st.Garbage++ // a sidecar left without its .part
				}
			default:
				gen, ok := genOf(path)
				if !ok || !info.Mode().IsRegular() {
					continue // not the cache's: left alone
				}
				f := &trimFile{path: path, gen: gen, size: max(info.Size()-HeaderSize, 0), lastUse: info.ModTime(),
					part: strings.HasSuffix(name, ".part")}
				if s, ok := info.Sys().(*syscall.Stat_t); ok {
					if at := time.Unix(s.Atim.Unix()); at.After(f.lastUse) {
						f.lastUse = at
					}
				}
				if f.part {
					key(stem).parts = append(key(stem).parts, f)
				} else {
					key(stem).data = append(key(stem).data, f)
				}
			}
		}
	}
	for _, k := range keys {
		for _, f := range slices.Concat(k.data, k.parts) {
			if k.used.After(f.lastUse) {
				f.lastUse = k.used
			}
		}
	}
	return keys, nil
}

// current is the key's data file requests get: the newest (the pointer names it but
// for a moment during a commit, or after a crash in that moment, when Trim points it).
func (k *trimKey) current() *trimFile {
	var newest *trimFile
	for _, f := range k.data {
		if newest == nil || f.gen > newest.gen {
			newest = f
		}
	}
	return newest
}

// live is what is left of the key's files.
func (k *trimKey) live() []*trimFile {
	var out []*trimFile
	for _, f := range slices.Concat(k.data, k.parts) {
		if !f.removed {
			out = append(out, f)
		}
	}
	return out
}

// trimRemove removes one data file or .part unless it is in use, and marks it removed. A .part, and a data file of a key being filled, are removed
// only holding the key's lock.
func trimRemove(k *trimKey, f *trimFile, st *TrimStats) bool {
	var lk *keyLock
	if k.lock || f.part {
		var err error
		if lk, err = openLock(filepath.Join(k.dir, k.name+lockSuffix)); err != nil {
			return false
		}
		k.lock = true
		defer lk.close()
		if ok, _ := lk.tryLock(); !ok {
			st.InUse++ // a fill of the key is under way
			return false
		}
	}
	file, err := os.Open(f.path)
	if err != nil {
		return false // gone meanwhile
	}
	defer file.Close()
	if alone, _ := tryFlock(file, unix.LOCK_EX); !alone || !sameFile(file, f.path) {
		st.InUse++
		return false
	}
	if err := os.Remove(f.path); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			st.Failed++
			if st.FailedErr == nil {
				st.FailedErr = err
			}
		}
		return false
	}
	if f.part {
		removeQuiet(sidecarOf(f.path))
		if r, ok := lk.readRecord(); ok && partOfGen(lk.path, r.gen) == f.path {
			lk.clearRecord()
		}
	} else if k.cur == filepath.Base(f.path) {
		cur := filepath.Join(k.dir, k.name+curSuffix)
		if name, err := os.Readlink(cur); err == nil && filepath.Base(name) == k.cur {
			_ = os.Remove(cur)
		}
		k.cur = ""
	}
	f.removed = true
	return true
}

// trimDangling removes a pointer to a data file that is not there, holding the key's
// lock when the key has one (a fill commits holding it).
func trimDangling(k *trimKey) bool {
	cur := filepath.Join(k.dir, k.name+curSuffix)
	if k.lock {
		lk, err := openLock(filepath.Join(k.dir, k.name+lockSuffix))
		if err != nil {
			return false
		}
		defer lk.close()
		if ok, _ := lk.tryLock(); !ok {
			return false
		}
	}
	name, err := os.Readlink(cur)
	if err != nil || exists(filepath.Join(k.dir, filepath.Base(name))) {
		return false
	}
	return os.Remove(cur) == nil
}

// trimLock removes the lock file of a key with nothing left, holding its lock (whoever
// opened it meanwhile finds it replaced once they lock it: lockfile.go).
func trimLock(k *trimKey) {
	lk, err := openLock(filepath.Join(k.dir, k.name+lockSuffix))
	if err != nil {
		return
	}
	defer lk.close()
	if ok, _ := lk.tryLock(); !ok {
		return
	}
	if exists(filepath.Join(k.dir, k.name+curSuffix)) {
		return
	}
	if err := os.Remove(lk.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return
	}
}

// trimAge halves a key's hit counter (without its lock: a request counted meanwhile
// may be lost, as in any estimate).
func trimAge(k *trimKey) {
	f, err := os.OpenFile(filepath.Join(k.dir, k.name+lockSuffix), os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	defer f.Close()
	_ = writeHits(f, readHits(f)/2)
}
