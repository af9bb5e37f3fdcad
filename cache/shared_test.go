package cache

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The shared cache's tests run real processes: the test binary again, as groupcache's
// tests do, with OFFLOAD_CHILD naming what the child does (TestSharedChild).

// TestSharedChild is not a test: it is the body of those child processes.
func TestSharedChild(t *testing.T) {
	mode := os.Getenv("OFFLOAD_CHILD")
	if mode == "" {
		t.Skip("runs only as a child process of the shared cache's tests")
	}
	os.Exit(runChild(mode))
}

// runChild opens the shared cache and asks for one file. Modes: "get" reads the body
// and prints its sha256 ("sha HEX N"), or the error that ended the read ("readerr N
// ERR"); "hold" keeps the handle (an entry in use) until its stdin closes. Both print
// "handle hit=BOOL" once they have the handle, and the cache's counters at the end.
func runChild(mode string) int {
	maxBytes, _ := strconv.ParseInt(os.Getenv("OFFLOAD_CHILD_MAX"), 10, 64)
	if maxBytes == 0 {
		maxBytes = 1 << 30
	}
	c, err := Open(Config{Dir: os.Getenv("OFFLOAD_CHILD_DIR"), MaxBytes: maxBytes, Base: os.Getenv("OFFLOAD_CHILD_BASE"),
		UserAgent: "offload/test", Timeout: 5 * time.Second, Shared: true,
		Logf: func(f string, args ...any) {
			fmt.Fprintf(os.Stderr, "child %d: "+f+"\n", append([]any{os.Getpid()}, args...)...)
		}})
	if err != nil {
		fmt.Printf("error %v\n", err)
		return 1
	}
	defer c.Close()
	ctx := WithClient(context.Background(), netip.MustParseAddr("192.0.2.1"))
	h, err := c.GetFrom(ctx, os.Getenv("OFFLOAD_CHILD_PATH"), 0, 0)
	if err != nil {
		fmt.Printf("error %v\n", err)
		return 1
	}
	fmt.Printf("handle hit=%v\n", h.Hit)
	code := 0
	switch mode {
	case "hold":
		io.Copy(io.Discard, os.Stdin)
	case "get":
		sum := sha256.New()
		n, err := io.Copy(sum, h.Reader(ctx, 0, h.Meta.Size))
		if err != nil {
			fmt.Printf("readerr %d %v\n", n, err)
			code = 1
		} else {
			fmt.Printf("sha %x %d\n", sum.Sum(nil), n)
		}
	}
	h.Release()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c.Drain(dctx)
	fmt.Printf("stats gets=%d resumed=%d fills=%d\n", c.Stats.Gets.Load(), c.Stats.Resumed.Load(), c.Stats.Fills.Load())
	return code
}

// childEnv is this process's environment for a child: under the race detector, a child
// that exits would otherwise sleep a second first (GORACE's atexit_sleep_ms).
func childEnv() []string {
	return append(os.Environ(), "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
}

// child is a running child process and the lines it prints.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
	mu    sync.Mutex
	out   []string
}

func startChild(t *testing.T, mode, dir, base, path string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSharedChild$")
	cmd.Env = append(childEnv(), "OFFLOAD_CHILD="+mode, "OFFLOAD_CHILD_DIR="+dir, "OFFLOAD_CHILD_BASE="+base,
		"OFFLOAD_CHILD_PATH="+path)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 100), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ch.mu.Lock()
			ch.out = append(ch.out, sc.Text())
			ch.mu.Unlock()
			ch.lines <- sc.Text()
		}
		close(ch.lines)
		cmd.Wait() // only once stdout is read to its end: Wait closes it
		close(ch.done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-ch.done
	})
	return ch
}

// expect waits for the child's next line that starts with prefix.
func (ch *child) expect(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-ch.lines:
			if !ok {
				<-ch.done
				t.Fatalf("child %d ended (%v) without %q: %q", ch.cmd.Process.Pid, ch.cmd.ProcessState, prefix, ch.output())
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
			if strings.HasPrefix(l, "error") {
				t.Fatalf("child %d: %s", ch.cmd.Process.Pid, l)
			}
		case <-deadline:
			t.Fatalf("child %d: no %q within %v: %q", ch.cmd.Process.Pid, prefix, timeout, ch.output())
		}
	}
}

func (ch *child) output() []string {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return append([]string(nil), ch.out...)
}

func shaLine(data []byte) string {
	sum := sha256.Sum256(data)
	return fmt.Sprintf("sha %s %d", hex.EncodeToString(sum[:]), len(data))
}

