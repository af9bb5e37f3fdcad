package server

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// evict empties the page cache of every file under dir, as a cold offload host's disk
// is: fdatasync, then POSIX_FADV_DONTNEED. It skips the test where that does not work.
func evict(t *testing.T, dir string) {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		defer f.Close()
		unix.Fdatasync(int(f.Fd()))
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Skipf("fadvise: %v", err)
		}
		if inMemory(int(f.Fd()), cache.HeaderSize) && !probeUnsupported.Load() {
			t.Skipf("%s stays in the page cache after POSIX_FADV_DONTNEED here (tmpfs?)", path)
		}
		n++
		return nil
	})
	if n == 0 {
		t.Fatalf("no data file under %s", dir)
	}
}

// TestColdPagesGoToTheDiskPool: a download whose pages were evicted from the page cache
// is read in by the disk pool, not by sendfile on the loop, and arrives intact.
func TestColdPagesGoToTheDiskPool(t *testing.T) {
	b := newBase(t)
	data := randomBytes(24 << 20)
	b.write(t, "/cold.bin", data)
	dir := t.TempDir()
	s := start(t, b, func(_ *Config, _ *limiter.Config, cc *cache.Config) { cc.Dir = dir })
	httpGetWithin(t, 20*time.Second, s.url+"/cold.bin")
	before := metricValue(t, s.Server, "offload_disk_deferrals_total")
	evict(t, dir)
	resp, body := httpGetWithin(t, 20*time.Second, s.url+"/cold.bin")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("cold download: %d, %d bytes, equal %v", resp.StatusCode, len(body), bytes.Equal(body, data))
	}
	deferred := metricValue(t, s.Server, "offload_disk_deferrals_total") - before
	if deferred < 1 {
		t.Fatalf("no send was deferred to the disk pool for a file not in memory")
	}
	t.Logf("%v deferrals for 24 MiB", deferred)
	if tlsMode {
		// Read-ahead: a 24 MiB download needs far fewer deferrals than its 1 MiB turns.
		if deferred > 12 {
			t.Errorf("%v deferrals for 24 MiB: the read-ahead hint did not help", deferred)
		}
	} else if deferred < 12 || deferred > 48 {
		// Plain HTTP: once a download met the disk, a worker reads and sends it, 2 MiB
		// a job (less when the socket fills first).
		t.Errorf("%v deferrals for 24 MiB: want a job for every 2 MiB or so", deferred)
	}
	// A warm download defers (almost) nothing. Over HTTPS every page is read with
	// RWF_NOWAIT, and one the kernel has just reclaimed (this machine runs DAMON's
	// proactive reclaim) or holds locked stops that read: two such chunks of the 768
	// (32 KiB each) are allowed; a probe that always misfired would defer about 12
	// times (each deferral loads 2 MiB).
	before = metricValue(t, s.Server, "offload_disk_deferrals_total")
	httpGetWithin(t, 20*time.Second, s.url+"/cold.bin")
	if d := metricValue(t, s.Server, "offload_disk_deferrals_total") - before; d > 2 {
		t.Errorf("%v deferrals for a file in memory", d)
	} else if d > 0 {
		t.Logf("%v deferrals for a file in memory", d)
	}
	if metricValue(t, s.Server, "offload_disk_read_seconds") < deferred {
		t.Error("the disk read histogram did not count the deferred reads")
	}
}

