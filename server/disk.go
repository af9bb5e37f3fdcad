package server

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A page-cache miss must never stall an event loop. sendfile(2) from a file whose pages
// are not in memory sleeps on the disk, and every connection of the loop waits with it.
// So before it sends a chunk the loop asks, without blocking, whether the chunk's first
// and last pages are in memory (preadv2 with RWF_NOWAIT, one byte each). On a miss the
// download's bytes go to the disk pool from then on, diskLoad at a time, as with
// nginx's "aio threads": a worker sendfiles them to the client itself (the kernel's
// read-ahead reading them in as it goes) and wakes the connection, which meanwhile holds
// nothing but a small job, as it waits for a full socket. The worker works on its own
// duplicates of the data file's and the socket's descriptors, so neither a close of the
// connection nor of the file can make it use a reused fd number; the socket stays
// non-blocking, so a worker waits for the disk, never for a client, and the loop writes
// nothing to the socket while a job runs. HTTPS, whose bytes the loop encrypts, reads
// them with RWF_NOWAIT, and a worker only reads in what that read did not find.

const (
	// diskLoad is how much one deferral makes sure is in memory before it wakes the
	// connection: a few turns' budgets. Measured against nginx with aio threads (8 cold
	// 128 MiB readers and a hot-file probe, interleaved rounds): 4 MiB with 8 MiB ahead
	// gave 0.90-0.98x nginx's throughput; 2 MiB with 16 MiB ahead 1.03-1.06x, with the
	// probe's p99 at 0.46-0.69x nginx's (1 MiB: as fast, but p99 up to 1.13x).
	diskLoad = 2 << 20
	// diskAhead is how far past that the kernel is asked to read ahead, so a sequential
	// download usually finds its next chunks in memory and defers again only rarely.
	diskAhead = 16 << 20
	// diskStep is the spacing of the one-byte reads a worker waits on: the pages in
	// between come in with the read-ahead the kernel is doing anyway.
	diskStep = 256 << 10
)

// diskJob is one deferred read: the bytes [off, off+n) of a data file, and for a
// plain-HTTP download that met the disk, their sendfile to the client as well.
type diskJob struct {
	fd     int // a dup of the data file's descriptor: the worker's, closed by it
	off, n int64
	wake   func() // resumes the connection on its loop (gnet's Wake: safe off the loop); nil for a prefetch
	done   atomic.Bool
	err    error // the disk's error; set before done
	// cancel: the connection closed; the worker stops at its next page.
	cancel atomic.Bool

	// sock, when not -1, is a dup of the client's socket (non-blocking, as gnet set
	// it): the worker sends the bytes it read in with sendfile, as nginx's "aio
	// threads" do, so the loop neither waits for the disk nor spends its turns on a
	// cold download's bytes. The worker closes it. Set before done: sent, the bytes
	// the socket took; full, it took no more (EAGAIN); sendErr, the socket's error.
	sock    int
	sent    int64
	full    bool
	sendErr error
	// noSendfile: the file system has no sendfile (nothing was sent); the loop
	// copies instead.
	noSendfile bool
	// hintFrom is where the read-ahead hint starts: the bytes before it were hinted
	// by an earlier job of the same download.
	hintFrom int64
}

// diskPool is the bounded set of workers that take page-cache misses off the loops.
// A connection has at most one job queued or running, so the queue is bounded by the
// connections.
type diskPool struct {
	workers int
	metrics *metrics
	// read is pread(2), and resident the loop's probe (inMemory); tests replace them
	// to make a disk fail at a known place, whatever the kernel read ahead meanwhile.
	read     func(fd int, p []byte, off int64) (int, error)
	resident func(fd int, off int64) bool
	// cached is the HTTPS path's read: only what is in memory (readInMemory).
	cached func(fd int, p []byte, off int64) (int, error)
	// sendfile is a worker's sendfile: unix.Sendfile, a system call the Go scheduler
	// knows may block (on the disk), unlike the loop's raw one (conn.go).
	sendfile func(out, in int, off *int64, n int) (int, error)
	// inCore says how much of a job's bytes is in memory (coreView.inCore), and
	// kick has a worker's next bytes read in (the function kick).
	inCore func(v *coreView, fd int, off, end int64) int64
	kick   func(fd int, off, n int64, rest bool)
	// tells says whether mincore tells for a file (mincoreTells).
	tells func(st *unix.Stat_t) bool
	// probe is the workers' inMemory: a system call the scheduler knows may block, as
	// a RWF_NOWAIT read may while it allocates and queues the read-ahead it starts.
	probe func(fd int, off int64) bool

	mu     sync.Mutex // protects jobs and closed
	cond   *sync.Cond
	jobs   []*diskJob
	closed bool
}

