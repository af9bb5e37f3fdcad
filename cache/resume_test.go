package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// resumeBase is a base on 127.0.0.1 for the resume tests: files from memory with a
// strong ETag and a Last-Modified, Range and If-Range as net/http answers them, and
// GETs that drop the connection or hold still after a given number of body bytes.
type resumeBase struct {
	URL string
	srv *http.Server

	mu       sync.Mutex
	files    map[string]rbFile
	cuts     map[string][]int // the n-th GET of a path sends cuts[n] body bytes, then drops (-1: all)
	holdAt   map[string]int   // a GET holds still after this many body bytes until release closes
	release  chan struct{}
	ranges   map[string][]string // the Range header of every GET, "" for none
	noRanges bool                // answer every GET whole, as a base without ranges
	hangUp   int                 // drop this many next GETs before any answer
}

type rbFile struct {
	data []byte
	etag string
	mod  time.Time
}

func newResumeBase(t *testing.T) *resumeBase {
	t.Helper()
	b := &resumeBase{files: map[string]rbFile{}, cuts: map[string][]int{}, holdAt: map[string]int{},
		release: make(chan struct{}), ranges: map[string][]string{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.URL = "http://" + ln.Addr().String()
	b.srv = &http.Server{Handler: b}
	go b.srv.Serve(ln)
	t.Cleanup(func() {
		b.mu.Lock()
		select {
		case <-b.release:
		default:
			close(b.release)
		}
		b.mu.Unlock()
		b.srv.Close()
	})
	return b
}

// put stores version v of a file.
func (b *resumeBase) put(path string, data []byte, v int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[path] = rbFile{data: data, etag: fmt.Sprintf(`"v%d-%d"`, v, len(data)), mod: time.Unix(1_700_000_000+int64(v), 0)}
}

func (b *resumeBase) getRanges(path string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.ranges[path]...)
}

func (b *resumeBase) unhold() {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.release:
	default:
		close(b.release)
	}
}

func (b *resumeBase) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Mod-Offload-Bypass") != "true" {
		http.Error(w, "missing bypass header", 400)
		return
	}
	path := r.URL.EscapedPath()
	b.mu.Lock()
	f, ok := b.files[path]
	limit, hold := -1, -1
	if r.Method == http.MethodGet {
		b.ranges[path] = append(b.ranges[path], r.Header.Get("Range"))
		if cs := b.cuts[path]; len(cs) > 0 {
			limit, b.cuts[path] = cs[0], cs[1:]
		}
		if h, ok := b.holdAt[path]; ok {
			hold = h
			delete(b.holdAt, path)
		}
		if b.noRanges {
			r.Header.Del("Range")
		}
		if b.hangUp > 0 {
			b.hangUp--
			b.mu.Unlock()
			panic(http.ErrAbortHandler)
		}
	}
	release := b.release
	b.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", f.etag)
	w.Header().Set("Content-Type", "application/octet-stream")
	cw := &cutWriter{ResponseWriter: w, limit: limit, hold: hold, release: release}
	http.ServeContent(cw, r, "", f.mod, bytes.NewReader(f.data))
}

// cutWriter drops the connection after limit body bytes (-1: never), or holds still
// after hold bytes until release is closed, then drops it.
type cutWriter struct {
	http.ResponseWriter
	limit, hold int
	sent        int
	release     chan struct{}
}

func (c *cutWriter) Write(p []byte) (int, error) {
	stop := c.limit
	if c.hold >= 0 && (stop < 0 || c.hold < stop) {
		stop = c.hold
	}
	if stop < 0 || c.sent+len(p) <= stop {
		c.sent += len(p)
		return c.ResponseWriter.Write(p)
	}
	c.ResponseWriter.Write(p[:stop-c.sent])
	c.ResponseWriter.(http.Flusher).Flush()
	if stop == c.hold {
		<-c.release
	}
	panic(http.ErrAbortHandler) // drop the connection mid-body
}