// openShared opens a shared cache in this process.
func openShared(t *testing.T, base, dir string) *Cache {
	t.Helper()
	c, err := Open(Config{Dir: dir, MaxBytes: 1 << 30, Base: base, UserAgent: "offload/test", Timeout: 5 * time.Second,
		Shared: true, Logf: quietAfter(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// partsUnder lists the .part files under dir and their sizes.
func partsUnder(dir string) map[string]int64 {
	out := map[string]int64{}
	matches, _ := filepath.Glob(filepath.Join(dir, "*", "*.part"))
	for _, p := range matches {
		if st, err := os.Stat(p); err == nil {
			out[p] = st.Size()
		}
	}
	return out
}

// TestSharedColdFill20Processes: 20 processes ask for one cold file at once; the base
// sees one GET, and every process gets the same bytes; a 21st process hits.
func TestSharedColdFill20Processes(t *testing.T) {
	b := newTestBase(t)
	data := content("cold20", 8<<20+123, 1)
	b.put("/pub/cold.iso", data)
	gate := make(chan struct{})
	b.mu.Lock()
	b.gate["/pub/cold.iso"] = gate
	b.throttle = time.Millisecond // the file grows while they follow it
	b.mu.Unlock()
	dir := t.TempDir()
	const n = 20
	children := make([]*child, n)
	for i := range children {
		children[i] = startChild(t, "get", dir, b.URL, "/pub/cold.iso")
	}
	// Every process has asked the base with its HEAD, and one GET waits at the gate:
	// let the body go once all of them are filler or follower.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		heads, gets := b.counts("/pub/cold.iso")
		if heads == n && gets == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("base saw %d HEADs and %d GETs, want %d and 1 before the body", heads, gets, n)
		}
	}
	time.Sleep(50 * time.Millisecond)
	b.mu.Lock()
	delete(b.gate, "/pub/cold.iso")
	b.mu.Unlock()
	close(gate)
	want := shaLine(data)
	for i, ch := range children {
		if got := ch.expect(t, "sha", 60*time.Second); got != want {
			t.Errorf("child %d: %s, want %s", i, got, want)
		}
	}
	if _, gets := b.counts("/pub/cold.iso"); gets != 1 {
		t.Errorf("base saw %d GETs, want 1", gets)
	}
	late := startChild(t, "get", dir, b.URL, "/pub/cold.iso")
	if got := late.expect(t, "handle", 20*time.Second); got != "handle hit=true" {
		t.Errorf("a later process: %s, want a hit", got)
	}
	if got := late.expect(t, "sha", 20*time.Second); got != want {
		t.Errorf("a later process: %s", got)
	}
	if heads, gets := b.counts("/pub/cold.iso"); heads != n+1 || gets != 1 {
		t.Errorf("base saw %d HEADs and %d GETs, want %d and 1", heads, gets, n+1)
	}
	if parts := partsUnder(dir); len(parts) != 0 {
		t.Errorf("parts left: %v", parts)
	}
}

// TestSharedFillerKilled: the filler process dies (SIGKILL) mid-fill while another
// process follows it; the follower takes the fill over where the bytes stopped (one
// ranged GET) and commits an entry identical to the base's file.
func TestSharedFillerKilled(t *testing.T) {
	b := newResumeBase(t)
	data := content("killed", 12<<20+5, 1)
	b.put("/k.bin", data, 1)
	const holdAt = 3 << 20
	b.mu.Lock()
	b.holdAt["/k.bin"] = holdAt // the first GET stalls there, as a filler about to die
	b.mu.Unlock()
	dir := t.TempDir()
	filler := startChild(t, "get", dir, b.URL, "/k.bin")
	filler.expect(t, "handle", 20*time.Second)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		parts := partsUnder(dir)
		if len(parts) == 1 && func() bool {
			for _, s := range parts {
				return s == HeaderSize+holdAt
			}
			return false
		}() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the filler wrote no %d bytes: %v", holdAt, parts)
		}
	}
	reader := startChild(t, "get", dir, b.URL, "/k.bin")
	reader.expect(t, "handle", 20*time.Second) // following the filler's .part
	time.Sleep(50 * time.Millisecond)
	filler.cmd.Process.Signal(syscall.SIGKILL)
	if got, want := reader.expect(t, "sha", 30*time.Second), shaLine(data); got != want {
		t.Fatalf("follower after the kill: %s, want %s", got, want)
	}
	if got := reader.expect(t, "stats", 10*time.Second); !strings.Contains(got, "resumed=1") {
		t.Errorf("follower: %s, want a takeover", got)
	}
	if r := b.getRanges("/k.bin"); len(r) != 2 || r[0] != "" || r[1] != fmt.Sprintf("bytes=%d-%d", holdAt, len(data)-1) {
		t.Errorf("GETs with Range %q, want the whole file, then the rest from %d", r, holdAt)
	}
	// Committed, and whole: a new process hits without asking for the body.
	c := openShared(t, b.URL, dir)
	h, err := c.Get(context.Background(), "/k.bin")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := readAll(t, h); !h.Hit || !bytes.Equal(got, data) {
		t.Fatalf("after the takeover: hit %v, %d bytes equal %v", h.Hit, len(got), bytes.Equal(got, data))
	}
	if len(b.getRanges("/k.bin")) != 2 {
		t.Errorf("a hit asked for the body again")
	}
	if parts := partsUnder(dir); len(parts) != 0 {
		t.Errorf("parts left: %v", parts)
	}
}