func newDiskPool(workers int, m *metrics) *diskPool {
	p := &diskPool{workers: workers, metrics: m, read: unix.Pread, resident: inMemory, cached: readInMemory,
		sendfile: unix.Sendfile, inCore: (*coreView).inCore, kick: kick, probe: probeInMemory, tells: mincoreTells}
	p.cond = sync.NewCond(&p.mu)
	for range workers {
		go p.run()
	}
	return p
}

// submit queues j; false when the pool is closed.
func (p *diskPool) submit(j *diskJob) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.jobs = append(p.jobs, j)
	p.cond.Signal()
	return true
}

func (p *diskPool) close() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *diskPool) run() {
	var buf [1]byte
	view := newCoreView()
	for {
		p.mu.Lock()
		for len(p.jobs) == 0 && !p.closed {
			p.cond.Wait()
		}
		if len(p.jobs) == 0 {
			p.mu.Unlock()
			return
		}
		j := p.jobs[0]
		p.jobs[0] = nil
		p.jobs = p.jobs[1:]
		if len(p.jobs) == 0 {
			p.jobs = nil // let the backing array go
		}
		p.mu.Unlock()
		if j.wake == nil {
			// A prefetch: the connection goes on sending what is in memory meanwhile.
			willNeed(j.fd, j.off, j.n)
			unix.Close(j.fd)
			continue
		}
		start := time.Now()
		if j.sock >= 0 {
			// sendfile reads the pages in as it goes, behind the kernel's own
			// read-ahead. No POSIX_FADV_WILLNEED first: it allocates and queues the
			// whole range before the first byte goes, and cost the 8 cold readers of
			// bench.sh step 5 a fifth of their throughput and a third more hot-file
			// p99 (0.71x and 1.32x nginx-aio with it, 0.87x and 0.79x without, 8 rounds).
			p.send(j, view)
			unix.Close(j.sock)
		} else {
			j.err = p.load(j, buf[:], view)
		}
		view.release()
		p.metrics.diskReads.Observe(time.Since(start).Seconds())
		unix.Close(j.fd)
		j.done.Store(true)
		j.wake()
	}
}