func openResumeCache(t *testing.T, b *resumeBase, dir string, mut func(*Config)) *Cache {
	t.Helper()
	cfg := Config{Dir: dir, MaxBytes: 1 << 30, Base: b.URL, UserAgent: "offload/test", Timeout: 5 * time.Second, Logf: t.Logf}
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

// readers starts n readers of path at once and returns what each read, and its error.
func readers(t *testing.T, c *Cache, path string, n int) ([][]byte, []error) {
	t.Helper()
	got, errs := make([][]byte, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			h, err := c.Get(ctx, path)
			if err != nil {
				errs[i] = err
				return
			}
			got[i], errs[i] = readAll(t, h)
		}()
	}
	wg.Wait()
	return got, errs
}

// onDisk lists the files under dir by kind: committed data files, .part and .resume.
func onDisk(t *testing.T, dir string) (data, parts, sidecars []string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil || d.IsDir() || coordination(p):
		case strings.HasSuffix(p, ".part"):
			parts = append(parts, p)
		case strings.HasSuffix(p, resumeSuffix):
			sidecars = append(sidecars, p)
		default:
			data = append(data, p)
		}
		return nil
	})
	return data, parts, sidecars
}

// committedBody is the body of the one committed data file under dir.
func committedBody(t *testing.T, dir string) []byte {
	t.Helper()
	var data []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if data, _, _ = onDisk(t, dir); len(data) == 1 || time.Now().After(deadline) {
			break
		}
	}
	if len(data) != 1 {
		t.Fatalf("want one committed data file, found %v", data)
	}
	b, err := os.ReadFile(data[0])
	if err != nil {
		t.Fatal(err)
	}
	return b[HeaderSize:]
}

// TestDroppedFillResumes: a base that drops the connection twice mid-body is asked for
// the rest from where the bytes stopped, with Range and If-Range; readers that joined
// before the drops get the whole, correct body; the committed entry is the same bytes.
func TestDroppedFillResumes(t *testing.T) {
	b := newResumeBase(t)
	data := content("drop", 5<<20+333, 1)
	b.put("/drop", data, 1)
	b.cuts["/drop"] = []int{1<<20 + 17, 2<<20 + 5, -1}
	dir := t.TempDir()
	c := openResumeCache(t, b, dir, nil)
	got, errs := readers(t, c, "/drop", 4)
	for i := range got {
		if errs[i] != nil || !bytes.Equal(got[i], data) {
			t.Fatalf("reader %d: %d bytes, err %v (equal prefix %v)", i, len(got[i]), errs[i], bytes.HasPrefix(data, got[i]))
		}
	}
	want := []string{"", fmt.Sprintf("bytes=%d-%d", 1<<20+17, len(data)-1), fmt.Sprintf("bytes=%d-%d", 3<<20+22, len(data)-1)}
	if r := b.getRanges("/drop"); strings.Join(r, "|") != strings.Join(want, "|") {
		t.Fatalf("base saw GETs with Range %q, want %q", r, want)
	}
	if !bytes.Equal(committedBody(t, dir), data) {
		t.Fatal("committed entry differs from the base's file")
	}
	if n := c.Stats.Resumed.Load(); n != 2 {
		t.Errorf("Resumed = %d, want 2", n)
	}
	mustGet(t, c, "/drop", data)
	if n := len(b.getRanges("/drop")); n != 3 {
		t.Errorf("a warm read asked the base again: %d GETs", n)
	}
}

