package cache

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func openCache(t *testing.T, b *testBase, dir string, mut func(*Config)) *Cache {
	t.Helper()
	cfg := Config{Dir: dir, MaxBytes: 1 << 30, Base: b.URL, UserAgent: "offload/test", Timeout: 5 * time.Second, Logf: quietAfter(t)}
	if mut != nil {
		mut(&cfg)
	}
	c, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// quietAfter is t.Logf until t's cleanups begin, and silent after: a fill that goes on
// after its test must not log into a test that has ended.
func quietAfter(t testing.TB) func(string, ...any) {
	var over atomic.Bool
	t.Cleanup(func() { over.Store(true) })
	return func(f string, args ...any) {
		if !over.Load() {
			t.Logf(f, args...)
		}
	}
}

// readAll reads a handle's whole body the way the server does: from the file at
// FileOffset (cache entries and local docroot files alike) as bytes land, waiting (no
// polling) when it has caught up with the fill.
func readAll(t *testing.T, h *Handle) ([]byte, error) {
	t.Helper()
	defer h.Release()
	if h.Body != nil {
		return h.Body, nil
	}
	out := make([]byte, 0, h.Meta.Size)
	for int64(len(out)) < h.Meta.Size {
		avail, err := h.Available()
		if err != nil {
			return out, err
		}
		if avail > int64(len(out)) {
			buf := make([]byte, avail-int64(len(out)))
			if _, err := h.File().ReadAt(buf, h.FileOffset(int64(len(out)))); err != nil {
				return out, err
			}
			out = append(out, buf...)
			continue
		}
		woke := make(chan struct{})
		if h.Wait(avail, func() { close(woke) }) {
			select {
			case <-woke:
			case <-time.After(10 * time.Second):
				t.Fatal("reader never woken")
			}
		}
	}
	return out, nil
}

func get(t *testing.T, c *Cache, path string) (*Handle, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Get(ctx, path)
}

func mustGet(t *testing.T, c *Cache, path string, want []byte) *Handle {
	t.Helper()
	h, err := get(t, c, path)
	if err != nil {
		t.Fatalf("Get %s: %v", path, err)
	}
	meta := h.Meta
	got, err := readAll(t, h)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes, want %d (equal prefix: %v)", path, len(got), len(want), bytes.HasPrefix(want, got))
	}
	h.Meta = meta
	return h
}

// coordination reports whether p is one of the files processes coordinate through
// (lockfile.go), not a data file.
func coordination(p string) bool {
	return strings.HasSuffix(p, lockSuffix) || strings.HasSuffix(p, curSuffix) || strings.HasSuffix(p, tmpSuffix)
}

func dataFiles(t *testing.T, dir string) (files []string, total int64) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !coordination(p) {
			files = append(files, p)
			if st, err := os.Stat(p); err == nil {
				total += st.Size() - HeaderSize
			}
		}
		return nil
	})
	return files, total
}

func TestColdThenWarm(t *testing.T) {
	b := newTestBase(t)
	data := content("a", 3<<20+17, 1)
	b.put("/pub/a.iso", data)
	c := openCache(t, b, t.TempDir(), nil)

	h := mustGet(t, c, "/pub/a.iso", data)
	if h.Hit {
		t.Error("cold request reported a hit")
	}
	h = mustGet(t, c, "/pub/a.iso", data)
	if !h.Hit {
		t.Error("warm request missed")
	}
	if heads, gets := b.counts("/pub/a.iso"); heads != 2 || gets != 1 {
		t.Errorf("base saw %d HEADs and %d GETs, want 2 and 1", heads, gets)
	}
	if h.Meta.ContentType != "application/octet-stream" || h.Meta.ETag == "" || h.Meta.LastModified == "" {
		t.Errorf("meta not kept: %+v", h.Meta)
	}
}