// TestSharedFillFails: when the fill cannot be finished (the base keeps dropping the
// connection), a process that follows it gets an error, never a short body, and nothing
// is committed.
func TestSharedFillFails(t *testing.T) {
	b := newTestBase(t)
	data := content("fails", 4<<20, 1)
	b.put("/f.bin", data)
	b.mu.Lock()
	b.cut["/f.bin"] = 1 << 20 // every GET, ranged or not, drops after 1 MiB
	b.mu.Unlock()
	dir := t.TempDir()
	var children []*child
	for range 3 {
		children = append(children, startChild(t, "get", dir, b.URL, "/f.bin"))
	}
	for i, ch := range children {
		got := ch.expect(t, "readerr", 60*time.Second)
		var n int64
		fmt.Sscanf(got, "readerr %d", &n)
		if n >= int64(len(data)) {
			t.Errorf("child %d: %s: a failed fill gave the whole length", i, got)
		}
	}
	if files, _ := dataFiles(t, dir); len(files) > 0 {
		for _, f := range files {
			if !strings.HasSuffix(f, ".part") && !strings.HasSuffix(f, resumeSuffix) {
				t.Errorf("committed after a failed fill: %s", f)
			}
		}
	}
}

// TestSharedOpenIsConstant: opening a shared cache reads nothing of what it holds and
// removes nothing, even another process's unfinished fill.
func TestSharedOpenIsConstant(t *testing.T) {
	b := newTestBase(t)
	dir := t.TempDir()
	// Junk a scan would remove, and a .part nobody has open.
	os.MkdirAll(filepath.Join(dir, "ab"), 0o755)
	junk := filepath.Join(dir, "ab", "not-a-cache-file")
	part := filepath.Join(dir, "ab", strings.Repeat("ab", 16)+"-1.part")
	os.WriteFile(junk, []byte("x"), 0o644)
	os.WriteFile(part, []byte("y"), 0o644)
	openShared(t, b.URL, dir)
	for _, p := range []string{junk, part} {
		if !exists(p) {
			t.Errorf("opening a shared cache removed %s", p)
		}
	}
}