// TestDiskErrorEndsOneConnection: a read error (EIO) in the middle of a cold download
// ends that connection early — never a short 200 that looks complete — is logged, and
// the other downloads on the server go on untouched.
func TestDiskErrorEndsOneConnection(t *testing.T) {
	b := newBase(t)
	bad, good := randomBytes(8<<20), randomBytes(8<<20+1) // told apart by size
	b.write(t, "/bad.bin", bad)
	b.write(t, "/good.bin", good)
	dir := t.TempDir()
	var logMu sync.Mutex
	var logs strings.Builder
	// Every disk read of /bad.bin's data file past 3 MiB fails, as a bad sector would,
	// and the loop's probe finds those pages missing: the kernel may have read them
	// ahead (the pool asks it to) before the loop gets there, and a bad sector's pages
	// never arrive. The hooks go in before the loops start, and find the file by its
	// inode once it is cached.
	var badIno atomic.Uint64
	bad3M := func(fd int, off int64) bool {
		var st unix.Stat_t
		return badIno.Load() != 0 && unix.Fstat(fd, &st) == nil && st.Ino == badIno.Load() && off >= cache.HeaderSize+3<<20
	}
	s := start(t, b, func(c *Config, _ *limiter.Config, cc *cache.Config) {
		cc.Dir = dir
		c.Logf = func(f string, args ...any) {
			logMu.Lock()
			defer logMu.Unlock()
			logs.WriteString(strings.TrimSpace(fmt.Sprintf(f, args...)) + "\n")
		}
		c.diskPool = func(p *diskPool) {
			p.read = func(fd int, b []byte, off int64) (int, error) {
				if bad3M(fd, off) {
					return 0, unix.EIO
				}
				return unix.Pread(fd, b, off)
			}
			p.resident = func(fd int, off int64) bool { return !bad3M(fd, off) && inMemory(fd, off) }
			// A worker's sendfile stops at the bad pages with EIO, as the kernel's does.
			p.sendfile = func(out, in int, off *int64, n int) (int, error) {
				if bad3M(in, *off) {
					return 0, unix.EIO
				}
				if lim := int64(cache.HeaderSize + 3<<20); *off+int64(n) > lim && bad3M(in, lim) {
					n = int(lim - *off)
				}
				return unix.Sendfile(out, in, off, n)
			}
			// HTTPS reads what is in memory, which stops short of the bad pages.
			p.cached = func(fd int, b []byte, off int64) (int, error) {
				if bad3M(fd, off) {
					return 0, unix.EAGAIN
				}
				if lim := int64(cache.HeaderSize + 3<<20); badIno.Load() != 0 && off+int64(len(b)) > lim && bad3M(fd, lim) {
					b = b[:lim-off]
				}
				return readInMemory(fd, b, off)
			}
		}
	})
	httpGetWithin(t, 20*time.Second, s.url+"/bad.bin")
	httpGetWithin(t, 20*time.Second, s.url+"/good.bin")
	evict(t, dir)
	var badStat unix.Stat_t
	if err := unix.Stat(dataFileOf(t, dir, len(bad)), &badStat); err != nil {
		t.Fatal(err)
	}
	badIno.Store(badStat.Ino)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp, err := http.Get(s.url + "/bad.bin")
		if err != nil {
			t.Errorf("bad.bin: %v", err)
			return
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil || len(got) >= len(bad) {
			t.Errorf("bad.bin: %d bytes, err %v: want the connection cut short", len(got), err)
		}
		if !bytes.Equal(got, bad[:len(got)]) {
			t.Error("bad.bin: the bytes before the error differ")
		}
	}()
	resp, body := httpGetWithin(t, 20*time.Second, s.url+"/good.bin")
	if resp.StatusCode != 200 || !bytes.Equal(body, good) {
		t.Errorf("good.bin beside the failing one: %d, %d bytes", resp.StatusCode, len(body))
	}
	wg.Wait()
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "disk read at") {
		t.Errorf("the disk error was not logged:\n%s", logs.String())
	}
}

// dataFileOf finds the data file whose body is size bytes.
func dataFileOf(t *testing.T, dir string, size int) string {
	t.Helper()
	var found string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if st, err := os.Stat(path); err == nil && st.Size() == int64(size)+cache.HeaderSize {
				found = path
			}
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no data file of %d bytes", size)
	}
	return found
}