// TestDroppedFillRetriesBounded: a base that drops every GET after a few bytes is asked
// maxRetries times for the rest, then the fill fails: the readers' bodies end early and
// are a correct prefix, and nothing is left on disk.
func TestDroppedFillRetriesBounded(t *testing.T) {
	b := newResumeBase(t)
	data := content("flaky", 2<<20, 1)
	b.put("/flaky", data, 1)
	b.cuts["/flaky"] = []int{100 << 10, 1000, 1000, 1000, 1000, 1000}
	dir := t.TempDir()
	c := openResumeCache(t, b, dir, nil)
	got, errs := readers(t, c, "/flaky", 2)
	for i := range got {
		if errs[i] == nil {
			t.Fatalf("reader %d read %d bytes of a failed fill without an error", i, len(got[i]))
		}
		if !bytes.Equal(got[i], data[:len(got[i])]) {
			t.Fatalf("reader %d: bytes differ from the base's", i)
		}
	}
	if n := len(b.getRanges("/flaky")); n != 1+maxRetries {
		t.Errorf("base saw %d GETs, want %d", n, 1+maxRetries)
	}
	time.Sleep(50 * time.Millisecond)
	if d, p, s := onDisk(t, dir); len(d)+len(p)+len(s) != 0 {
		t.Errorf("a failed fill left %v %v %v", d, p, s)
	}
}

// TestDroppedFillVersionChanged: the file changes on the base while the fill is cut; the
// ranged GET's If-Range makes the base send the whole new file, which the fill refuses
// rather than mix versions: nothing is committed, readers see an error, and the next
// request fills the new version.
func TestDroppedFillVersionChanged(t *testing.T) {
	b := newResumeBase(t)
	v1, v2 := content("chg", 1<<20, 1), content("chg", 1<<20, 2)
	b.put("/chg", v1, 1)
	b.holdAt["/chg"] = 300 << 10
	dir := t.TempDir()
	c := openResumeCache(t, b, dir, nil)
	h, err := get(t, c, "/chg")
	if err != nil {
		t.Fatal(err)
	}
	waitAvailable(t, h, 300<<10)
	b.put("/chg", v2, 2)
	b.unhold()
	got, err := readAll(t, h)
	if err == nil || !bytes.Equal(got, v1[:len(got)]) {
		t.Fatalf("read %d bytes, err %v: want a correct prefix of the first version and an error", len(got), err)
	}
	time.Sleep(50 * time.Millisecond)
	if d, p, s := onDisk(t, dir); len(d)+len(p)+len(s) != 0 {
		t.Errorf("a fill of two versions left %v %v %v", d, p, s)
	}
	mustGet(t, c, "/chg", v2)
	if r := b.getRanges("/chg"); len(r) != 3 || r[1] == "" || r[2] != "" {
		t.Errorf("GETs with Range %q: want whole, ranged, whole", r)
	}
}

// waitAvailable waits until the handle's fill has landed at least n bytes.
func waitAvailable(t *testing.T, h *Handle, n int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if avail, err := h.Available(); err != nil || avail >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fill never landed %d bytes", n)
		}
	}
}

// snapshot copies the cache folder as a crash would leave it: whatever the files hold now.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return to
}

// durableOf reads the newest valid checkpoint of the one .part under dir: 0 when there is none.
func durableOf(t *testing.T, dir string) int64 {
	t.Helper()
	_, parts, _ := onDisk(t, dir)
	if len(parts) != 1 {
		return 0
	}
	f, err := os.Open(parts[0])
	if err != nil {
		return 0
	}
	defer f.Close()
	hdr := make([]byte, HeaderSize)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return 0
	}
	m, err := parseHeader(hdr)
	if err != nil {
		return 0
	}
	rec, err := readRecord(sidecarOf(parts[0]), headerDigest(hdr), m.Size)
	if err != nil {
		return 0
	}
	return rec.durable
}

