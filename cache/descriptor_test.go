package cache

import (
	"testing"
	"time"
)

// TestDescriptorsSharedAndClosed: readers of one committed file share one descriptor;
// once none reads it, it stays open a while for the next reader, is closed when it has
// been idle longer than keepOpen (and not before), and at once when the file is gone.
func TestDescriptorsSharedAndClosed(t *testing.T) {
	b := newTestBase(t)
	data := content("fd", 300<<10, 1)
	b.put("/fd", data)
	c := openCache(t, b, t.TempDir(), nil)
	mustGet(t, c, "/fd", data)
	e, ok := c.index.Get(c.key("/fd"))
	if !ok {
		t.Fatal("/fd not indexed")
	}
	// isOpen says whether the entry holds a descriptor now; closes themselves happen a
	// moment later on the closer goroutine, which the OpenFiles gauge follows.
	isOpen := func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.file != nil
	}
	gauge := func(want int64, why string) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); c.Stats.OpenFiles.Load() != want && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if got := c.Stats.OpenFiles.Load(); got != want {
			t.Fatalf("%s: %d descriptors open, want %d", why, got, want)
		}
	}
	age := func(d time.Duration) {
		e.mu.Lock()
		if e.file != nil {
			e.file.idle -= int64(d)
		}
		e.mu.Unlock()
	}
	h1, err := get(t, c, "/fd")
	if err != nil {
		t.Fatal(err)
	}
	h2, err := get(t, c, "/fd")
	if err != nil {
		t.Fatal(err)
	}
	if h1.File() == nil || h1.File() != h2.File() {
		t.Fatalf("two readers hold %p and %p, want one shared descriptor", h1.File(), h2.File())
	}
	gauge(1, "two readers")
	h1.Release()
	if !isOpen() {
		t.Fatal("closed while a reader still holds it")
	}
	h2.Release()
	c.closeIdle(false)
	if !isOpen() {
		t.Fatal("closed at once when its last reader left")
	}
	age(keepOpen - time.Second)
	c.closeIdle(false)
	if !isOpen() {
		t.Fatal("closed after idling a second less than keepOpen")
	}
	age(2 * time.Second)
	c.closeIdle(false)
	if isOpen() {
		t.Fatal("open after idling longer than keepOpen")
	}
	gauge(0, "idle for longer than keepOpen")
	// Open again, idle again; then the base says the file is gone: closed at once.
	h, err := get(t, c, "/fd")
	if err != nil {
		t.Fatal(err)
	}
	h.Release()
	if !isOpen() {
		t.Fatal("reopened file not kept open for a while")
	}
	gauge(1, "reopened, idle")
	b.mu.Lock()
	b.status["/fd"] = 410
	b.mu.Unlock()
	if _, err := get(t, c, "/fd"); err == nil {
		t.Fatal("a file gone on the base was served")
	}
	if isOpen() {
		t.Fatal("the descriptor of a purged file stays open")
	}
	gauge(0, "purged while idle")
	// The file is back; this time it is purged while a reader holds it: the descriptor
	// closes when that reader leaves, not keepOpen later.
	b.mu.Lock()
	delete(b.status, "/fd")
	b.mu.Unlock()
	mustGet(t, c, "/fd", data)
	e, ok = c.index.Get(c.key("/fd"))
	if !ok {
		t.Fatal("/fd not indexed again")
	}
	h, err = get(t, c, "/fd")
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.status["/fd"] = 410
	b.mu.Unlock()
	if _, err := get(t, c, "/fd"); err == nil {
		t.Fatal("a file gone on the base was served")
	}
	if !isOpen() {
		t.Fatal("closed under its reader")
	}
	if got, _ := readAll(t, h); len(got) != len(data) { // readAll releases h
		t.Fatalf("reader of a purged file got %d bytes", len(got))
	}
	if isOpen() {
		t.Fatal("the descriptor of a purged file stays open after its last reader left")
	}
	gauge(0, "purged while read, then released")
}