func TestEscapedPathReachesBase(t *testing.T) {
	b := newTestBase(t)
	raw := "/files/a%20b+%C3%A9.bin"
	data := content(raw, 10000, 1)
	b.put(raw, data)
	c := openCache(t, b, t.TempDir(), nil)
	h, err := c.Get(context.Background(), "/files/a b+é.bin")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := readAll(t, h); !bytes.Equal(got, data) {
		t.Fatal("bytes differ")
	}
}

func TestRevalidatePeriod(t *testing.T) {
	b := newTestBase(t)
	data := content("r", 100<<10, 1)
	b.put("/r", data)
	c := openCache(t, b, t.TempDir(), func(c *Config) { c.Revalidate = time.Hour })
	if c.Lookup("/r") != nil {
		t.Fatal("Lookup found a file never fetched")
	}
	mustGet(t, c, "/r", data)
	h := c.Lookup("/r")
	if h == nil {
		t.Fatal("Lookup missed a freshly checked entry")
	}
	h.Release()
	mustGet(t, c, "/r", data)
	if heads, gets := b.counts("/r"); heads != 1 || gets != 1 {
		t.Errorf("base saw %d HEADs and %d GETs, want 1 and 1", heads, gets)
	}
}

func TestChangedFileRefills(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	v1, v2 := content("c", 200<<10, 1), content("c", 300<<10, 2)
	b.put("/c", v1)
	c := openCache(t, b, dir, nil)
	mustGet(t, c, "/c", v1)
	b.put("/c", v2)
	mustGet(t, c, "/c", v2)
	mustGet(t, c, "/c", v2)
	if _, gets := b.counts("/c"); gets != 2 {
		t.Errorf("base saw %d GETs, want 2", gets)
	}
	if files, _ := dataFiles(t, dir); len(files) != 1 {
		t.Errorf("old version left on disk: %v", files)
	}
}

func TestGoneOnBasePurges(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("g", 50<<10, 1)
	b.put("/g", data)
	c := openCache(t, b, dir, nil)
	mustGet(t, c, "/g", data)
	b.del("/g")
	_, err := get(t, c, "/g")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 404 {
		t.Fatalf("got %v, want a 404 Error", err)
	}
	if files, _ := dataFiles(t, dir); len(files) != 0 {
		t.Errorf("purged file still on disk: %v", files)
	}
}

func TestBaseAnswers(t *testing.T) {
	b := newTestBase(t)
	b.put("/auth", []byte("x"))
	b.put("/moved", []byte("x"))
	b.put("/dyn", []byte("x"))
	b.status["/auth"] = 401
	b.status["/moved"] = 302
	c := openCache(t, b, t.TempDir(), nil)
	tests := []struct {
		path   string
		status int
		reason string
	}{
		{"/auth", 403, "protected"},
		{"/moved", 302, "302"},
		{"/missing", 404, "404"},
	}
	for _, tc := range tests {
		_, err := get(t, c, tc.path)
		var ce *Error
		if !errors.As(err, &ce) || ce.Status != tc.status || !strings.Contains(ce.Reason, tc.reason) {
			t.Errorf("%s: got %v, want %d %s", tc.path, err, tc.status, tc.reason)
		}
		if tc.status == 302 && ce != nil && ce.Location != "http://elsewhere.example/x" {
			t.Errorf("redirect location %q", ce.Location)
		}
	}
	// No validator at all: dynamic content.
	b.noETag = true
	b.mu.Lock()
	b.mtime["/dyn"] = time.Unix(0, 0) // ServeContent omits Last-Modified for the epoch
	b.mu.Unlock()
	_, err := get(t, c, "/dyn")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 403 || !strings.Contains(ce.Reason, "dynamic") {
		t.Errorf("no validator: got %v", err)
	}
}