// send writes the job's bytes to its socket with sendfile until they are out, the
// socket is full, or it fails. The socket is non-blocking: only the disk can make the
// worker wait, never the client. And the worker waits for the disk asleep, not inside
// sendfile: a goroutine blocked in a system call keeps its P (one of GOMAXPROCS, the
// right to run Go code) until the runtime's monitor takes it back, which can be 10-20
// ms later, and workers waiting for the disk held every P, so the event loops, woken
// for a hot request, could not run: behind 8 cold readers capped at 256 MiB/s, a hot
// file's p99 was 9-13 ms against nginx-aio's 4.5-5.5 ms (and 3.6-4.7 ms with a P for
// every worker, GOMAXPROCS=18, which cost 30% of the TLS handshakes a second). So a
// worker sends only what is in memory (mincore: inCore), has the next bytes read in
// without waiting for them (kick), and sleeps until they are in; after awaitLimit of
// waiting for one page it lets sendfile wait instead, as a page whose read failed
// never comes in, and the blocking read reports why (EIO).
func (p *diskPool) send(j *diskJob, view *coreView) {
	off, end := j.off, j.off+j.n
	w := p.newWait(j)
	if w.size >= 0 && w.size < end {
		// The file is shorter than its metadata says (a local file cut short while
		// served): what is there goes out, then the connection ends, never a short 200.
		if end = w.size; off >= end {
			j.sendErr = errShortFile
			return
		}
		defer func() {
			if off == end && j.err == nil && j.sendErr == nil && !j.full && !j.noSendfile {
				j.sendErr = errShortFile
			}
		}()
	}
	for off < end && !j.cancel.Load() {
		n := end - off
		if r, ok := w.ready(off, end, view); ok {
			n = r
		} else if !w.sleep(off, end) {
			continue
		}
		k, err := p.sendfile(j.sock, j.fd, &off, int(n))
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			j.full = true
		case err == unix.EIO:
			j.err = err // the disk's, not the client's: logged
		case (err == unix.EINVAL || err == unix.ENOSYS || err == unix.EOPNOTSUPP) && off == j.off:
			j.noSendfile = true
		case err != nil:
			j.sendErr = err
		case k == 0:
			j.sendErr = errShortFile
		default:
			w.progress()
			continue
		}
		break
	}
	j.sent = off - j.off
}

// diskWait is one job's waiting for the disk, asleep (see send).
type diskWait struct {
	p      *diskPool
	j      *diskJob
	since  time.Time // the wait for the current page began; zero: not waiting
	delay  time.Duration
	kicked int64 // the bytes before it were asked for (kick)
	// noCore: mincore cannot tell for this file (Linux reports every page of a file
	// the process may neither write nor own as in memory, as a local copy of the web
	// space may be: mincoreTells), so RWF_NOWAIT reads of a piece's first and last
	// bytes tell.
	noCore bool
	size   int64 // the file's size when the job began; -1: unknown
}

func (p *diskPool) newWait(j *diskJob) *diskWait {
	w := &diskWait{p: p, j: j, delay: awaitMin, size: -1}
	var st unix.Stat_t
	if unix.Fstat(j.fd, &st) == nil {
		w.size = st.Size
		w.noCore = !p.tells(&st)
	}
	return w
}

// mincoreTells says whether mincore(2) tells which pages of the file are in memory.
// Linux (can_do_mincore) tells for a file the process owns or has CAP_FOWNER over, or
// may open for writing; for the others it says every page is. Only the first two are
// looked at: a file that is writable by group or others or only by the grace of
// CAP_DAC_OVERRIDE goes the slower way, which is right whatever mincore says. The
// capability, not the user id, decides for root: a root daemon whose capabilities a
// bounding set took away (CapabilityBoundingSet=) is told every page is in memory.
func mincoreTells(st *unix.Stat_t) bool {
	return st.Uid == uint32(os.Geteuid()) || hasCapability(unix.CAP_FOWNER)
}

