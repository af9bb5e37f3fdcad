package cache

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of the second variant of cases the main tests cover: weak and strong ETags, 410
// beside 404, the sizes exactly at a bound and one byte past it, and the commit's syncs.

func TestSameVersion(t *testing.T) {
	const lm1, lm2 = "Wed, 01 May 2024 12:00:00 GMT", "Wed, 01 May 2024 12:00:01 GMT"
	tests := []struct {
		name string
		a, b Meta
		want bool
	}{
		{"strong equal", Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, true},
		{"strong equal, other date", Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `"x"`, LastModified: lm2}, true},
		{"strong equal, no dates", Meta{Size: 10, ETag: `"x"`}, Meta{Size: 10, ETag: `"x"`}, true},
		{"strong differs, same date", Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `"y"`, LastModified: lm1}, false},
		{"strong equal, other size", Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, Meta{Size: 11, ETag: `"x"`, LastModified: lm1}, false},
		{"weak equal, same date", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, true},
		{"weak equal, other date", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `W/"x"`, LastModified: lm2}, false},
		{"weak equal, no dates", Meta{Size: 10, ETag: `W/"x"`}, Meta{Size: 10, ETag: `W/"x"`}, false},
		{"weak equal, one date", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `W/"x"`}, false},
		{"weak equal, other size", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 11, ETag: `W/"x"`, LastModified: lm1}, false},
		{"weak differs, same date", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `W/"y"`, LastModified: lm1}, false},
		// Apache's ETag of a file changed within the last second is weak, then strong.
		{"weak against strong, same date", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, true},
		{"weak against strong, other date", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `"x"`, LastModified: lm2}, false},
		{"weak against strong, no dates", Meta{Size: 10, ETag: `W/"x"`}, Meta{Size: 10, ETag: `"x"`}, false},
		{"weak against strong, other tag", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 10, ETag: `"y"`, LastModified: lm1}, false},
		{"weak against strong, other size", Meta{Size: 10, ETag: `W/"x"`, LastModified: lm1}, Meta{Size: 11, ETag: `"x"`, LastModified: lm1}, false},
		{"tag that looks weak inside", Meta{Size: 10, ETag: `"W/x"`, LastModified: lm1}, Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, false},
		{"ETag lost, same date", Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, Meta{Size: 10, LastModified: lm1}, false},
		{"ETag gained, same date", Meta{Size: 10, LastModified: lm1}, Meta{Size: 10, ETag: `"x"`, LastModified: lm1}, false},
		{"dates only, equal", Meta{Size: 10, LastModified: lm1}, Meta{Size: 10, LastModified: lm1}, true},
		{"dates only, differ", Meta{Size: 10, LastModified: lm1}, Meta{Size: 10, LastModified: lm2}, false},
		{"dates only, other size", Meta{Size: 10, LastModified: lm1}, Meta{Size: 11, LastModified: lm1}, false},
		{"nothing to compare", Meta{Size: 10}, Meta{Size: 10}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := SameVersion(&tc.a, &tc.b); got != tc.want {
				t.Errorf("SameVersion(%+v, %+v) = %v, want %v", tc.a, tc.b, got, tc.want)
			}
			if got := SameVersion(&tc.b, &tc.a); got != tc.want {
				t.Errorf("SameVersion(%+v, %+v) = %v, want %v (swapped)", tc.b, tc.a, got, tc.want)
			}
		})
	}
}

// validatorBase is a base whose validators the test sets by hand: an ETag kept across
// versions (as a base with weak ETags may do) and a Last-Modified of the test's choice.
// It counts requests in the testBase it embeds.
type validatorBase struct {
	*testBase
	mu      sync.Mutex
	etag    map[string]string
	lastMod map[string]string
	ifRange []string      // If-Range headers of ranged GETs, in order
	hold    chan struct{} // when set, whole-file GETs wait for it to close
}