// TestRestartResumesCheckpoint: a fill checkpoints as it goes; the cache folder as a crash
// leaves it (copied while the base holds still mid-body) resumes in a new cache with one
// ranged GET from the checkpoint, and the entry is byte-identical to the base's file.
// Each checkpoint's record is written only after the .part's fsync covered its bytes.
func TestRestartResumesCheckpoint(t *testing.T) {
	b := newResumeBase(t)
	data := content("big", 3<<20+99, 1)
	b.put("/big", data, 1)
	b.holdAt["/big"] = 2<<20 + 4321
	dir := t.TempDir()
	c := openResumeCache(t, b, dir, nil)
	c.ckEvery = 256 << 10
	var mu sync.Mutex
	var partSynced int64 // the .part's length at its last fsync
	c.fsync = func(f *os.File) error {
		err := f.Sync()
		st, _ := f.Stat()
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasSuffix(f.Name(), ".part"):
			partSynced = max(partSynced, st.Size())
		case strings.HasSuffix(f.Name(), resumeSuffix):
			if d := durableOfSidecar(t, f.Name()); HeaderSize+d > partSynced {
				t.Errorf("a checkpoint records %d bytes, the .part was synced with %d", d, partSynced-HeaderSize)
			}
		}
		return err
	}
	h, err := get(t, c, "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release()
	waitAvailable(t, h, 2<<20+4321)
	var durable int64
	for deadline := time.Now().Add(10 * time.Second); durable < 1<<20; time.Sleep(5 * time.Millisecond) {
		if durable = durableOf(t, dir); time.Now().After(deadline) {
			t.Fatalf("no checkpoint past 1 MiB: %d", durable)
		}
	}
	crashed := snapshot(t, dir)
	durable = durableOf(t, crashed)
	b.unhold() // the first cache's fill goes on: the rest after the drop
	waitFills(t, c)
	b.mu.Lock()
	b.ranges["/big"] = b.ranges["/big"][:1] // as if the crash had ended it
	b.mu.Unlock()

	c2 := openResumeCache(t, b, crashed, nil)
	mustGet(t, c2, "/big", data)
	r := b.getRanges("/big")
	if want := fmt.Sprintf("bytes=%d-%d", durable, len(data)-1); len(r) != 2 || r[1] != want {
		t.Fatalf("GETs with Range %q, want the first whole and then %q", r, want)
	}
	if !bytes.Equal(committedBody(t, crashed), data) {
		t.Fatal("resumed entry differs from the base's file")
	}
	if _, p, s := onDisk(t, crashed); len(p)+len(s) != 0 {
		t.Errorf("a committed resume left %v %v", p, s)
	}
	if c2.Stats.Resumed.Load() != 1 {
		t.Errorf("Resumed = %d", c2.Stats.Resumed.Load())
	}
}

func durableOfSidecar(t *testing.T, sidecar string) int64 {
	t.Helper()
	b, _ := os.ReadFile(sidecar)
	var d int64
	for off := 0; off+recordSize <= len(b); off += recordSize {
		if r, ok := decodeRecord(b[off : off+recordSize]); ok {
			d = max(d, r.durable)
		}
	}
	return d
}

// TestCloseCheckpoints: closing the cache (a clean shutdown) checkpoints a fill in
// progress however little it has landed, and the next start resumes it from there.
func TestCloseCheckpoints(t *testing.T) {
	b := newResumeBase(t)
	data := content("shut", 1<<20, 1)
	b.put("/shut", data, 1)
	b.holdAt["/shut"] = 300 << 10
	dir := t.TempDir()
	c := openResumeCache(t, b, dir, nil)
	h, err := get(t, c, "/shut")
	if err != nil {
		t.Fatal(err)
	}
	waitAvailable(t, h, 300<<10)
	h.Release()
	c.Close()
	crashed := snapshot(t, dir)
	if d := durableOf(t, crashed); d != 300<<10 {
		t.Fatalf("checkpoint at Close: %d bytes, want %d", d, 300<<10)
	}
	b.unhold() // the closed cache's fill fails at the drop: no retries after Close
	waitFills(t, c)
	time.Sleep(100 * time.Millisecond)
	if _, p, s := onDisk(t, dir); len(p) != 1 || len(s) != 1 {
		t.Errorf("a fill that failed after Close removed its checkpointed part: %v %v", p, s)
	}
	b.mu.Lock()
	b.ranges["/shut"] = b.ranges["/shut"][:1]
	b.mu.Unlock()
	c2 := openResumeCache(t, b, crashed, nil)
	mustGet(t, c2, "/shut", data)
	if r := b.getRanges("/shut"); len(r) != 2 || r[1] != fmt.Sprintf("bytes=%d-%d", 300<<10, len(data)-1) {
		t.Fatalf("GETs with Range %q", r)
	}
}