// TestServeAndSharedOneFolder: offload serve's cache and a shared one use one folder:
// each finds what the other committed, without a GET; serve's start leaves a shared
// process's fill in progress alone (the process finishes it), and its scan points
// entries from before pointers existed.
func TestServeAndSharedOneFolder(t *testing.T) {
	b := newTestBase(t)
	a, bb := content("a", 2<<20, 1), content("b", 3<<20, 1)
	b.put("/a", a)
	b.put("/b", bb)
	dir := t.TempDir()

	serve := openCache(t, b, dir, nil)
	mustGet(t, serve, "/a", a)
	serve.Close()
	shared := openShared(t, b.URL, dir)
	if h := mustGet(t, shared, "/a", a); !h.Hit {
		t.Error("a shared cache missed what serve committed")
	}
	mustGet(t, shared, "/b", bb)
	if _, gets := b.counts("/b"); gets != 1 {
		t.Fatalf("GETs of /b: %d", gets)
	}
	serve2 := openCache(t, b, dir, nil)
	if h := mustGet(t, serve2, "/b", bb); !h.Hit {
		t.Error("serve missed what a shared cache committed")
	}
	if _, gets := b.counts("/a"); gets != 1 {
		t.Errorf("GETs of /a: %d, want 1", gets)
	}
	if _, gets := b.counts("/b"); gets != 1 {
		t.Errorf("GETs of /b: %d, want 1", gets)
	}
	serve2.Close()

	// An entry from before pointers: serve's scan points it.
	cur := shared.curPath(shared.key("/a"))
	os.Remove(cur)
	serve3 := openCache(t, b, dir, nil)
	serve3.Close()
	if _, err := os.Readlink(cur); err != nil {
		t.Errorf("the scan did not point /a: %v", err)
	}

	// serve starts while a shared process fills: the .part stays, the fill completes.
	c := content("c", 6<<20, 1)
	b.put("/c", c)
	b.mu.Lock()
	b.throttle = 2 * time.Millisecond
	b.mu.Unlock()
	filler := startChild(t, "get", dir, b.URL, "/c")
	filler.expect(t, "handle", 20*time.Second)
	for deadline := time.Now().Add(10 * time.Second); len(partsUnder(dir)) == 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no .part")
		}
	}
	serve4 := openCache(t, b, dir, nil)
	if len(partsUnder(dir)) != 1 {
		t.Error("serve's scan removed a fill in progress")
	}
	if got := filler.expect(t, "sha", 30*time.Second); got != shaLine(c) {
		t.Errorf("the shared fill: %s", got)
	}
	serve4.Close()
	if h := mustGet(t, openShared(t, b.URL, dir), "/c", c); !h.Hit {
		t.Error("the shared fill was not committed")
	}
}

// TestSharedResumeAfterReboot: a .part whose fill record is from another boot is good
// only up to its checkpoint: the next filler cuts it there and asks for the rest from
// there (bytes past it may be junk a power cut left).
func TestSharedResumeAfterReboot(t *testing.T) {
	b := newResumeBase(t)
	data := content("reboot", 1<<20, 1)
	b.put("/r", data, 1)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	part := writePart(t, c, b, "/r", 600<<10, 0, 500<<10) // junk after 600 KiB, checkpoint at 500 KiB
	lk, err := openLock(c.lockPath(c.key("/r")))
	if err != nil {
		t.Fatal(err)
	}
	gen, _ := genOf(part)
	rec := fillRecord{boot: [16]byte{1, 2, 3}, pid: 1, gen: gen}
	lk.f.WriteAt(rec.encode(), hitsLen)
	lk.close()
	mustGet(t, c, "/r", data)
	if r := b.getRanges("/r"); len(r) != 1 || r[0] != fmt.Sprintf("bytes=%d-%d", 500<<10, len(data)-1) {
		t.Errorf("GETs with Range %q, want one from the checkpoint", r)
	}
}