func TestConcurrentColdReadersOneGET(t *testing.T) {
	b := newTestBase(t)
	data := content("hot", 2<<20, 1)
	b.put("/hot", data)
	b.delay = 200 * time.Millisecond
	c := openCache(t, b, t.TempDir(), nil)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := get(t, c, "/hot")
			if err != nil {
				errs <- err
				return
			}
			got, err := readAll(t, h)
			if err != nil || !bytes.Equal(got, data) {
				errs <- errors.New("bytes differ")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, gets := b.counts("/hot"); gets != 1 {
		t.Errorf("base saw %d GETs for 100 cold readers, want 1", gets)
	}
}

func TestReaderWaitsForRangeNotLanded(t *testing.T) {
	b := newTestBase(t)
	data := content("big", 4<<20, 1)
	b.put("/big", data)
	gate := make(chan struct{})
	b.gate["/big"] = gate
	c := openCache(t, b, t.TempDir(), nil)
	got := make(chan *Handle, 1)
	go func() {
		h, err := get(t, c, "/big")
		if err != nil {
			t.Error(err)
		}
		got <- h
	}()
	// The fill has not started its body: Get waits for the GET's head, not for bytes.
	select {
	case <-got:
		t.Fatal("Get returned before the base answered the GET")
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	h := <-got
	defer h.Release()
	const want = 3 << 20 // a range near the end
	for {
		avail, err := h.Available()
		if err != nil {
			t.Fatal(err)
		}
		if avail >= want+1000 {
			break
		}
		woke := make(chan struct{})
		if h.Wait(avail, func() { close(woke) }) {
			<-woke
		}
	}
	buf := make([]byte, 1000)
	h.File().ReadAt(buf, HeaderSize+want)
	if !bytes.Equal(buf, data[want:want+1000]) {
		t.Fatal("range bytes differ")
	}
	waitComplete(t, h) // committed before the test's folder is removed
}

func TestBaseDiesMidFill(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("cut", 2<<20, 1)
	b.put("/cut", data)
	b.cut["/cut"] = 1 << 20
	c := openCache(t, b, dir, nil)
	h, err := get(t, c, "/cut")
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, h)
	if err == nil {
		t.Fatalf("read %d bytes of a cut fill without an error", len(got))
	}
	if !bytes.Equal(got, data[:len(got)]) {
		t.Error("bytes before the cut differ")
	}
	time.Sleep(50 * time.Millisecond)
	if files, _ := dataFiles(t, dir); len(files) != 0 {
		t.Errorf("cut fill left files: %v", files)
	}
	// The next request fills again, completely.
	delete(b.cut, "/cut")
	mustGet(t, c, "/cut", data)
}

func TestBaseDown(t *testing.T) {
	b := newTestBase(t)
	data := content("s", 70<<10, 1)
	b.put("/s", data)
	c := openCache(t, b, t.TempDir(), nil)
	mustGet(t, c, "/s", data)
	b.srv.Close()
	h, err := get(t, c, "/s")
	if err != nil {
		t.Fatalf("base down with a cached copy: %v", err)
	}
	if !h.Stale {
		t.Error("stale copy not marked stale")
	}
	h.Release()
	_, err = get(t, c, "/other")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 502 {
		t.Fatalf("base down, nothing cached: got %v, want 502", err)
	}
	if c.Stats.Stale.Load() != 1 {
		t.Errorf("stale count %d", c.Stats.Stale.Load())
	}
}

func TestBaseTimesOut(t *testing.T) {
	b := newTestBase(t)
	b.put("/slow", content("slow", 1000, 1))
	// A base that accepts and never answers.
	c := openCache(t, b, t.TempDir(), func(c *Config) { c.Timeout = 300 * time.Millisecond })
	b.mu.Lock()
	b.gate["/slow"] = make(chan struct{}) // GET never gets its body
	b.mu.Unlock()
	_, err := get(t, c, "/slow")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 504 {
		t.Fatalf("got %v, want 504", err)
	}
}

func TestRestartRecovery(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	a, z := content("a", 300<<10, 1), content("z", 10<<10, 1)
	b.put("/a", a)
	b.put("/z", z)
	c := openCache(t, b, dir, nil)
	mustGet(t, c, "/a", a)
	mustGet(t, c, "/z", z)
	c.Close()
	files, _ := dataFiles(t, dir)
	// Leftovers of a crash: an unfinished fill, a torn entry, a stray file.
	leftover := files[0] + "0.part"
	os.WriteFile(leftover, []byte("partial"), 0o644)
	torn := filepath.Join(filepath.Dir(files[0]), keyName(b.URL[7:]+"/t")+"-1")
	hdr, _ := encodeHeader(&Meta{Key: b.URL[7:] + "/t", Size: 1000, ETag: `"x"`})
	os.WriteFile(torn, append(hdr, make([]byte, 10)...), 0o644)
	stray := filepath.Join(dir, "stray")
	os.WriteFile(stray, []byte("?"), 0o644)

	c2 := openCache(t, b, dir, nil)
	for _, p := range []string{leftover, torn, stray} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s survived the scan", p)
		}
	}
	mustGet(t, c2, "/a", a)
	mustGet(t, c2, "/z", z)
	if _, gets := b.counts("/a"); gets != 1 {
		t.Errorf("entry not recovered: %d GETs", gets)
	}
}