// metricValue reads an unlabelled counter, gauge, or a histogram's count.
func metricValue(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	families, err := s.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name || len(f.GetMetric()) == 0 {
			continue
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestRAPiece: the read-ahead piece of a file on this machine's disk is what its
// block device says, read from sysfs.
func TestRAPiece(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "ra")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := raPiece(int(f.Fd()))
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	ra, err := readKB(dir + "/queue/read_ahead_kb")
	if err != nil {
		ra, err = readKB(dir + "/../queue/read_ahead_kb")
	}
	if err != nil {
		t.Logf("no block device under %s (%v): piece %d", dir, err, got)
		if got != minRAPiece {
			t.Errorf("piece %d, want the default %d", got, minRAPiece)
		}
		return
	}
	t.Logf("read_ahead_kb %d: piece %d KiB", ra, got>>10)
	if got < min(ra<<10, 64<<20) || got < minRAPiece || got > 64<<20 {
		t.Errorf("piece %d for read_ahead_kb %d", got, ra)
	}
}

// startCold starts a server whose cache holds /c.bin, size random bytes, with its
// pages evicted from memory.
func startCold(t *testing.T, size int) (*testServer, []byte) {
	t.Helper()
	b := newBase(t)
	data := randomBytes(size)
	b.write(t, "/c.bin", data)
	dir := t.TempDir()
	s := start(t, b, func(_ *Config, l *limiter.Config, cc *cache.Config) { cc.Dir = dir; l.MaxDupes = 0 })
	httpGetWithin(t, 20*time.Second, s.url+"/c.bin")
	evict(t, dir)
	return s, data
}

// TestColdDownloadsSlowAndReset: the disk pool's workers send a cold download's bytes
// themselves. Clients that read slowly (their sockets fill in the middle of a worker's
// sendfile) get every byte, in order; clients that reset in the middle of one end
// their own download only; and no descriptor the workers duplicated stays open.
func TestColdDownloadsSlowAndReset(t *testing.T) {
	s, data := startCold(t, 12<<20)
	fds := openFDs(t)
	before := metricValue(t, s.Server, "offload_disk_deferrals_total")
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := dialPlainOrTLS(s.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			if tc := tcpOf(conn); tc != nil {
				_ = tc.SetReadBuffer(16 << 10)
				if i%2 == 1 {
					_ = tc.SetLinger(0) // Close sends RST
				}
			}
			fmt.Fprintf(conn, "GET /c.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Error(err)
				return
			}
			got := make([]byte, 0, len(data))
			buf := make([]byte, 64<<10)
			for {
				if i%2 == 1 && len(got) > (1+i)<<20 {
					return // resets mid-download
				}
				k, err := resp.Body.Read(buf)
				got = append(got, buf[:k]...)
				if err != nil {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			if !bytes.Equal(got, data) {
				t.Errorf("slow client %d: %d bytes, equal prefix %v", i, len(got), bytes.Equal(got, data[:len(got)]))
			}
		}()
	}
	wg.Wait()
	if d := metricValue(t, s.Server, "offload_disk_deferrals_total") - before; d < 1 {
		t.Error("no disk job for a cold download")
	}
	// What the workers and the connections held is closed once they are done.
	deadline := time.Now().Add(10 * time.Second)
	for openFDs(t) > fds {
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open, %d before the downloads", openFDs(t), fds)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOneByteRangeOfAColdFileIsProbed: a one-byte range of a file whose pages are on
// the disk is read in by a worker, not sendfile'd from the loop (found by review: the
// worker path takes two bytes or more, and one byte went out unprobed).
func TestOneByteRangeOfAColdFileIsProbed(t *testing.T) {
	b := newBase(t)
	data := randomBytes(4 << 20)
	b.write(t, "/f.bin", data)
	var cold atomic.Bool
	s := start(t, b, func(c *Config, l *limiter.Config, _ *cache.Config) {
		l.MaxDupes = 0
		c.diskPool = func(p *diskPool) {
			p.resident = func(fd int, off int64) bool { return !cold.Load() && inMemory(fd, off) }
		}
	})
	httpGetWithin(t, 10*time.Second, s.url+"/f.bin")
	cold.Store(true)
	before := metricValue(t, s.Server, "offload_disk_deferrals_total")
	resp, body := httpGetWithin(t, 10*time.Second, s.url+"/f.bin", "Range", "bytes=3000000-3000000")
	if resp.StatusCode != 206 || !bytes.Equal(body, data[3000000:3000001]) {
		t.Fatalf("one-byte range: %d, %q", resp.StatusCode, body)
	}
	if d := metricValue(t, s.Server, "offload_disk_deferrals_total") - before; d < 1 {
		t.Error("a one-byte range of a cold file was sent from the loop without a disk job")
	}
}

// TestStalledColdDownloadMakesNoJobsOnInput: a client that stopped reading a cold
// download and sends input meanwhile (a byte a segment) costs no disk job per segment
// while its socket stays full (found by review: 1999 jobs for 2000 bytes of input).
func TestStalledColdDownloadMakesNoJobsOnInput(t *testing.T) {
	s, _ := startCold(t, 8<<20)
	conn, err := dialPlainOrTLS(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if tc := tcpOf(conn); tc != nil {
		_ = tc.SetReadBuffer(4 << 10)
	}
	fmt.Fprintf(conn, "GET /c.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the socket fills; the client reads nothing more
	mid := metricValue(t, s.Server, "offload_disk_deferrals_total")
	for range 500 {
		if _, err := conn.Write([]byte("G")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if d := metricValue(t, s.Server, "offload_disk_deferrals_total") - mid; d > 5 {
		t.Errorf("%v disk jobs for 500 segments of input with the socket full", d)
	}
}

// TestWorkersWaitForTheDiskAsleep: a worker sends only bytes that are in memory and
// sleeps until the next page comes in, rather than waiting for it inside sendfile (where
// it would hold one of Go's processors, which the event loops then lack); a page that
// never comes in (a failed read) is left to sendfile after awaitLimit, and the download
// still ends with every byte. The disk here is a fake one: the data file's bytes "come
// in" up to a mark that moves as the test says.
func TestWorkersWaitForTheDiskAsleep(t *testing.T) {
	b := newBase(t)
	data := randomBytes(6 << 20)
	b.write(t, "/c.bin", data)
	dir := t.TempDir()
	var ino atomic.Uint64
	var arrived atomic.Int64 // the data file's bytes before it are in memory
	var early atomic.Int64   // bytes a worker's sendfile was asked for before they were
	var lie atomic.Bool      // mincore says every page is in memory, as Linux does for a file the process may not write
	ofData := func(fd int) bool {
		var st unix.Stat_t
		return ino.Load() != 0 && unix.Fstat(fd, &st) == nil && st.Ino == ino.Load()
	}
	s := start(t, b, func(c *Config, l *limiter.Config, cc *cache.Config) {
		cc.Dir = dir
		l.MaxDupes = 0
		c.diskPool = func(p *diskPool) {
			p.tells = func(st *unix.Stat_t) bool { return !lie.Load() || st.Ino != ino.Load() }
			p.inCore = func(v *coreView, fd int, off, end int64) int64 {
				if ofData(fd) && lie.Load() {
					return end - off
				}
				if ofData(fd) {
					return max(0, min(end, arrived.Load())-off)
				}
				return v.inCore(fd, off, end)
			}
			p.resident = func(fd int, off int64) bool {
				if ofData(fd) {
					return off < arrived.Load()
				}
				return inMemory(fd, off)
			}
			p.probe = func(fd int, off int64) bool {
				if ofData(fd) {
					return off < arrived.Load()
				}
				return probeInMemory(fd, off)
			}
			p.sendfile = func(out, in int, off *int64, n int) (int, error) {
				if ofData(in) {
					if e := *off + int64(n) - arrived.Load(); e > 0 {
						early.Add(e)
					}
				}
				return unix.Sendfile(out, in, off, n)
			}
		}
	})
	httpGetWithin(t, 20*time.Second, s.url+"/c.bin")
	var st unix.Stat_t
	if err := unix.Stat(dataFileOf(t, dir, len(data)), &st); err != nil {
		t.Fatal(err)
	}
	end := int64(cache.HeaderSize + len(data))

	// deliver has the disk deliver the file from 1 MiB on, 256 KiB every 10 ms, until
	// it is all in or stop is closed.
	deliver := func() (stop chan struct{}) {
		arrived.Store(cache.HeaderSize + 1<<20)
		stop = make(chan struct{})
		go func() {
			for arrived.Load() < end {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
					arrived.Add(256 << 10)
				}
			}
		}()
		return stop
	}

	// As the disk delivers, no byte is asked of sendfile early.
	ino.Store(st.Ino)
	stop := deliver()
	before := metricValue(t, s.Server, "offload_disk_deferrals_total")
	resp, body := httpGetWithin(t, 20*time.Second, s.url+"/c.bin")
	close(stop)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("a download from the slow disk: %d, %d bytes", resp.StatusCode, len(body))
	}
	if metricValue(t, s.Server, "offload_disk_deferrals_total") == before {
		t.Fatal("no disk job: the test did not reach the workers")
	}
	if e := early.Load(); e != 0 {
		t.Errorf("the workers' sendfile was asked for %d bytes before they were in memory", e)
	}

	// The same for a file mincore cannot tell for (it says every page is in memory):
	// the worker asks each piece's first and last pages instead.
	lie.Store(true)
	stop = deliver()
	resp, body = httpGetWithin(t, 20*time.Second, s.url+"/c.bin")
	close(stop)
	lie.Store(false)
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("a download from the slow disk, mincore lying: %d, %d bytes", resp.StatusCode, len(body))
	}
	if e := early.Load(); e != 0 {
		t.Errorf("mincore lying, the workers' sendfile was asked for %d bytes before they were in memory", e)
	}

	// The disk stops at 3 MiB for good: after awaitLimit the worker lets sendfile read
	// the rest (here the file is fine, so the download ends with every byte).
	arrived.Store(cache.HeaderSize + 3<<20)
	early.Store(0)
	resp, body = httpGetWithin(t, 20*time.Second, s.url+"/c.bin")
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("a download past a page that never came in: %d, %d bytes", resp.StatusCode, len(body))
	}
	if early.Load() == 0 {
		t.Error("the worker never gave the missing page to sendfile")
	}
}

// TestInCore: a coreView finds the bytes of a file that are in memory, from an offset
// up to the first page that is not, on one mapping for as long as the questions stay
// within it (what the page cache holds meanwhile still shows), until release.
func TestInCore(t *testing.T) {
	fd := openTemp(t, randomBytes(1<<20))
	v := newCoreView()
	_ = unix.Fdatasync(fd)
	// Whether the eviction worked, a read of the last byte says (it reads in pages
	// there, none at the start).
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil || inMemory(fd, 1<<20-1) {
		t.Skip("cannot empty the page cache of a file here")
	}
	if got := v.inCore(fd, 0, 1<<20); got != 0 {
		t.Errorf("an evicted file: %d bytes in memory", got)
	}
	if v.m == nil {
		t.Skip("no mapping of a file here")
	}
	// Read the first 100 KiB in: the kernel may read ahead past them, never less.
	if _, err := unix.Pread(fd, make([]byte, 100<<10), 0); err != nil {
		t.Fatal(err)
	}
	if got := v.inCore(fd, 0, 1<<20); got < 100<<10 || got%int64(pageSize) != 0 {
		t.Errorf("after reading 100 KiB: %d bytes in memory", got)
	}
	if got := v.inCore(fd, 5000, 9000); got != 4000 {
		t.Errorf("a range within the pages read: %d bytes, want 4000", got)
	}
	if _, err := unix.Pread(fd, make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if got := v.inCore(fd, 12345, 1<<20); got != 1<<20-12345 {
		t.Errorf("all read: %d bytes from 12345, want %d", got, 1<<20-12345)
	}
	// And the other way: pages evicted while mapped are not in memory.
	_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
	if !inMemory(fd, 1<<20-1) {
		if got := v.inCore(fd, 12345, 1<<20); got != 0 {
			t.Errorf("evicted while mapped: %d bytes in memory", got)
		}
	}
	if v.maps != 1 {
		t.Errorf("%d mappings for questions within the first", v.maps)
	}
	if got := v.inCore(fd, 1<<20, 1<<20); got != 0 {
		t.Errorf("an empty range at the mapping's end: %d bytes", got)
	}
	// A range past the end of the file is not in memory, and no page is faulted in.
	if got := v.inCore(fd, 1<<20, 1<<20+8192); got != 0 {
		t.Errorf("past the end: %d bytes", got)
	}
	// More than the view holds pages for: it answers for those.
	big := openTemp(t, randomBytes(3*diskLoad))
	if _, err := unix.Pread(big, make([]byte, 3*diskLoad), 0); err != nil {
		t.Fatal(err)
	}
	if got, want := v.inCore(big, 4096, 3*diskLoad), int64(len(v.vec)*pageSize); got != want {
		t.Errorf("a range of more pages than the view's: %d bytes, want %d", got, want)
	}
	v.release()
	if v.m != nil {
		t.Error("release kept the mapping")
	}
}

// TestWorkerReadsInWithoutReadAhead: a cold file marked POSIX_FADV_RANDOM (the kernel
// reads ahead of it no more than it is asked) comes in at the disk's pace through a
// worker, every byte, and no page is waited for until the pool gives up on it. (Review
// found a page per wait, 64 MiB in 18 s, on a loop device with read_ahead_kb 0; where
// the device reads nothing ahead, the worker now has the rest of its job read in on a
// miss, POSIX_FADV_WILLNEED: noReadAhead.)
func TestWorkerReadsInWithoutReadAhead(t *testing.T) {
	const size = 32 << 20
	data := randomBytes(size)
	fd := openTemp(t, data)
	_ = unix.Fdatasync(fd)
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil || inMemory(fd, 0) {
		t.Skip("cannot empty the page cache of a file here")
	}
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	got := make(chan []byte)
	go func() {
		r := os.NewFile(uintptr(pair[1]), "reader")
		defer r.Close()
		b, _ := io.ReadAll(io.LimitReader(r, size))
		got <- b
	}()
	m := &metrics{diskReads: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "r"}),
		diskWaitsGivenUp: prometheus.NewCounter(prometheus.CounterOpts{Name: "g"})}
	p := newDiskPool(0, m)
	view := newCoreView()
	defer view.release()
	start := time.Now()
	for off := int64(0); off < size; {
		j := &diskJob{fd: fd, off: off, n: min(diskLoad, size-off), sock: pair[0]}
		p.send(j, view)
		if j.err != nil || j.sendErr != nil || j.noSendfile {
			t.Fatalf("at %d: %v %v %v", off, j.err, j.sendErr, j.noSendfile)
		}
		off += j.sent
		if j.full {
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(pair[0]), Events: unix.POLLOUT}}, 1000)
		}
	}
	took := time.Since(start)
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("the reader got %d bytes, equal %v", len(b), bytes.Equal(b, data[:len(b)]))
	}
	if n := counterValue(m.diskWaitsGivenUp); n != 0 {
		t.Errorf("%v pages waited for until the pool gave up", n)
	}
	// A page per wait takes a millisecond or more (a sleep's least): 8192 pages, 8 s or more.
	if took > 4*time.Second {
		t.Errorf("32 MiB without read-ahead took %v", took)
	}
}