// writePart puts on disk an unfinished fill of path as a crash could leave it: the
// header, the body's first n bytes followed by junk (written, never synced), and a
// sidecar whose records say durable[i] in slot i (0: an empty slot).
func writePart(t *testing.T, c *Cache, b *resumeBase, path string, n int, durable ...int64) (part string) {
	t.Helper()
	b.mu.Lock()
	f := b.files[path]
	b.mu.Unlock()
	key := c.key(path)
	m := &Meta{Key: key, Size: int64(len(f.data)), ETag: f.etag, LastModified: f.mod.UTC().Format(http.TimeFormat),
		Stored: time.Now().UTC()}
	hdr, err := encodeHeader(m)
	if err != nil {
		t.Fatal(err)
	}
	final := c.dataPath(key, time.Now().UnixNano())
	os.MkdirAll(filepath.Dir(final), 0o755)
	body := append(append([]byte(nil), f.data[:n]...), bytes.Repeat([]byte{0xEE}, 4096)...)
	if err := os.WriteFile(final+".part", append(hdr, body...), 0o644); err != nil {
		t.Fatal(err)
	}
	side := make([]byte, 2*recordSize)
	for i, d := range durable {
		if d > 0 {
			r := record{seq: uint64(i + 2), durable: d, size: m.Size, header: headerDigest(hdr)}
			copy(side[int(r.seq%2)*recordSize:], r.encode())
		}
	}
	if err := os.WriteFile(final+resumeSuffix, side, 0o644); err != nil {
		t.Fatal(err)
	}
	return final + ".part"
}

// TestScanResumableParts: which unfinished fills a start keeps, and from where they resume.
func TestScanResumableParts(t *testing.T) {
	data := content("p", 1<<20, 1)
	for _, tc := range []struct {
		name     string
		n        int     // body bytes really in the .part
		durable  []int64 // the sidecar's two slots (seq 2, seq 3)
		tear     int     // slot to tear after writing (-1 none)
		version  int     // the base's version at restart
		noRanges bool
		want     string // the resume GET's Range, "" for starting over
	}{
		{name: "newest record", n: 600 << 10, durable: []int64{200 << 10, 500 << 10}, tear: -1, version: 1, want: "bytes=512000-"},
		{name: "torn newest record uses the older", n: 600 << 10, durable: []int64{200 << 10, 500 << 10}, tear: 1, version: 1, want: "bytes=204800-"},
		{name: "both records torn", n: 600 << 10, durable: []int64{200 << 10, 500 << 10}, tear: 2, version: 1},
		{name: "record claims more than the file holds", n: 100 << 10, durable: []int64{0, 500 << 10}, tear: -1, version: 1},
		{name: "version changed on the base", n: 600 << 10, durable: []int64{0, 500 << 10}, tear: -1, version: 2},
		{name: "base ignores ranges", n: 600 << 10, durable: []int64{0, 500 << 10}, tear: -1, version: 1, noRanges: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newResumeBase(t)
			b.put("/p", data, 1)
			dir := t.TempDir()
			c0 := openResumeCache(t, b, dir, nil)
			part := writePart(t, c0, b, "/p", tc.n, tc.durable...)
			c0.Close()
			if tc.tear >= 0 {
				side, _ := os.ReadFile(sidecarOf(part))
				for slot := range 2 {
					if tc.tear == 2 || slot == (tc.tear+2)%2 {
						side[slot*recordSize+20] ^= 0xFF // a torn sector: the CRC no longer holds
					}
				}
				os.WriteFile(sidecarOf(part), side, 0o644)
			}
			want := data
			if tc.version != 1 {
				want = content("p", 1<<20, tc.version)
				b.put("/p", want, tc.version)
			}
			b.noRanges = tc.noRanges
			c := openResumeCache(t, b, dir, nil)
			mustGet(t, c, "/p", want)
			r := b.getRanges("/p")
			switch {
			case tc.want != "" && (len(r) != 1 || !strings.HasPrefix(r[0], tc.want)):
				t.Errorf("GETs with Range %q, want one from %q", r, tc.want)
			case tc.want == "" && (len(r) == 0 || r[len(r)-1] != ""):
				t.Errorf("GETs with Range %q, want the last one whole", r)
			}
			if !bytes.Equal(committedBody(t, dir), want) {
				t.Fatal("committed entry differs from the base's file")
			}
			if _, p, s := onDisk(t, dir); len(p)+len(s) != 0 {
				t.Errorf("left %v %v", p, s)
			}
		})
	}
}