func TestLargerThanBoundStreamsThrough(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("huge", 3<<20, 1)
	b.put("/huge", data)
	c := openCache(t, b, dir, func(c *Config) { c.MaxBytes = 1 << 20 })
	mustGet(t, c, "/huge", data)
	mustGet(t, c, "/huge", data)
	if files, _ := dataFiles(t, dir); len(files) != 0 {
		t.Errorf("file over the bound kept: %v", files)
	}
	if _, gets := b.counts("/huge"); gets != 2 {
		t.Errorf("%d GETs, want 2 (not cached)", gets)
	}
}

// TestBoundUnderChurn: a 50 MiB cache, 2,000 files of 0–1 MiB asked for in a skewed
// order; the folder never holds more than the bound plus one fill.
func TestBoundUnderChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("writes about 1 GiB; skipped with -short")
	}
	b := newTestBase(t)
	dir := t.TempDir()
	const bound = 50 << 20
	rng := rand.New(rand.NewPCG(7, 7))
	const n = 2000
	names := make([]string, n)
	for i := range n {
		names[i] = "/f/" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + "-" + itoa(i)
		b.put(names[i], content(names[i], rng.IntN(1<<20), 1))
	}
	c := openCache(t, b, dir, func(c *Config) { c.MaxBytes = bound })
	zipf := rand.NewZipf(rand.New(rand.NewPCG(1, 1)), 1.1, 1, n-1)
	for i := range 3000 {
		var name string
		if i < n {
			name = names[(i*7919)%n] // every file at least once
		} else {
			name = names[zipf.Uint64()]
		}
		b.mu.Lock()
		want := b.files[name]
		b.mu.Unlock()
		mustGet(t, c, name, want)
		if i%50 == 0 {
			if _, total := dataFiles(t, dir); total > bound+1<<20 {
				t.Fatalf("after %d requests the folder holds %d bytes, bound %d", i, total, bound)
			}
		}
	}
	if c.Stats.Evictions.Load() == 0 {
		t.Error("no evictions under churn")
	}
	if c.Stats.Hits.Load() == 0 {
		t.Error("no hits for the hot files")
	}
	t.Logf("hits %d misses %d evictions %d", c.Stats.Hits.Load(), c.Stats.Misses.Load(), c.Stats.Evictions.Load())
}

func itoa(i int) string {
	return strings.TrimSpace(strings.Replace(string(rune('0'+i/1000%10))+string(rune('0'+i/100%10))+string(rune('0'+i/10%10))+string(rune('0'+i%10)), " ", "", -1))
}