func newValidatorBase(t *testing.T) *validatorBase {
	t.Helper()
	tb := &testBase{t: t, files: map[string][]byte{}, mtime: map[string]time.Time{}, heads: map[string]int{},
		gets: map[string]int{}, cut: map[string]int{}, status: map[string]int{}, gate: map[string]chan struct{}{},
		ranged: map[string]int{}}
	vb := &validatorBase{testBase: tb, etag: map[string]string{}, lastMod: map[string]string{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tb.ln, tb.URL = ln, "http://"+ln.Addr().String()
	tb.srv = &http.Server{Handler: http.HandlerFunc(vb.serve)}
	go tb.srv.Serve(ln)
	t.Cleanup(func() { tb.srv.Close() })
	return vb
}

func (vb *validatorBase) set(path string, data []byte, etag, lastMod string) {
	vb.put(path, data)
	vb.mu.Lock()
	vb.etag[path], vb.lastMod[path] = etag, lastMod
	vb.mu.Unlock()
}

func (vb *validatorBase) serve(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	vb.testBase.mu.Lock()
	data, ok := vb.files[path]
	status := vb.status[path]
	if r.Method == http.MethodHead {
		vb.heads[path]++
	} else {
		vb.gets[path]++
		if r.Header.Get("Range") != "" {
			vb.ranged[path]++
		}
	}
	vb.testBase.mu.Unlock()
	vb.mu.Lock()
	etag, lastMod, hold := vb.etag[path], vb.lastMod[path], vb.hold
	if r.Header.Get("Range") != "" {
		vb.ifRange = append(vb.ifRange, r.Header.Get("If-Range"))
	}
	vb.mu.Unlock()
	if hold != nil && r.Method == http.MethodGet && r.Header.Get("Range") == "" {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	if status != 0 {
		w.WriteHeader(status)
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/octet-stream")
	mod, _ := http.ParseTime(lastMod)
	http.ServeContent(w, r, "", mod, bytes.NewReader(data))
}

// TestWeakETagChangeRefills: a file with a weak ETag changes on the base, keeping its
// size and its ETag but not its Last-Modified: it is a new version and is fetched again.
// With the same Last-Modified too, it is the same version and served from the cache.
func TestWeakETagChangeRefills(t *testing.T) {
	const lm1, lm2 = "Wed, 01 May 2024 12:00:00 GMT", "Wed, 01 May 2024 12:00:05 GMT"
	for _, tc := range []struct {
		name      string
		etag      string
		lastMod2  string
		wantGets  int
		wantFresh bool // the second version's bytes are served
	}{
		{"weak, new date", `W/"same"`, lm2, 2, true},
		{"weak, same date", `W/"same"`, lm1, 1, false},
		{"strong, new date", `"same"`, lm2, 1, false}, // a strong ETag alone decides
	} {
		t.Run(tc.name, func(t *testing.T) {
			vb := newValidatorBase(t)
			dir := t.TempDir()
			v1, v2 := content("w", 100<<10, 1), content("w", 100<<10, 2)
			vb.set("/w", v1, tc.etag, lm1)
			c := openCache(t, vb.testBase, dir, nil)
			mustGet(t, c, "/w", v1)
			vb.set("/w", v2, tc.etag, tc.lastMod2)
			want := v1
			if tc.wantFresh {
				want = v2
			}
			mustGet(t, c, "/w", want)
			mustGet(t, c, "/w", want)
			if _, gets := vb.counts("/w"); gets != tc.wantGets {
				t.Errorf("base saw %d GETs, want %d", gets, tc.wantGets)
			}
		})
	}
}

// TestGoneOnBasePurgesBoth: 410 drops the cached copy as 404 does; other refusals (403)
// are relayed but keep it, and a 5xx is the base being down: the copy is served stale.
func TestGoneOnBasePurgesBoth(t *testing.T) {
	for _, tc := range []struct {
		status     int
		wantStatus int  // what Get reports; 0: a stale copy
		purged     bool // the data file is gone
	}{
		{404, 404, true},
		{410, 410, true},
		{403, 403, false},
		{500, 0, false},
		{503, 0, false},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			b := newTestBase(t)
			dir := t.TempDir()
			data := content("g", 50<<10, 1)
			b.put("/g", data)
			c := openCache(t, b, dir, nil)
			mustGet(t, c, "/g", data)
			b.mu.Lock()
			b.status["/g"] = tc.status
			b.mu.Unlock()
			h, err := get(t, c, "/g")
			if tc.wantStatus == 0 {
				if err != nil || !h.Stale {
					t.Fatalf("got %v, want the stale copy", err)
				}
				h.Release()
			} else {
				var ce *Error
				if !errors.As(err, &ce) || ce.Status != tc.wantStatus {
					t.Fatalf("got %v, want a %d Error", err, tc.wantStatus)
				}
			}
			files, _ := dataFiles(t, dir)
			if purged := len(files) == 0; purged != tc.purged {
				t.Errorf("data files %v: purged %v, want %v", files, purged, tc.purged)
			}
			_, inIndex := c.index.Get(c.key("/g"))
			if inIndex == tc.purged {
				t.Errorf("in the index: %v, want %v", inIndex, !tc.purged)
			}
			// The file comes back on the base: fetched again only when it was purged.
			b.mu.Lock()
			delete(b.status, "/g")
			b.mu.Unlock()
			mustGet(t, c, "/g", data)
			wantGets := 1
			if tc.purged {
				wantGets = 2
			}
			if _, gets := b.counts("/g"); gets != wantGets {
				t.Errorf("base saw %d GETs, want %d", gets, wantGets)
			}
		})
	}
}

// TestGoneOnBaseStatPurges: a HEAD request (Stat) that learns the file is gone drops the
// copy too.
func TestGoneOnBaseStatPurges(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("s", 50<<10, 1)
	b.put("/s", data)
	c := openCache(t, b, dir, nil)
	mustGet(t, c, "/s", data)
	b.mu.Lock()
	b.status["/s"] = 410
	b.mu.Unlock()
	_, err := c.Stat(context.Background(), "/s")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 410 {
		t.Fatalf("Stat: %v, want 410", err)
	}
	if files, _ := dataFiles(t, dir); len(files) != 0 {
		t.Errorf("gone file still on disk: %v", files)
	}
}

// TestStatTwins: Stat on a cold file asks the base and fills nothing; on a cached file it
// is a hit without a body.
func TestStatTwins(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	data := content("st", 200<<10, 1)
	b.put("/st", data)
	c := openCache(t, b, dir, nil)
	h, err := c.Stat(context.Background(), "/st")
	if err != nil || h.Hit || h.Meta.Size != int64(len(data)) || h.File() != nil || h.Body != nil {
		t.Fatalf("cold Stat: %v %+v", err, h)
	}
	if _, gets := b.counts("/st"); gets != 0 {
		t.Fatalf("cold Stat sent %d GETs", gets)
	}
	if files, _ := dataFiles(t, dir); len(files) != 0 {
		t.Fatalf("cold Stat filled %v", files)
	}
	mustGet(t, c, "/st", data)
	h, err = c.Stat(context.Background(), "/st")
	if err != nil || !h.Hit || h.File() != nil || h.Body != nil {
		t.Fatalf("warm Stat: %v %+v", err, h)
	}
	h.Release()
}

// TestSizeBounds: a body exactly SmallFile bytes is kept in memory, one byte more is read
// from its file; a body exactly MaxBytes is cached, one byte more streams through.
func TestSizeBounds(t *testing.T) {
	const small = 8 << 10
	t.Run("memory", func(t *testing.T) {
		b := newTestBase(t)
		at, over := content("at", small, 1), content("over", small+1, 1)
		b.put("/at", at)
		b.put("/over", over)
		c := openCache(t, b, t.TempDir(), func(c *Config) { c.SmallFile = small; c.Revalidate = time.Hour })
		for _, tc := range []struct {
			path   string
			data   []byte
			inMem  bool
			lookup bool
		}{
			{"/at", at, true, true},
			{"/over", over, false, true},
		} {
			mustGet(t, c, tc.path, tc.data) // the fill
			c.mem.Wait()
			h, err := get(t, c, tc.path)
			if err != nil || !h.Hit {
				t.Fatalf("%s: %v", tc.path, err)
			}
			if inMem := h.Body != nil; inMem != tc.inMem || (tc.inMem && h.File() != nil) {
				t.Errorf("%s (%d bytes): body in memory %v, file %v; want in memory %v", tc.path, len(tc.data), inMem, h.File() != nil, tc.inMem)
			}
			if got, _ := readAll(t, h); !bytes.Equal(got, tc.data) {
				t.Errorf("%s: bytes differ", tc.path)
			}
			h = c.Lookup(tc.path)
			if h == nil {
				t.Fatalf("%s: Lookup missed", tc.path)
			}
			if inMem := h.Body != nil; inMem != tc.inMem {
				t.Errorf("%s: Lookup body in memory %v, want %v", tc.path, inMem, tc.inMem)
			}
			if got, _ := readAll(t, h); !bytes.Equal(got, tc.data) {
				t.Errorf("%s: Lookup bytes differ", tc.path)
			}
		}
	})
	t.Run("disk", func(t *testing.T) {
		const bound = 1 << 20
		for _, tc := range []struct {
			name   string
			size   int
			cached bool
		}{
			{"at the bound", bound, true},
			{"one over", bound + 1, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				b := newTestBase(t)
				dir := t.TempDir()
				data := content("d", tc.size, 1)
				b.put("/d", data)
				c := openCache(t, b, dir, func(c *Config) { c.MaxBytes = bound })
				mustGet(t, c, "/d", data)
				mustGet(t, c, "/d", data)
				files, _ := dataFiles(t, dir)
				_, gets := b.counts("/d")
				if cached := len(files) == 1 && gets == 1; cached != tc.cached {
					t.Errorf("%d bytes under a %d-byte bound: %d files, %d GETs; want cached %v", tc.size, bound, len(files), gets, tc.cached)
				}
			})
		}
	})
}

// TestRevalidateExpires: within the period a checked entry is trusted without a HEAD;
// once it is over, Lookup misses and Get asks the base again.
func TestRevalidateExpires(t *testing.T) {
	b := newTestBase(t)
	data := content("e", 100<<10, 1)
	b.put("/e", data)
	const period = 200 * time.Millisecond
	c := openCache(t, b, t.TempDir(), func(c *Config) { c.Revalidate = period })
	mustGet(t, c, "/e", data)
	if h := c.Lookup("/e"); h == nil {
		t.Fatal("Lookup missed within the period")
	} else {
		h.Release()
	}
	time.Sleep(period + 100*time.Millisecond)
	if h := c.Lookup("/e"); h != nil {
		h.Release()
		t.Fatal("Lookup trusted an entry past its period")
	}
	mustGet(t, c, "/e", data)
	if heads, gets := b.counts("/e"); heads != 2 || gets != 1 {
		t.Errorf("base saw %d HEADs and %d GETs, want 2 and 1", heads, gets)
	}
}

// TestCommitSyncsBeforeRename watches the commit's syncs through the fsync seam: the data
// file is synced while it is still the .part file (before the rename), and the folder
// after the rename, when it holds the final name.
func TestCommitSyncsBeforeRename(t *testing.T) {
	b := newTestBase(t)
	data := content("sync", 300<<10, 1)
	b.put("/sync", data)
	dir := t.TempDir()
	c := openCache(t, b, dir, nil)
	type call struct {
		name     string
		isDir    bool
		partLeft bool // a .part file exists in the entry's folder at the time of the call
		final    bool // a committed data file exists there
	}
	var mu sync.Mutex
	var calls []call
	c.fsync = func(f *os.File) error {
		st, err := f.Stat()
		if err != nil {
			t.Errorf("fsync of %s: %v", f.Name(), err)
			return err
		}
		folder := f.Name()
		if !st.IsDir() {
			folder = filepath.Dir(f.Name())
		}
		ents, _ := os.ReadDir(folder)
		cl := call{name: f.Name(), isDir: st.IsDir()}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".part") {
				cl.partLeft = true
			} else if !e.IsDir() {
				cl.final = true
			}
		}
		mu.Lock()
		calls = append(calls, cl)
		mu.Unlock()
		return f.Sync()
	}
	mustGet(t, c, "/sync", data)
	files, _ := dataFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("data files %v", files)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 {
		t.Fatalf("fsync calls %+v, want the data file then the folder", calls)
	}
	if f := calls[0]; f.isDir || !strings.HasSuffix(f.name, ".part") || !f.partLeft || f.final {
		t.Errorf("first sync %+v: want the .part file, before the rename", f)
	}
	if d := calls[1]; !d.isDir || d.name != filepath.Dir(files[0]) || d.partLeft || !d.final {
		t.Errorf("second sync %+v: want the folder %s, after the rename", d, filepath.Dir(files[0]))
	}
}