// hasCapability says whether the calling thread has the capability in its effective
// set. Asked each time: a daemon that drops its privileges after start loses them.
func hasCapability(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if unix.Capget(&hdr, &data[0]) != nil || c >= 64 {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// ready says how many bytes from off (before end) are in memory and may go out
// without waiting for the disk; false: none, so wait (sleep).
func (w *diskWait) ready(off, end int64, view *coreView) (int64, bool) {
	if !w.noCore {
		if r := w.p.inCore(view, w.j.fd, off, end); r > 0 {
			return r, true
		}
		return 0, false
	}
	// Without mincore, a piece of noCorePiece goes out when its first and last pages
	// are in memory (the kick asked for all of the job's bytes, so there are no holes).
	n := min(end-off, noCorePiece)
	if w.p.probe(w.j.fd, off) && w.p.probe(w.j.fd, off+n-1) {
		return n, true
	}
	return 0, false
}

// noCorePiece is what a worker sends at a time where mincore cannot tell (see diskWait).
const noCorePiece = 64 << 10

// sleep waits for the page at off: it has it read in (kick) and sleeps, from awaitMin
// doubling up to awaitMax. False: sleep again (after ready); true: the page has been
// waited for awaitLimit, or is past the end of the file, so let sendfile wait for it,
// or say the file is short.
func (w *diskWait) sleep(off, end int64) bool {
	now := time.Now()
	switch {
	case w.since.IsZero():
		w.since = now
		if size, ok := fileSize(w.j.fd); ok && off >= size {
			return true // past the end (the file was cut short): sendfile says so
		}
		// Each wait asks for its page (a read-ahead chain the kernel broke is
		// started again); where the device reads nothing ahead, the rest of the job
		// is asked for, once.
		w.p.kick(w.j.fd, off, end-off, w.kicked <= off)
		w.kicked = max(w.kicked, end)
	case now.Sub(w.since) >= awaitLimit:
		w.p.metrics.diskWaitsGivenUp.Inc()
		w.since, w.delay = time.Time{}, awaitMin
		return true
	}
	time.Sleep(w.delay)
	w.delay = min(2*w.delay, awaitMax)
	return false
}

// progress: bytes went out, so the next page's wait starts afresh.
func (w *diskWait) progress() { w.since, w.delay = time.Time{}, awaitMin }

// kick has [off, off+n) read in without waiting for it: a RWF_NOWAIT read of the first
// byte starts the kernel's read-ahead there, as any read does, which goes on ahead by
// itself as the bytes are read. Where the device reads nothing ahead (read_ahead_kb 0),
// that would be a page a wait (review measured 64 MiB in 18 s), so there
// POSIX_FADV_WILLNEED asks for all of them; not elsewhere, as it costs: with it on every
// miss, 8 cold readers of this machine's host-cached disk got 0.66x nginx-aio's
// throughput and used 0.64 CPU seconds a GiB, against 0.86-0.93x and 0.24 without.
// Both are system calls the scheduler may take the P back from while they allocate and
// queue the reads.
func kick(fd int, off, n int64, rest bool) {
	if !nowaitReadsAhead() {
		// Before Linux 5.9 a RWF_NOWAIT read starts no read: ask for a read-ahead's worth.
		willNeed(fd, off, min(n, raPiece(fd)))
		return
	}
	probeInMemory(fd, off)
	if rest && noReadAhead(fd) {
		willNeed(fd, off, n)
	}
}

// nowaitReadsAhead says whether a RWF_NOWAIT read of a page not in memory starts its
// read (and the read-ahead around it), as it does since Linux 5.9.
var nowaitReadsAhead = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return true
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return true
	}
	return major > 5 || major == 5 && minor >= 9
})

// fileSize is fd's size, from fstat.
func fileSize(fd int) (int64, bool) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0, false
	}
	return st.Size, true
}

const (
	// awaitMin and awaitMax bound a worker's sleeps while it waits for a page: from
	// 50 µs (a page the disk is about to deliver), doubling, up to 4 ms.
	awaitMin = 50 * time.Microsecond
	awaitMax = 4 * time.Millisecond
	// awaitLimit is how long a worker sleeps waiting for one page before it lets
	// sendfile wait for it (see send).
	awaitLimit = 500 * time.Millisecond
)

// pageSize is the page cache's unit.
var pageSize = os.Getpagesize()

// coreView is a worker's way of asking which of a job's bytes are in memory: a
// mapping of them it never touches, so that nothing is read or faulted in, which
// mincore(2) looks up in the page cache (a page being read in counts as not in
// memory), and vec, mincore's answer, a byte a page. The mapping is made at a job's
// first question and kept until the job ends (release), rather than an mmap and a
// munmap each time a waiting worker looks.
type coreView struct {
	vec  []byte
	m    []byte // the mapping; nil: none
	fd   int    // the file m maps
	base int64  // the file offset of m[0]
	maps int    // mappings made (for tests)
}

func newCoreView() *coreView { return &coreView{vec: make([]byte, diskLoad/pageSize+2)} }

// release unmaps the job's bytes; a worker calls it before it closes the job's file.
func (v *coreView) release() {
	if v.m != nil {
		_ = unix.Munmap(v.m)
		v.m = nil
	}
}