// TestJobsPastTheEndReturnAtOnce: a job for bytes past the end of its file (a data file
// shorter than its metadata says, or a local file cut short while served) does not hold
// its worker for the wait's limit (found by review: 500 ms a job, so a few dozen such
// requests a second held every worker), and a send job says the file is short, so the
// connection ends rather than look complete.
func TestJobsPastTheEndReturnAtOnce(t *testing.T) {
	fd := openTemp(t, randomBytes(100<<10))
	m := &metrics{diskWaitsGivenUp: prometheus.NewCounter(prometheus.CounterOpts{Name: "g"})}
	p := newDiskPool(0, m)
	var buf [1]byte
	view := newCoreView()
	defer view.release()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	start := time.Now()
	for _, off := range []int64{200 << 10, 100 << 10, 100<<10 - 10} {
		j := &diskJob{fd: fd, off: off, n: 1 << 20, sock: -1}
		if err := p.load(j, buf[:], view); err != nil {
			t.Errorf("load at %d: %v", off, err)
		}
		j = &diskJob{fd: fd, off: off, n: 1 << 20, sock: pair[0]}
		p.send(j, view)
		if want := max(0, 100<<10-off); j.sent != want || j.sendErr != errShortFile {
			t.Errorf("send at %d: %d bytes sent (want %d), %v", off, j.sent, want, j.sendErr)
		}
	}
	if took := time.Since(start); took >= awaitLimit {
		t.Errorf("jobs past the end took %v", took)
	}
	if n := counterValue(m.diskWaitsGivenUp); n != 0 {
		t.Errorf("%v pages waited for past the end", n)
	}
}

