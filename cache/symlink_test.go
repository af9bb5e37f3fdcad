package cache

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSharedSymlinksNotFollowed: a cache folder another local user could write (a
// mistake, but a tired admin's chmod 1777 makes one) must not let them make offload
// write a file outside it. A lock file is opened for writing by every request (its hit
// counter) and by trim (which halves the counters): planted as a symlink, it was
// followed, and the file it named was written over as the web server's user.
func TestSharedSymlinksNotFollowed(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	const precious = "precious bytes of another site\n"
	if err := os.WriteFile(victim, []byte(precious), 0o644); err != nil {
		t.Fatal(err)
	}
	intact := func(when string) {
		t.Helper()
		if got, err := os.ReadFile(victim); err != nil || string(got) != precious {
			t.Fatalf("%s: the file a planted symlink names was changed: %q, %v", when, got, err)
		}
	}
	c := openShared(t, b.URL, dir)
	f, g := content("/f", 100<<10, 1), content("/g", 100<<10, 1)
	b.put("/f", f)
	b.put("/g", g)

	// Planted before the first request for /f.
	lock := c.lockPath(c.key("/f"))
	if err := os.MkdirAll(filepath.Dir(lock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, lock); err != nil {
		t.Fatal(err)
	}
	if h, err := get(t, c, "/f"); err == nil {
		readAll(t, h)
		h.Release()
	} else {
		t.Logf("/f with a planted lock: %v", err)
	}
	intact("a request")

	// Planted over the lock of an entry, then trim runs.
	mustGet(t, c, "/g", g).Release()
	lock = c.lockPath(c.key("/g"))
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, lock); err != nil {
		t.Fatal(err)
	}
	if _, err := Trim(dir, 1<<30, t.Logf); err != nil {
		t.Fatal(err)
	}
	intact("trim")
	if _, err := Trim(dir, 0, t.Logf); err != nil {
		t.Fatal(err)
	}
	intact("trim to 0")
	if fi, err := os.Lstat(lock); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Logf("planted lock now: %v, %v", fi, err)
	}
}

// TestTrimFIFOLock: a FIFO where a lock file belongs (planted, or a tired admin's
// mkfifo) is left alone: opening it to read the hit counter blocked trim for ever.
func TestTrimFIFOLock(t *testing.T) {
	dir := t.TempDir()
	name := strings.Repeat("ab", nameLen/2)
	if err := os.MkdirAll(filepath.Join(dir, name[:2]), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, name[:2], name+lockSuffix), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := Trim(dir, 1, t.Logf); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("trim blocked on a FIFO named as a lock file")
	}
}

// TestSharedPointerToFIFO: the file a <name>.cur pointer names is opened only if it is
// a regular file: a FIFO planted there (by someone else who can write the folder) hung
// every CGI process that asked for the key, in the open, until the web server killed it.
func TestSharedPointerToFIFO(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	f := content("/f", 100<<10, 1)
	b.put("/f", f)
	mustGet(t, c, "/f", f).Release()
	cur := c.curPath(c.key("/f"))
	name, err := os.Readlink(cur)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(filepath.Dir(cur), filepath.Base(name))
	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(target, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if h, err := get(t, c, "/f"); err == nil {
			readAll(t, h)
			h.Release()
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("a request hung on a FIFO where the pointer's data file belongs:\n%s", buf[:runtime.Stack(buf, true)])
	}
}

// uncommit fills path in c and then takes the entry away again (its data file and
// pointer), as if it had never been committed: what a planted fill record then names
// is all a filler finds. It returns the key and the data file's bytes.
func uncommit(t *testing.T, c *Cache, path string) (key string, committed []byte) {
	t.Helper()
	h, err := c.Get(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, h.Reader(context.Background(), 0, h.Meta.Size))
	h.Release()
	c.Drain(context.Background())
	key = c.key(path)
	cur := c.curPath(key)
	name, err := os.Readlink(cur)
	if err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(filepath.Dir(cur), filepath.Base(name))
	committed, _ = os.ReadFile(final)
	os.Remove(final)
	os.Remove(cur)
	return key, committed
}

// plantRecord writes a fill record naming the .part of gen into key's lock file, from
// "before a reboot", so that the next filler takes that .part over.
func plantRecord(c *Cache, key string, gen int64) {
	lk, _ := openLock(c.lockPath(key))
	r := fillRecord{pid: 1, gen: gen}
	r.boot[0] = 0xAA // "before a reboot": the taker truncates to the checkpoint
	lk.f.WriteAt(r.encode(), hitsLen)
	lk.close()
}

// TestSharedPlantedPartSymlink: a .part planted as a symlink and named by a fill record
// made the next filler open the link's target O_RDWR, truncate it and write the body
// into it (found by an attacker's review). Now it is not taken over; the fill starts anew.
func TestSharedPlantedPartSymlink(t *testing.T) {
	b := newTestBase(t)
	data := content("f", 200<<10, 1)
	b.put("/f.bin", data)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	key, committed := uncommit(t, c, "/f.bin")
	// The attacker: a victim file outside the cache that starts with the key's header.
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, append(append([]byte{}, committed[:HeaderSize]...), []byte("ATTACKER-CHOSEN-TAIL-or-any-bytes")...), 0o644)
	gen := int64(0x1234)
	if err := os.Symlink(victim, partOfGen(c.lockPath(key), gen)); err != nil {
		t.Fatal(err)
	}
	plantRecord(c, key, gen)

	c2 := openShared(t, b.URL, dir)
	h, err := c2.Get(context.Background(), "/f.bin")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, h.Reader(context.Background(), 0, h.Meta.Size))
	h.Release()
	c2.Drain(context.Background())
	got, _ := os.ReadFile(victim)
	fi, _ := os.Lstat(victim)
	t.Logf("victim outside the cache: %d bytes now (was %d), body copied in: %v", fi.Size(), HeaderSize+33, len(got) >= HeaderSize+len(data) && bytes.Equal(got[HeaderSize:HeaderSize+len(data)], data))
	if len(got) != HeaderSize+33 {
		t.Errorf("a file outside the cache folder was rewritten through a planted .part symlink")
	}
}

// TestSharedPlantedSidecarFIFO: a FIFO planted as a .part's sidecar hung the filler that
// took the .part over, with the key's lock held, so every follower got a 504.
func TestSharedPlantedSidecarFIFO(t *testing.T) {
	b := newTestBase(t)
	b.put("/g.bin", content("g", 200<<10, 1))
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	key, committed := uncommit(t, c, "/g.bin")
	gen := int64(0x77)
	part := partOfGen(c.lockPath(key), gen)
	os.WriteFile(part, committed[:HeaderSize+1000], 0o644) // a plausible .part of this version
	if err := unix.Mkfifo(sidecarOf(part), 0o644); err != nil {
		t.Fatal(err)
	}
	plantRecord(c, key, gen)
	c2 := openShared(t, b.URL, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := c2.Get(ctx, "/g.bin")
	t.Logf("Get: %v", err)
	lk2, _ := openLock(c.lockPath(key))
	ok, _ := lk2.tryLock()
	t.Logf("key lock free afterwards: %v", ok)
	if err != nil && !ok {
		t.Errorf("the filler hung opening a FIFO sidecar, holding the key's lock")
	}
}
