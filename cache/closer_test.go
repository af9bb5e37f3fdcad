package cache

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// openFds lists this process's descriptors that point at files whose path contains sub.
func openFds(t *testing.T, sub string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.Contains(target, sub) {
			out = append(out, target)
		}
	}
	return out
}

// TestLastCloseOffTheCaller: the reader that lets go of a data file last (on the server's
// event loop) does not close it itself: the last close of an unlinked file frees its
// blocks, which can take the file system long for a big file. The closer does it.
func TestLastCloseOffTheCaller(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("huge", 3<<20, 1)
	b.put("/huge", data)
	c := openCache(t, b, dir, func(c *Config) { c.MaxBytes = 1 << 20 }) // streamed through, unlinked
	held := make(chan *os.File, 16)
	c.closeq = held // the closer goroutine no longer sees the files
	h := mustGet(t, c, "/huge", data)
	h.Release()
	// The fill let go of it too once it ended; wait for that.
	deadline := time.Now().Add(5 * time.Second)
	for len(held) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(openFds(t, dir)) == 0 {
		t.Fatal("the unlinked file was closed by a reader, not by the closer")
	}
	for len(held) > 0 {
		c.closeNow(<-held)
	}
	if fds := openFds(t, dir); len(fds) != 0 {
		t.Errorf("still open after the closer ran: %v", fds)
	}
	if n := c.Stats.OpenFiles.Load(); n != 0 {
		t.Errorf("OpenFiles = %d, want 0", n)
	}
}

// TestLookupNeverOpens: Lookup runs on the event loop, so it answers only from memory or
// from a descriptor another reader keeps open; it never opens a file (an open may wait
// for the disk). An idle descriptor stays open for keepOpen, then closes.
func TestLookupNeverOpens(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("big", 300<<10, 1)
	b.put("/big", data)
	c := openCache(t, b, dir, func(c *Config) { c.Revalidate = time.Hour })
	mustGet(t, c, "/big", data)
	h := c.Lookup("/big")
	if h == nil {
		t.Fatal("Lookup missed an entry whose descriptor the fill left open")
	}
	got, _ := readAll(t, h) // releases h
	if !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
	// Close every idle descriptor, as keepOpen's expiry does.
	c.closeIdle(true)
	waitOpen(t, c, 0)
	if h := c.Lookup("/big"); h != nil {
		h.Release()
		t.Fatal("Lookup opened a data file")
	}
	if fds := openFds(t, dir); len(fds) != 0 {
		t.Errorf("Lookup left files open: %v", fds)
	}
	// Get (off the loop) opens it again, and Lookup shares it.
	h, err := get(t, c, "/big")
	if err != nil {
		t.Fatal(err)
	}
	if h2 := c.Lookup("/big"); h2 == nil {
		t.Error("Lookup missed a descriptor a reader holds")
	} else {
		h2.Release()
	}
	h.Release()
	if n := c.Stats.OpenFiles.Load(); n != 1 {
		t.Errorf("OpenFiles = %d with one idle descriptor, want 1", n)
	}
}

// TestRemovedEntryClosesWithLastReader: an evicted or purged entry's descriptor closes
// when its last reader leaves, not keepOpen later, so the disk space comes back.
func TestRemovedEntryClosesWithLastReader(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("gone", 300<<10, 1)
	b.put("/gone", data)
	c := openCache(t, b, dir, nil)
	mustGet(t, c, "/gone", data) // fills; mustGet releases its handle
	h, err := get(t, c, "/gone") // a reader of the committed entry, holding it
	if err != nil || !h.Hit {
		t.Fatalf("second Get: %v, hit %v", err, h != nil && h.Hit)
	}
	b.del("/gone")
	if _, err := get(t, c, "/gone"); err == nil {
		t.Fatal("a file gone on the base was served")
	}
	if len(openFds(t, dir)) == 0 {
		t.Fatal("the reader's descriptor was closed under it")
	}
	h.Release()
	waitOpen(t, c, 0)
	if fds := openFds(t, dir); len(fds) != 0 {
		t.Errorf("purged entry still open: %v", fds)
	}
}

func waitOpen(t *testing.T, c *Cache, want int64) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); c.Stats.OpenFiles.Load() != want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("OpenFiles = %d, want %d", c.Stats.OpenFiles.Load(), want)
		}
	}
}