// TestDiskFull fills into a 2 MiB tmpfs: the fill fails, nothing torn is left, and the
// cache keeps working for files that fit.
func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (scripts/test runs as root in CI)")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("needs root allowed to mount (CAP_SYS_ADMIN; a container may deny it) for a small tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		// Descriptors are closed on the cache's closer goroutine, a moment after Close:
		// until then the file system is busy.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if exec.Command("umount", dir).Run() == nil || time.Now().After(deadline) {
				return
			}
		}
	})
	b := newTestBase(t)
	big, small := content("big", 3<<20, 1), content("small", 100<<10, 1)
	b.put("/big", big)
	b.put("/small", small)
	c := openCache(t, b, dir, func(c *Config) { c.MaxBytes = 100 << 20 })
	h, err := get(t, c, "/big")
	if err == nil {
		_, err = readAll(t, h)
	}
	if err == nil {
		t.Fatal("a 3 MiB fill into 2 MiB succeeded")
	}
	time.Sleep(50 * time.Millisecond)
	if files, _ := dataFiles(t, dir); len(files) != 0 {
		t.Errorf("failed fill left %v", files)
	}
	mustGet(t, c, "/small", small)
}

// TestChangedBetweenHeadAndGet: the base changes the file after the HEAD; the GET's
// validators differ, so the fill asks again and caches only the new version.
func TestChangedBetweenHeadAndGet(t *testing.T) {
	b := newTestBase(t)
	v1, v2 := content("x", 500<<10, 1), content("x", 600<<10, 2)
	b.put("/x", v1)
	gate := make(chan struct{})
	b.gate["/x"] = gate
	c := openCache(t, b, t.TempDir(), nil)
	type res struct {
		h   *Handle
		err error
	}
	done := make(chan res, 1)
	go func() {
		h, err := get(t, c, "/x")
		done <- res{h, err}
	}()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if heads, gets := b.counts("/x"); heads == 1 && gets == 1 {
			break // HEAD answered for v1; the GET waits at the gate
		}
		if time.Now().After(deadline) {
			t.Fatal("fill never reached the base")
		}
	}
	b.put("/x", v2)
	b.mu.Lock()
	delete(b.gate, "/x")
	b.mu.Unlock()
	close(gate)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	got, err := readAll(t, r.h)
	if err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("got %d bytes (err %v), want the new version's %d", len(got), err, len(v2))
	}
	if heads, gets := b.counts("/x"); heads != 2 || gets != 2 {
		t.Errorf("base saw %d HEADs and %d GETs, want 2 and 2", heads, gets)
	}
	mustGet(t, c, "/x", v2)
}