// inCore returns how many of the bytes [off, end) of fd, from off on, are in memory: up
// to the first page that is not (0: the one at off is not), looking at len(vec) pages
// at most. Where the mapping or mincore fails (a file system without mmap), it says all
// of them, and sendfile waits as it would.
func (v *coreView) inCore(fd int, off, end int64) int64 {
	if off >= end {
		return 0
	}
	ps := int64(pageSize)
	base := off &^ (ps - 1)
	end = min(end, base+int64(len(v.vec))*ps)
	if v.m == nil || v.fd != fd || base < v.base || end > v.base+int64(len(v.m)) {
		v.release()
		m, err := unix.Mmap(fd, base, int(end-base), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return end - off
		}
		v.m, v.fd, v.base = m, fd, base
		v.maps++
	}
	pages := (end - base + ps - 1) / ps
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&v.m[base-v.base])),
		uintptr(pages*ps), uintptr(unsafe.Pointer(&v.vec[0]))); errno != 0 {
		return end - off
	}
	for i, in := range v.vec[:pages] {
		if in&1 == 0 {
			return max(0, base+int64(i)*ps-off)
		}
	}
	return end - off
}

// hint asks the kernel to read a load job's bytes and diskAhead past them, from where
// the download's earlier jobs stopped asking (hintFrom).
func (j *diskJob) hint() {
	from, end := max(j.off, j.hintFrom), j.off+j.n+diskAhead
	if from < end {
		willNeed(j.fd, from, end-from)
	}
}

// errShortFile says a data file ended before its metadata's size.
var errShortFile = errors.New("data file shorter than its metadata")

// load brings [off, off+n) into memory and asks the kernel to read ahead what
// follows. It copies (almost) nothing: the kernel is told to read the whole range
// (POSIX_FADV_WILLNEED starts the reads and returns), and the worker waits for it
// asleep, as send does, until inCore finds it all in memory (or awaitLimit passes),
// then reads one byte every diskStep, the last on the range's last byte, which are in
// memory by then: a disk error surfaces on those reads.
func (p *diskPool) load(j *diskJob, buf []byte, view *coreView) error {
	j.hint()
	end := j.off + j.n
	w := p.newWait(j)
	if w.size >= 0 && w.size < end {
		end = w.size // the reads below find the file short
	}
	for off := j.off; off < end && !j.cancel.Load(); {
		if r, ok := w.ready(off, end, view); ok {
			off += r
			w.progress()
		} else if w.sleep(off, end) {
			break
		}
	}
	if j.cancel.Load() {
		return nil // the connection closed: nobody waits for these bytes
	}
	end = j.off + j.n
	for off := j.off; ; off = min(off+diskStep, end-1) {
		r, err := p.read(j.fd, buf, off)
		for errors.Is(err, unix.EINTR) {
			r, err = p.read(j.fd, buf, off)
		}
		switch {
		case err != nil:
			return err
		case r == 0:
			return nil // past the end: sendfile will say what it thinks
		}
		if off >= end-1 {
			return nil
		}
	}
}

// willNeed asks the kernel to read [off, off+n) in. One POSIX_FADV_WILLNEED reads at
// most the larger of the device's read-ahead size and its largest request
// (read_ahead_kb, max_sectors_kb), so the range goes in pieces of that size
// (raPiece) that each start their reads and return: on this machine's virtual disk
// (read_ahead_kb 8192) one call where fixed 128 KiB pieces took 64. (8 cold readers'
// throughput did not move measurably with it: 0.71x nginx-aio in 4 rounds of
// scripts/bench.sh step 5, against 0.70x in 8 before.)
func willNeed(fd int, off, n int64) {
	piece := raPiece(fd)
	for end := off + n; off < end; off += piece {
		_ = unix.Fadvise(fd, off, min(piece, end-off), unix.FADV_WILLNEED)
	}
}