// TestScanPartsWithinBound: resumable parts count against the cache's bound: a start
// with more durable bytes of parts than the bound keeps no more than the bound and
// removes the rest (with their sidecars); a part larger than the whole bound is removed,
// and so is a sidecar without its .part.
func TestScanPartsWithinBound(t *testing.T) {
	b := newResumeBase(t)
	dir := t.TempDir()
	const bound = 4 << 20
	c0 := openResumeCache(t, b, dir, func(c *Config) { c.MaxBytes = bound })
	for i := range 10 {
		p := fmt.Sprintf("/p%d", i)
		b.put(p, content(p, 2<<20, 1), 1)
		writePart(t, c0, b, p, 1<<20, 0, 1<<20)
	}
	b.put("/huge", content("huge", 5<<20, 1), 1)
	huge := writePart(t, c0, b, "/huge", 1<<20, 0, 1<<20)
	orphan := filepath.Join(dir, "ab", "abababababababababababababababab-1"+resumeSuffix)
	os.MkdirAll(filepath.Dir(orphan), 0o755)
	os.WriteFile(orphan, make([]byte, 1024), 0o644)
	c0.Close()

	c := openResumeCache(t, b, dir, func(c *Config) { c.MaxBytes = bound })
	_, parts, sidecars := onDisk(t, dir)
	if len(parts) == 0 || int64(len(parts))<<20 > bound {
		t.Errorf("%d parts of 1 MiB kept under a %d-byte bound", len(parts), bound)
	}
	if len(sidecars) != len(parts) {
		t.Errorf("%d sidecars for %d parts", len(sidecars), len(parts))
	}
	for _, p := range []string{huge, orphan} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived the scan", filepath.Base(p))
		}
	}
	// A kept part resumes.
	f, err := os.Open(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	m, err := readHeader(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimPrefix(m.Key, c.host)
	b.mu.Lock()
	want := b.files[path].data
	b.mu.Unlock()
	mustGet(t, c, path, want)
	if r := b.getRanges(path); len(r) != 1 || r[0] != fmt.Sprintf("bytes=%d-%d", 1<<20, len(want)-1) {
		t.Errorf("a kept part asked the base with Range %q", r)
	}
}

// waitFills waits until c has no fill in progress, so none logs after its test.
func waitFills(t *testing.T, c *Cache) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c.mu.Lock()
		n := len(c.fills)
		c.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d fills still in progress", n)
		}
	}
}

// TestGoneOnBasePurgesPart: a file the base has removed takes its resumable part with it.
func TestGoneOnBasePurgesPart(t *testing.T) {
	b := newResumeBase(t)
	data := content("g", 1<<20, 1)
	b.put("/g", data, 1)
	dir := t.TempDir()
	c0 := openResumeCache(t, b, dir, nil)
	part := writePart(t, c0, b, "/g", 600<<10, 0, 500<<10)
	c0.Close()
	c := openResumeCache(t, b, dir, nil)
	if _, err := os.Stat(part); err != nil {
		t.Fatalf("the part was not kept: %v", err)
	}
	b.mu.Lock()
	delete(b.files, "/g")
	b.mu.Unlock()
	_, err := get(t, c, "/g")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 404 {
		t.Fatalf("got %v, want a 404", err)
	}
	if _, p, s := onDisk(t, dir); len(p)+len(s) != 0 {
		t.Errorf("a file gone on the base left %v %v", p, s)
	}
}