// TestCommitSyncFails: a sync that fails fails the fill; nothing is committed.
func TestCommitSyncFails(t *testing.T) {
	b := newTestBase(t)
	data := content("sf", 100<<10, 1)
	b.put("/sf", data)
	dir := t.TempDir()
	c := openCache(t, b, dir, nil)
	c.fsync = func(f *os.File) error {
		if st, err := f.Stat(); err == nil && st.IsDir() {
			return nil
		}
		return errors.New("injected: input/output error")
	}
	h, err := get(t, c, "/sf")
	if err == nil {
		_, err = readAll(t, h)
	}
	if err == nil {
		t.Fatal("a fill whose sync failed succeeded")
	}
	time.Sleep(50 * time.Millisecond)
	if files, _ := dataFiles(t, dir); len(files) != 0 {
		t.Errorf("a fill whose sync failed left %v", files)
	}
}

// TestWindowIfRange: a window's ranged GET carries a strong ETag as If-Range, and the
// Last-Modified when the ETag is weak (a weak tag may not be used in If-Range).
func TestWindowIfRange(t *testing.T) {
	const lm = "Wed, 01 May 2024 12:00:00 GMT"
	for _, tc := range []struct {
		name, etag, want string
	}{
		{"strong", `"s1"`, `"s1"`},
		{"weak", `W/"w1"`, lm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vb := newValidatorBase(t)
			data := content("win", 24<<20, 1)
			vb.set("/win", data, tc.etag, lm)
			hold := make(chan struct{}) // the whole-file GET does not answer: the fill lands nothing
			vb.mu.Lock()
			vb.hold = hold
			vb.mu.Unlock()
			var release sync.Once
			t.Cleanup(func() { release.Do(func() { close(hold) }) })
			c := openCache(t, vb.testBase, t.TempDir(), nil)
			from := int64(20 << 20)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			h, err := c.GetFrom(ctx, "/win", from, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Release()
			if h.Base() != from {
				t.Fatalf("base %d, want a window from %d", h.Base(), from)
			}
			vb.mu.Lock()
			if len(vb.ifRange) != 1 || vb.ifRange[0] != tc.want {
				t.Errorf("If-Range of the ranged GETs: %q, want [%q]", vb.ifRange, tc.want)
			}
			vb.mu.Unlock()
			// Let the fill go on, and see it end, before the test does.
			release.Do(func() { close(hold) })
			mustGet(t, c, "/win", data)
		})
	}
}

