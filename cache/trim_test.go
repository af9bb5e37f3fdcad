package cache

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bodies is the body bytes of the data files and .parts under dir.
func bodies(t *testing.T, dir string) int64 {
	t.Helper()
	_, total := dataFiles(t, dir)
	return total
}

// entryOf is the data file key's pointer names, "" when it has none.
func entryOf(c *Cache, path string) string {
	name, err := os.Readlink(c.curPath(c.key(path)))
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(c.curPath(c.key(path))), name)
	if !exists(p) {
		return ""
	}
	return p
}

// TestTrimKeepsBound: trim removes the entries asked for least often until the bodies
// fit the bound, and keeps the others whole.
func TestTrimKeepsBound(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	files := map[string][]byte{}
	for i := range 10 {
		p := fmt.Sprintf("/f%d", i)
		files[p] = content(p, 1<<20, 1)
		b.put(p, files[p])
		mustGet(t, c, p, files[p])
	}
	for i := range 5 { // the hot half: asked for 5 more times each
		for range 5 {
			mustGet(t, c, fmt.Sprintf("/f%d", i), files[fmt.Sprintf("/f%d", i)])
		}
	}
	bound := int64(5<<20 + 512<<10)
	st, err := Trim(dir, bound, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != 10 || st.Before != 10<<20 || st.Removed != 5 || st.After != 5<<20 || st.InUse != 0 {
		t.Errorf("stats %+v", st)
	}
	if got := bodies(t, dir); got > bound {
		t.Errorf("%d body bytes after trimming to %d", got, bound)
	}
	for i := range 10 {
		p := fmt.Sprintf("/f%d", i)
		if kept := entryOf(c, p) != ""; kept != (i < 5) {
			t.Errorf("%s kept: %v", p, kept)
		}
	}
	for i := range 5 { // still whole: hits, no GET
		p := fmt.Sprintf("/f%d", i)
		if h := mustGet(t, c, p, files[p]); !h.Hit {
			t.Errorf("%s missed after the trim", p)
		}
		if _, gets := b.counts(p); gets != 1 {
			t.Errorf("%s: %d GETs", p, gets)
		}
	}
	// Nothing to do under the bound.
	if st, err := Trim(dir, bound, t.Logf); err != nil || st.Removed != 0 {
		t.Errorf("second trim: %+v, %v", st, err)
	}
}

// TestTrimInUse: trim never removes an entry another process reads or a fill another
// process writes, even with a bound of 0; they go once nobody uses them.
func TestTrimInUse(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	read, filling, idle := content("read", 1<<20, 1), content("filling", 4<<20, 1), content("idle", 1<<20, 1)
	b.put("/read", read)
	b.put("/filling", filling)
	b.put("/idle", idle)
	mustGet(t, c, "/read", read)
	mustGet(t, c, "/idle", idle)
	reader := startChild(t, "hold", dir, b.URL, "/read")
	if got := reader.expect(t, "handle", 20*time.Second); got != "handle hit=true" {
		t.Fatalf("reader: %s", got)
	}
	b.mu.Lock()
	b.throttle = 5 * time.Millisecond // 64 pieces: about 0.3 s
	b.mu.Unlock()
	filler := startChild(t, "get", dir, b.URL, "/filling")
	filler.expect(t, "handle", 20*time.Second)
	for deadline := time.Now().Add(10 * time.Second); len(partsUnder(dir)) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no .part")
		}
	}
	st, err := Trim(dir, 0, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if entryOf(c, "/read") == "" {
		t.Error("trim removed an entry another process reads")
	}
	if entryOf(c, "/idle") != "" {
		t.Error("trim left an entry nobody uses over the bound")
	}
	if st.InUse < 2 || st.Removed != 1 {
		t.Errorf("stats %+v: want the idle entry removed, the read one and the fill in use", st)
	}
	if got := filler.expect(t, "sha", 30*time.Second); got != shaLine(filling) {
		t.Fatalf("the fill trim ran beside: %s", got)
	}
	reader.stdin.Close()
	<-reader.done
	<-filler.done
	st, err = Trim(dir, 0, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if got := bodies(t, dir); got != 0 || st.InUse != 0 || st.Removed != 2 {
		t.Errorf("once nobody uses them: %d bytes left, stats %+v", got, st)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*", "*")); len(left) != 0 {
		t.Errorf("left after trimming everything: %v", left)
	}
}

// TestTrimGarbage: versions older than the current one, pointers to nothing and
// pointers a dead writer left go whatever the bound; keys offload serve cached before
// pointers get one.
func TestTrimGarbage(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	v1, v2 := content("g", 300<<10, 1), content("g", 400<<10, 2)
	b.put("/g", v1)
	serve := openCache(t, b, dir, nil)
	mustGet(t, serve, "/g", v1)
	serve.Close()
	c := openShared(t, b.URL, dir)
	old := entryOf(c, "/g")
	// A reader holds the old version while the new one is committed: it stays.
	f, _ := os.Open(old)
	tryFlockSH(t, f)
	b.put("/g", v2)
	mustGet(t, c, "/g", v2)
	f.Close()
	if !exists(old) {
		t.Fatal("a version in use was removed at commit")
	}
	waitClosed(t, dir) // serve's descriptors, closed off its Close (closer.go)
	cur := entryOf(c, "/g")
	// A pointer to nothing, and one whose writer died.
	os.MkdirAll(filepath.Join(dir, "ab"), 0o755)
	dangling := filepath.Join(dir, "ab", strings.Repeat("ab", 16)+curSuffix)
	os.Symlink(strings.Repeat("ab", 16)+"-1", dangling)
	tmp := dangling + ".1-1" + tmpSuffix
	os.Symlink("x", tmp)
	past := unix.NsecToTimespec(time.Now().Add(-time.Hour).UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, []unix.Timespec{past, past}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	exec := func() TrimStats {
		st, err := Trim(dir, 1<<30, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := exec()
	if exists(old) || !exists(cur) || exists(dangling) || exists(tmp) || st.Removed != 0 || st.Garbage != 3 {
		t.Errorf("after trim: old %v, current %v, dangling %v, tmp %v, stats %+v", exists(old), exists(cur), exists(dangling), exists(tmp), st)
	}
	// A key without a pointer (offload serve before pointers) gets one.
	os.Remove(c.curPath(c.key("/g")))
	exec()
	if entryOf(c, "/g") != cur {
		t.Error("trim did not point the key at its entry")
	}
	if h := mustGet(t, c, "/g", v2); !h.Hit {
		t.Error("missed after trim")
	}
}

// waitClosed waits until this process has no file under dir open.
func waitClosed(t *testing.T, dir string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		open := ""
		fds, _ := os.ReadDir("/proc/self/fd")
		for _, fd := range fds {
			if l, _ := os.Readlink("/proc/self/fd/" + fd.Name()); strings.HasPrefix(l, dir+"/") {
				open = l
			}
		}
		if open == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still open", open)
		}
	}
}

func tryFlockSH(t *testing.T, f *os.File) {
	t.Helper()
	if ok, err := tryFlock(f, unix.LOCK_SH); !ok {
		t.Fatalf("flock: %v", err)
	}
}

// TestTrimAgesCounts: once the counts add up to more than ten per entry, trim halves
// them, so what was popular long ago does not stay forever.
func TestTrimAgesCounts(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	data := content("h", 100<<10, 1)
	b.put("/h", data)
	for range 25 {
		mustGet(t, c, "/h", data)
	}
	hits := func() uint64 {
		f, err := os.Open(c.lockPath(c.key("/h")))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return readHits(f)
	}
	if n := hits(); n != 25 {
		t.Fatalf("%d hits counted, want 25", n)
	}
	Trim(dir, 1<<30, t.Logf)
	if n := hits(); n != 12 {
		t.Errorf("%d hits after aging, want 12", n)
	}
	Trim(dir, 1<<30, t.Logf)
	if n := hits(); n != 6 {
		t.Errorf("%d hits after aging twice, want 6", n)
	}
	Trim(dir, 1<<30, t.Logf)
	if n := hits(); n != 6 {
		t.Errorf("%d hits: aged at 6 a key", n)
	}
}

// TestTrimCannotRemove: files trim may not remove (run as a user who cannot write the
// cache folder) are counted and the first error kept, so the command can say so and
// fail: it used to report them as in use and exit 0 while the cache grew unbounded.
// Made here with the immutable attribute, which stops root too.
func TestTrimCannotRemove(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	for i := range 2 {
		p := fmt.Sprintf("/f%d", i)
		b.put(p, content(p, 64<<10, 1))
		mustGet(t, c, p, content(p, 64<<10, 1))
	}
	var locked []string
	t.Cleanup(func() {
		for _, d := range locked {
			exec.Command("chattr", "-i", d).Run()
		}
	})
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		d := filepath.Join(dir, e.Name())
		if !e.IsDir() || e.Name() == "slots" {
			continue
		}
		if out, err := exec.Command("chattr", "+i", d).CombinedOutput(); err != nil {
			t.Skipf("chattr +i %s: %v %s (needs root and a file system with the attribute)", d, err, out)
		}
		locked = append(locked, d)
	}
	st, err := Trim(dir, 0, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if st.Failed == 0 || st.FailedErr == nil || st.Removed != 0 {
		t.Errorf("stats %+v: want the files trim could not remove counted, with the error", st)
	}
}