// TestResumeBaseUnreachable: when the base answers the HEAD but the connection for the
// rest fails, the request fails (502) and the part is kept: the next request resumes it.
func TestResumeBaseUnreachable(t *testing.T) {
	b := newResumeBase(t)
	data := content("u", 1<<20, 1)
	b.put("/u", data, 1)
	dir := t.TempDir()
	c0 := openResumeCache(t, b, dir, nil)
	writePart(t, c0, b, "/u", 600<<10, 0, 500<<10)
	c0.Close()
	c := openResumeCache(t, b, dir, nil)
	b.mu.Lock()
	b.hangUp = 2 // net/http asks again once when a reused connection drops
	b.mu.Unlock()
	_, err := get(t, c, "/u")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 502 {
		t.Fatalf("got %v, want a 502", err)
	}
	if _, p, s := onDisk(t, dir); len(p) != 1 || len(s) != 1 {
		t.Fatalf("the part was not kept: %v %v", p, s)
	}
	c.index.Wait()
	mustGet(t, c, "/u", data)
	want := fmt.Sprintf("bytes=%d-%d", 500<<10, len(data)-1)
	r := b.getRanges("/u")
	if len(r) < 2 {
		t.Fatalf("GETs with Range %q", r)
	}
	for _, g := range r {
		if g != want {
			t.Fatalf("GETs with Range %q, want every one from %q", r, want)
		}
	}
}

// BenchmarkFillCheckpoints is BenchmarkFill with a checkpoint every 8 MiB (seven in the
// 64 MiB file; the default of 64 MiB makes none): what the fsyncs cost a fill.
func BenchmarkFillCheckpoints(b *testing.B) {
	for _, every := range []int64{checkpointEvery, 8 << 20} {
		b.Run(fmt.Sprintf("every-%dMiB", every>>20), func(b *testing.B) {
			base := newTestBase(b)
			data := content("big", fillSize, 1)
			c, err := Open(Config{Dir: b.TempDir(), MaxBytes: 1 << 40, Base: base.URL})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.ckEvery = every
			b.SetBytes(fillSize)
			for i := 0; b.Loop(); i++ {
				path := "/big-" + fmt.Sprint(i)
				base.put(path, data)
				h, err := c.Get(context.Background(), path)
				if err != nil {
					b.Fatal(err)
				}
				waitComplete(b, h)
				h.Release()
			}
		})
	}
}

// TestResumeCoalesced: readers arriving together after a restart share one resumed fill:
// the base sees one ranged GET, and every reader gets the whole body.
func TestResumeCoalesced(t *testing.T) {
	b := newResumeBase(t)
	data := content("co", 2<<20, 1)
	b.put("/co", data, 1)
	dir := t.TempDir()
	c0 := openResumeCache(t, b, dir, nil)
	writePart(t, c0, b, "/co", 900<<10, 0, 800<<10)
	c0.Close()
	c := openResumeCache(t, b, dir, nil)
	b.mu.Lock()
	b.holdAt["/co"] = 100 << 10 // the readers pile up on the fill
	b.mu.Unlock()
	go func() { time.Sleep(200 * time.Millisecond); b.unhold() }()
	got, errs := readers(t, c, "/co", 6)
	for i := range got {
		if errs[i] != nil || !bytes.Equal(got[i], data) {
			t.Fatalf("reader %d: %d bytes, %v", i, len(got[i]), errs[i])
		}
	}
	// The hold drops the connection after it: one retry from where the bytes stopped.
	want := []string{fmt.Sprintf("bytes=%d-%d", 800<<10, len(data)-1), fmt.Sprintf("bytes=%d-%d", 900<<10, len(data)-1)}
	if r := b.getRanges("/co"); strings.Join(r, "|") != strings.Join(want, "|") {
		t.Fatalf("GETs with Range %q, want %q", r, want)
	}
}