// TestSharedHandleReader: Handle.Reader gives the bytes asked for, and an error for
// bytes the handle does not hold.
func TestSharedHandleReader(t *testing.T) {
	b := newTestBase(t)
	data := content("reader", 300<<10, 1)
	b.put("/x", data)
	c := openShared(t, b.URL, t.TempDir())
	h, err := c.GetFrom(context.Background(), "/x", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The fill goes on after the reads: wait for it before the folder is removed (a
	// commit under way made the TempDir cleanup fail in CI).
	t.Cleanup(func() { c.Drain(context.Background()) })
	defer h.Release()
	got, err := io.ReadAll(h.Reader(context.Background(), 1000, 200<<10))
	if err != nil || !bytes.Equal(got, data[1000:200<<10]) {
		t.Fatalf("Reader: %d bytes, %v", len(got), err)
	}
	if _, err := io.ReadAll(h.Reader(context.Background(), 0, int64(len(data))+1)); err == nil {
		t.Error("Reader past the end gave no error")
	}
}

// TestSharedFollowsAFillerThatFinishes: a filler (here this test, holding the key's lock
// as another process would) writes the rest of the body, commits and lets go of the
// lock, at any moment relative to the follower's looks: the follower ends with the whole
// body, never an error, and never asks the base for it.
func TestSharedFollowsAFillerThatFinishes(t *testing.T) {
	b := newResumeBase(t)
	dir := t.TempDir()
	c := openShared(t, b.URL, dir)
	for i := range 8 {
		path := fmt.Sprintf("/ff%d", i)
		data := content(path, 2<<20, 1)
		b.put(path, data, 1)
		part := writePart(t, c, b, path, 1<<20) // 1 MiB written (and junk after it: cut it)
		os.Truncate(part, HeaderSize+1<<20)
		lk, err := openLock(c.lockPath(c.key(path)))
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := lk.tryLock(); !ok {
			t.Fatal("lock")
		}
		gen, _ := genOf(part)
		lk.writeRecord(gen)
		done := make(chan []byte)
		go func() {
			h, err := c.GetFrom(context.Background(), path, 0, 0)
			if err != nil {
				t.Error(err)
				close(done)
				return
			}
			defer h.Release()
			got, err := io.ReadAll(h.Reader(context.Background(), 0, h.Meta.Size))
			if err != nil {
				t.Error(err)
			}
			done <- got
		}()
		time.Sleep(time.Duration(i) * 3 * time.Millisecond)
		f, _ := os.OpenFile(part, os.O_WRONLY, 0)
		f.WriteAt(data[1<<20:], HeaderSize+1<<20)
		f.Close()
		if i%2 == 0 {
			time.Sleep(time.Duration(i) * time.Millisecond)
		}
		os.Rename(part, finalOf(part))
		setCurrent(finalOf(part))
		lk.clearRecord()
		lk.close()
		if got := <-done; !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes, equal %v", path, len(got), bytes.Equal(got, data))
		}
		if r := b.getRanges(path); len(r) != 0 {
			t.Fatalf("%s: the follower asked the base: %q", path, r)
		}
	}
}

// TestSharedNoWindows: the window caps are one process's memory, so in a shared cache
// (one process a request) they bounded nothing: one client asking six processes for
// ranges far into a cold file got six windows, each pulling the rest of the file
// outside the cache's bound though nobody read it. A shared cache opens no window.
func TestSharedNoWindows(t *testing.T) {
	b := newTestBase(t)
	b.put("/big.iso", content("big", 64<<20, 1))
	b.mu.Lock()
	b.throttle = 200 * time.Millisecond // the whole-file fill crawls
	b.mu.Unlock()
	dir := t.TempDir()
	ctx := WithClient(context.Background(), netip.MustParseAddr("192.0.2.7"))
	var hs []*Handle
	for i := range 6 {
		c := openShared(t, b.URL, dir) // one per process
		h, err := c.GetFrom(ctx, "/big.iso", int64(20<<20+i*(4<<20)), 0)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	time.Sleep(time.Second) // nobody reads
	b.mu.Lock()
	ranged := b.ranged["/big.iso"]
	b.mu.Unlock()
	for _, h := range hs {
		h.Release()
	}
	if ranged != 0 {
		t.Errorf("%d ranged GETs (windows) for one client's six far ranges in a shared cache", ranged)
	}
}

// TestSharedNewVersionBesideAnOldFill: the base changes a file while another process
// fills the version it had. A request for the new version waited for that fill, which
// it could neither follow nor take over, and failed with a 504 at the stall limit (190 s
// by default; an attacker's review found it). Now it streams the new version through a
// file of its own, with a GET of its own, and caches nothing: the old fill goes on.
func TestSharedNewVersionBesideAnOldFill(t *testing.T) {
	b := newTestBase(t)
	b.put("/v.bin", content("v", 16<<20, 1))
	b.mu.Lock()
	b.throttle = 150 * time.Millisecond // the old version's fill crawls
	b.mu.Unlock()
	dir := t.TempDir()
	open := func() *Cache {
		c, err := Open(Config{Dir: dir, MaxBytes: 1 << 30, Base: b.URL, UserAgent: "offload/test", Timeout: time.Second,
			Shared: true, Logf: quietAfter(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	c1 := open()
	h1, err := c1.Get(context.Background(), "/v.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Release()
	time.Sleep(500 * time.Millisecond)
	v2 := content("v", 16<<20, 2)
	b.mu.Lock()
	b.files["/v.bin"] = v2
	b.mtime["/v.bin"] = b.mtime["/v.bin"].Add(time.Hour)
	b.throttle = 0
	b.mu.Unlock()
	c2 := open()
	start := time.Now()
	h2, err := c2.Get(context.Background(), "/v.bin")
	if err != nil {
		t.Fatalf("a request for the base's current version beside another process's fill of the old: %v", err)
	}
	got, err := io.ReadAll(h2.Reader(context.Background(), 0, h2.Meta.Size))
	h2.Release()
	if err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("the new version: %d bytes, %v, equal %v", len(got), err, bytes.Equal(got, v2))
	}
	if d := time.Since(start); d > c2.stallLimit()/2 {
		t.Errorf("the new version took %v (the stall limit is %v)", d, c2.stallLimit())
	}
}