// TestEvictedWhileRead: a reader holding a handle keeps reading the whole body after the
// entry is evicted and its file removed. The eviction is made certain: the bound holds
// /first or /other but not both, and /other is asked for far more often than /first
// before it is filled, so TinyLFU admits it and evicts /first (its only candidate).
func TestEvictedWhileRead(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	first, other := content("first", 3<<20, 1), content("other", 2<<20, 1)
	b.put("/first", first)
	b.put("/other", other)
	c := openCache(t, b, dir, func(c *Config) { c.MaxBytes = 4 << 20 })
	mustGet(t, c, "/first", first)
	h, err := get(t, c, "/first") // a hit: the committed file
	if err != nil || !h.Hit || h.File() == nil {
		t.Fatalf("hit: %v %+v", err, h)
	}
	path := h.File().Name()
	// The policy counts accesses in batches of 64 that it may drop when busy: give it
	// many batches, with time to take them in. Its counters stop at 15; /first has a few.
	for i := range 1024 {
		c.index.Get(c.key("/other"))
		if i%64 == 63 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(20 * time.Millisecond)
	mustGet(t, c, "/other", other)
	if n := c.Stats.Evictions.Load(); n != 1 {
		t.Fatalf("%d evictions (%d rejected), want /first evicted", n, c.Stats.Rejected.Load())
	}
	if _, ok := c.index.Get(c.key("/first")); ok {
		t.Fatal("/first still indexed after its eviction")
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("evicted data file %s: %v, want it removed", path, err)
	}
	got, err := readAll(t, h)
	if err != nil || !bytes.Equal(got, first) {
		t.Fatalf("read after eviction: %v, %d bytes", err, len(got))
	}
	if _, total := dataFiles(t, dir); total != int64(len(other)) {
		t.Errorf("folder holds %d bytes, want only /other's %d", total, len(other))
	}
	// The next request for /first fills it again.
	mustGet(t, c, "/first", first)
	if _, gets := b.counts("/first"); gets != 2 {
		t.Errorf("base saw %d GETs for /first, want 2", gets)
	}
}

// TestWindowForFarRange: a reader that wants the end of a cold file being filled slowly
// gets a window fetched with Range instead of waiting for the fill; the fill goes on and
// commits the whole file.
func TestWindowForFarRange(t *testing.T) {
	b := newTestBase(t)
	data := content("slow", 24<<20, 1)
	b.put("/slow", data)
	b.throttle = 5 * time.Millisecond // the whole file takes about 2 s
	c := openCache(t, b, t.TempDir(), nil)
	from := int64(20 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h, err := c.GetFrom(ctx, "/slow", from, 0)
	if err != nil {
		t.Fatal(err)
	}
	if h.Base() != from || h.Meta.Size != int64(len(data)) {
		t.Fatalf("base %d size %d, want a window from %d of %d", h.Base(), h.Meta.Size, from, len(data))
	}
	// Read the window as the server does: offsets are body offsets.
	var got []byte
	for off := from; off < h.Meta.Size; {
		avail, err := h.Available()
		if err != nil {
			t.Fatal(err)
		}
		if avail > off {
			buf := make([]byte, avail-off)
			h.File().ReadAt(buf, h.FileOffset(off))
			got = append(got, buf...)
			off = avail
			continue
		}
		woke := make(chan struct{})
		if h.Wait(avail, func() { close(woke) }) {
			<-woke
		}
	}
	h.Release()
	if !bytes.Equal(got, data[from:]) {
		t.Fatalf("window bytes differ (%d bytes)", len(got))
	}
	b.mu.Lock()
	ranged := b.ranged["/slow"]
	b.mu.Unlock()
	if ranged != 1 {
		t.Errorf("%d ranged GETs, want 1", ranged)
	}
	// A near range joins the fill instead; the fill completes and is cached.
	b.throttle = 0
	mustGet(t, c, "/slow", data)
	if _, gets := b.counts("/slow"); gets != 2 {
		t.Errorf("%d GETs in all, want 2 (the fill and the window)", gets)
	}
}

// TestFillCommittedDuringHEAD: a request that found nothing in the cache and whose HEAD
// is still out when another request's fill of the same version commits is served
// from that entry. Before, it found no fill in progress and started a second one: a
// second GET of the whole file (and, with a third request, a third, whose commit
// dropped the second's entry).
func TestFillCommittedDuringHEAD(t *testing.T) {
	b := newTestBase(t)
	data := content("f", 3<<20, 1)
	b.put("/f.bin", data)
	c := openCache(t, b, t.TempDir(), nil)
	gate := make(chan struct{})
	second := make(chan struct{})
	release := make(chan struct{})
	b.mu.Lock()
	b.gate["/f.bin"] = gate // the first fill's GET waits
	b.headHook = func(path string, n int) {
		if n == 2 { // the second request's HEAD: answered once the first fill committed
			close(second)
			<-release
		}
	}
	b.mu.Unlock()
	results := make(chan []byte, 2)
	fetch := func() {
		h, err := get(t, c, "/f.bin")
		if err != nil {
			t.Errorf("Get: %v", err)
			results <- nil
			return
		}
		got, _ := readAll(t, h)
		results <- got
	}
	go fetch()
	deadline := time.Now().Add(5 * time.Second)
	for c.fillsInProgress() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the first fill never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	go fetch() // finds nothing cached, and its HEAD waits
	<-second
	close(gate)
	for c.Stats.Fills.Load() != 1 || c.fillsInProgress() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first fill never ended")
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	for range 2 {
		if got := <-results; !bytes.Equal(got, data) {
			t.Fatalf("a request got %d bytes, want %d", len(got), len(data))
		}
	}
	if heads, gets := b.counts("/f.bin"); heads != 2 || gets != 1 {
		t.Errorf("base saw %d HEADs and %d GETs, want 2 and 1", heads, gets)
	}
}

// fillsInProgress is the number of fills in c.fills.
func (c *Cache) fillsInProgress() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.fills)
}