// minRAPiece is the piece willNeed uses where the device's sizes cannot be read (a
// file system on no block device, or a kernel without sysfs): the kernel's default
// read-ahead.
const minRAPiece = 128 << 10

// raPiece is how much one POSIX_FADV_WILLNEED reads of fd's file: the larger of its
// block device's read_ahead_kb and max_sectors_kb (a partition's are its disk's), at
// least minRAPiece and at most 64 MiB.
func raPiece(fd int) int64 { return readAheadOf(fd).piece }

// noReadAhead says whether fd's block device reads nothing ahead (read_ahead_kb 0).
func noReadAhead(fd int) bool { return readAheadOf(fd).none }

// readAhead is what a block device's queue says of its read-ahead: raPiece and
// noReadAhead.
type readAhead struct {
	piece int64
	none  bool
}

// readAheads caches readAheadOf by device number (st_dev).
var readAheads sync.Map

// readAheadOf reads fd's block device's read_ahead_kb and max_sectors_kb from sysfs,
// once a device.
func readAheadOf(fd int) readAhead {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return readAhead{piece: minRAPiece}
	}
	if v, ok := readAheads.Load(st.Dev); ok {
		return v.(readAhead)
	}
	r := readAhead{piece: minRAPiece}
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	for _, q := range []string{dir + "/queue", dir + "/../queue"} {
		ra, err1 := readKB(q + "/read_ahead_kb")
		io, err2 := readKB(q + "/max_sectors_kb")
		if err1 == nil || err2 == nil {
			r.piece = min(max(r.piece, ra<<10, io<<10), 64<<20)
			r.none = err1 == nil && ra == 0
			break
		}
	}
	readAheads.Store(st.Dev, r)
	return r
}

// readKB reads a sysfs file holding one number.
func readKB(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// probeUnsupported says whether preadv2's RWF_NOWAIT works on the cache's file system;
// where it does not (EOPNOTSUPP), the loop cannot tell and sends as before.
var probeUnsupported atomic.Bool

// inMemory reports whether the byte at off of fd is in the page cache, without
// blocking: preadv2(RWF_NOWAIT) of one byte.
func inMemory(fd int, off int64) bool {
	if probeUnsupported.Load() {
		return true
	}
	var b [1]byte
	iov := unix.Iovec{Base: &b[0], Len: 1}
	_, _, errno := unix.RawSyscall6(unix.SYS_PREADV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1,
		uintptr(off), 0, unix.RWF_NOWAIT)
	switch errno {
	case 0:
		return true
	case unix.EAGAIN:
		return false
	case unix.EOPNOTSUPP, unix.EINVAL, unix.ENOSYS:
		probeUnsupported.Store(true)
	}
	return true // other errors: let sendfile meet them and say so
}

// probeInMemory is inMemory for the disk pool's workers: the same question, asked with
// a system call the Go scheduler knows may block.
func probeInMemory(fd int, off int64) bool {
	var b [1]byte
	_, err := unix.Preadv2(fd, [][]byte{b[:]}, off, unix.RWF_NOWAIT)
	return err != unix.EAGAIN
}

// readInMemory reads into p from off what of it is in the page cache, without blocking
// (preadv2 with RWF_NOWAIT): up to the first page that is not, and unix.EAGAIN when
// that is the first. HTTPS reads its bytes anyway, so this read is its probe too: it
// costs no system call beyond the pread it replaces, where the sendfile path probes a
// chunk's first and last page apart. Where the probe is unsupported, a plain pread.
func readInMemory(fd int, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if probeUnsupported.Load() {
		return unix.Pread(fd, p, off)
	}
	r, err := unix.Preadv2(fd, [][]byte{p}, off, unix.RWF_NOWAIT)
	switch err {
	case nil:
		return r, nil
	case unix.EAGAIN:
		return 0, unix.EAGAIN
	case unix.EOPNOTSUPP, unix.EINVAL, unix.ENOSYS:
		probeUnsupported.Store(true)
	}
	// Anything else (EPERM from a seccomp filter, say): a plain read says what it is.
	return unix.Pread(fd, p, off)
}