func TestDescribeTwins(t *testing.T) {
	const lm = "Wed, 01 May 2024 12:00:00 GMT"
	resp := func(status int, length int64, hdr ...string) *http.Response {
		r := &http.Response{StatusCode: status, ContentLength: length, Header: http.Header{}}
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return r
	}
	tests := []struct {
		name   string
		resp   *http.Response
		status int // 0: a Meta
		reason string
		check  func(*Meta) bool
	}{
		{"etag only", resp(200, 5, "ETag", `"a"`), 0, "", func(m *Meta) bool { return m.ETag == `"a"` && m.Size == 5 }},
		{"date only", resp(200, 5, "Last-Modified", lm), 0, "", func(m *Meta) bool { return m.LastModified == lm }},
		{"empty body", resp(200, 0, "ETag", `"a"`), 0, "", func(m *Meta) bool { return m.Size == 0 }},
		{"no length", resp(200, -1, "ETag", `"a"`), 403, "dynamic", nil},
		{"no validator", resp(200, 5), 403, "dynamic", nil},
		{"bad etag, no date", resp(200, 5, "ETag", `a"`), 403, "dynamic", nil},
		{"bad etag, date", resp(200, 5, "ETag", `a"`, "Last-Modified", lm), 0, "", func(m *Meta) bool { return m.ETag == "" }},
		{"bad date, etag", resp(200, 5, "ETag", `"a"`, "Last-Modified", "yesterday"), 0, "", func(m *Meta) bool { return m.LastModified == "" }},
		{"etag 1024", resp(200, 5, "ETag", `"`+strings.Repeat("e", 1022)+`"`), 0, "", func(m *Meta) bool { return len(m.ETag) == 1024 }},
		{"etag 1025", resp(200, 5, "ETag", `"`+strings.Repeat("e", 1023)+`"`, "Last-Modified", lm), 0, "", func(m *Meta) bool { return m.ETag == "" }},
		{"type 256", resp(200, 5, "ETag", `"a"`, "Content-Type", strings.Repeat("t", 256)), 0, "", func(m *Meta) bool { return len(m.ContentType) == 256 }},
		{"type 257", resp(200, 5, "ETag", `"a"`, "Content-Type", strings.Repeat("t", 257)), 0, "", func(m *Meta) bool { return m.ContentType == "" }},
		{"type with control", resp(200, 5, "ETag", `"a"`, "Content-Type", "text/plain\x01"), 0, "", func(m *Meta) bool { return m.ContentType == "" }},
		{"identity encoding", resp(200, 5, "ETag", `"a"`, "Content-Encoding", "Identity"), 0, "", nil},
		{"gzip", resp(200, 5, "ETag", `"a"`, "Content-Encoding", "gzip"), 403, "encoded", nil},
		{"br", resp(200, 5, "ETag", `"a"`, "Content-Encoding", "br"), 403, "encoded", nil},
		{"401", resp(401, 0), 403, "protected", nil},
		{"200 with WWW-Authenticate", resp(200, 5, "ETag", `"a"`, "WWW-Authenticate", "Basic"), 403, "protected", nil},
		{"403", resp(403, 0), 403, "403", nil},
		{"404", resp(404, 0), 404, "404", nil},
		{"410", resp(410, 0), 410, "410", nil},
		{"499", resp(499, 0), 499, "499", nil},
		{"500", resp(500, 0), 502, "500", nil},
		{"503", resp(503, 0), 502, "503", nil},
		{"302", resp(302, 0, "Location", "http://x/y"), 302, "302", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := describe(tc.resp)
			if tc.status == 0 {
				if err != nil || m == nil {
					t.Fatalf("describe: %v", err)
				}
				if tc.check != nil && !tc.check(m) {
					t.Errorf("meta %+v", m)
				}
				return
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Status != tc.status || !strings.Contains(ce.Reason, tc.reason) {
				t.Fatalf("describe: %v, want %d %q", err, tc.status, tc.reason)
			}
			if tc.status == 302 && ce.Location != "http://x/y" {
				t.Errorf("Location %q", ce.Location)
			}
		})
	}
	// Only 502 and 504 mean the base could not be asked.
	for status, down := range map[int]bool{502: true, 504: true, 500: false, 503: false, 404: false, 403: false} {
		if got := IsBaseDown(&Error{Status: status}); got != down {
			t.Errorf("IsBaseDown(%d) = %v, want %v", status, got, down)
		}
	}
}