// counterValue is a counter's value.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// openTemp writes data to a file of the test's and opens it for reading: its descriptor,
// closed when the test ends.
func openTemp(t *testing.T, data []byte) int {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// TestMincoreTellsByCapability: a root daemon without CAP_FOWNER and CAP_DAC_OVERRIDE
// (a systemd unit's CapabilityBoundingSet=, say) is told by mincore that every page of
// a file it does not own is in memory; mincoreTells must say so, so that the workers
// do not sendfile straight into the disk (found by review: it trusted euid 0). The
// test runs itself again under setpriv without those capabilities.
func TestMincoreTellsByCapability(t *testing.T) {
	if os.Getenv("OFFLOAD_TEST_NO_FOWNER") == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root, to own a file as another user and drop capabilities")
		}
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("no setpriv")
		}
		path := filepath.Join(t.TempDir(), "other")
		if err := os.WriteFile(path, randomBytes(1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		if f, err := os.Open(path); err == nil {
			_ = f.Sync() // so that the child can evict its pages
			f.Close()
		}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		if !mincoreTells(&st) {
			t.Error("root with its capabilities: mincore tells, but mincoreTells says not")
		}
		cmd := exec.Command(setpriv, "--bounding-set", "-fowner,-dac_override", "--",
			os.Args[0], "-test.run=^TestMincoreTellsByCapability$", "-test.v")
		cmd.Env = append(os.Environ(), "OFFLOAD_TEST_NO_FOWNER="+path)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("without CAP_FOWNER: %v\n%s", err, out)
		}
		t.Logf("without CAP_FOWNER:\n%s", out)
		return
	}
	path := os.Getenv("OFFLOAD_TEST_NO_FOWNER")
	if hasCapability(unix.CAP_FOWNER) {
		t.Fatal("setpriv left CAP_FOWNER")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if mincoreTells(&st) {
		t.Error("mincoreTells says mincore tells for another user's file without CAP_FOWNER")
	}
	// What it guards against: the kernel's answer for an evicted file.
	_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
	if !inMemory(fd, 1<<20-1) {
		v := newCoreView()
		defer v.release()
		t.Logf("evicted file, mincore says %d of %d bytes in memory", v.inCore(fd, 0, 1<<20), 1<<20)
	}
}