func TestParseContentRangeTwins(t *testing.T) {
	for _, tc := range []struct {
		in                 string
		first, last, total int64
		ok                 bool
	}{
		{"bytes 5-9/10", 5, 9, 10, true},
		{"bytes 9-9/10", 9, 9, 10, true},
		{"bytes 0-9/10", 0, 9, 10, true},
		{"bytes 5-8/10", 5, 8, 10, true}, // a window that stops before the end
		{"bytes 5-10/10", 0, 0, 0, false},
		{"bytes 6-5/10", 0, 0, 0, false},
		{"bytes -1-9/10", 0, 0, 0, false},
		{"bytes 5-9/*", 0, 0, 0, false},
		{"bytes */10", 0, 0, 0, false},
		{"5-9/10", 0, 0, 0, false},
	} {
		first, last, total, ok := parseContentRange(tc.in)
		if ok != tc.ok || first != tc.first || last != tc.last || total != tc.total {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d, %v", tc.in, first, last, total, ok, tc.first, tc.last, tc.total, tc.ok)
		}
	}
}

// TestScanKeepsNewest: of two complete versions of one file on disk, the scan keeps the
// one stored last; entries that are longer than their header says, of another base or
// under a name that is not their key's are removed like torn ones.
func TestScanKeepsNewest(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	c := openCache(t, b, dir, nil)
	c.Close()
	host := b.URL[len("http://"):]
	key := host + "/n"
	older, newer := content("n", 1000, 1), content("n", 1000, 2)
	b.put("/n", newer)
	b.mu.Lock()
	etagNew := `"` + strconv.Itoa(len(newer)) + "-" + strconv.FormatInt(b.mtime["/n"].Unix(), 16) + `"`
	b.mu.Unlock()
	write := func(name string, m Meta, body []byte) string {
		t.Helper()
		hdr, err := encodeHeader(&m)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, keyName(m.Key)[:2], name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(hdr, body...), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	now := time.Now().UTC()
	// The older version is written second, so that the walk's order is not what decides.
	pNew := write(keyName(key)+"-1", Meta{Key: key, Size: 1000, ETag: etagNew, Stored: now}, newer)
	pOld := write(keyName(key)+"-2", Meta{Key: key, Size: 1000, ETag: `"old"`, Stored: now.Add(-time.Hour)}, older)
	long := write(keyName(host+"/long")+"-1", Meta{Key: host + "/long", Size: 10, ETag: `"l"`, Stored: now}, make([]byte, 11))
	other := write(keyName("elsewhere:1/o")+"-1", Meta{Key: "elsewhere:1/o", Size: 10, ETag: `"o"`, Stored: now}, make([]byte, 10))
	misnamed := write(keyName(host+"/x")+"-1", Meta{Key: host + "/y", Size: 10, ETag: `"y"`, Stored: now}, make([]byte, 10))

	c2 := openCache(t, b, dir, nil)
	for _, p := range []string{pOld, long, other, misnamed} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s survived the scan", filepath.Base(p))
		}
	}
	if _, err := os.Stat(pNew); err != nil {
		t.Fatalf("the newest version was removed: %v", err)
	}
	mustGet(t, c2, "/n", newer)
	if _, gets := b.counts("/n"); gets != 0 {
		t.Errorf("the newest version was not indexed: %d GETs", gets)
	}
}
