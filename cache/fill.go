package cache

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// fill pulls one version of a file from the base into a .part file while readers follow
// it. However many clients ask for a cold file, one fill (one GET) serves them all.
type fill struct {
	c      *Cache
	key    string
	target string        // the base's request-target for key (see target)
	want   *Meta         // what the HEAD said; the GET must agree
	from   int64         // 0 for a whole file; else a window of [from, end), never cached
	end    int64         // a window's end; the file's size otherwise
	ready  chan struct{} // closed when meta and file are set, or the fill failed first
	ctx    context.Context
	// cancel ends a window's GET once no reader is left; nil for a whole-file fill,
	// which goes on for the cache.
	cancel context.CancelFunc
	// private: in a shared cache, streamed through a file of its own and not cached,
	// as a file over the bound is (another process fills another version of the key).
	private bool

	// Set before ready is closed, read-only after.
	meta Meta

	mu       sync.Mutex // protects the fields below
	file     *sharedFile
	reserved int      // callers that joined and have not opened their handle yet: the file stays open for them
	written  int64    // body bytes in the file so far: all a reader may send
	done     bool     // no more bytes will come
	err      error    // why the fill failed, if it did
	waiters  []func() // called once when written grows or the fill ends

	// Checkpoints (resume.go) of a fill that writes a .part to commit.
	ckMu   sync.Mutex // serializes checkpoints with seal; guards the next four fields
	ckFile *os.File   // the .part; nil when the fill writes none (a window, too big)
	ckPath string     // its sidecar
	// ckRec is the last record written (seq 0: none yet); run sets its size and header
	// digest (or a resumed part's record) before it sets ckFile.
	ckRec  record
	sealed bool           // committed or failed: no more checkpoints
	ckBusy atomic.Bool    // a checkpoint goroutine is under way (checkpointLater)
	ckWG   sync.WaitGroup // that goroutine, which run waits for before it lets the file go

	// own is the key's lock (lockfile.go) while this fill holds it: always in a shared
	// cache, in offload serve only while it resumes a .part. Used by the fill's goroutine only.
	own *keyLock
}

// startFill joins the fill in progress for key or starts one; a new fill asks the base
// for the client named in ctx (forward.go), whose HEAD found the file. With reuse, when
// no fill is in progress but the index has want's version, it returns that entry
// instead: a fill that committed while the caller's HEAD was out (a commit indexes its
// entry before it leaves c.fills) must not be followed by a second GET of the same file.
func (c *Cache) startFill(ctx context.Context, key, tgt string, want *Meta, reuse bool) (*fill, *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.fills[key]; f != nil {
		f.reserve()
		return f, nil
	}
	if reuse && c.index != nil {
		if e, ok := c.index.Get(key); ok && e != nil && SameVersion(&e.meta, want) {
			return nil, e
		}
	}
	f := &fill{c: c, key: key, target: tgt, want: want, end: want.Size, ready: make(chan struct{}), reserved: 1,
		ctx: WithClient(context.Background(), clientOf(ctx))}
	c.fills[key] = f
	c.Stats.Fills.Add(1)
	go f.run()
	return f, nil
}

func (f *fill) reserve() {
	f.mu.Lock()
	f.reserved++
	f.mu.Unlock()
}

// handle waits until the fill has a file and a validated response, then opens a reader.
// The caller reserved its place when it joined (startFill), so a fill that finishes in
// the meantime keeps its file open for it.
func (f *fill) handle(ctx context.Context) (*Handle, error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		f.mu.Lock()
		f.reserved--
		f.closeIfUnused()
		f.mu.Unlock()
		return nil, &Error{Status: 503, Reason: "request canceled", Err: ctx.Err()}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserved--
	if f.file == nil {
		return nil, f.err
	}
	f.file.refs++
	return &Handle{Meta: f.meta, file: f.file, release: f.releaseFile, fill: f, base: f.from, end: f.end, hdr: HeaderSize}, nil
}

// unreserve gives back a place taken by startFill without opening a handle.
func (f *fill) unreserve() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserved--
	f.closeIfUnused()
}

// landed is how many bytes the fill has written so far.
func (f *fill) landed() int64 {
	n, _ := f.available()
	return n
}

// startWindow starts a fill of the bytes [from, end), for one reader that asked for a
// range far past what the file's fill has landed. It is not shared and not cached, and
// it stops when its reader leaves. It returns nil when the windows in all, or those of
// the client named in ctx, are at their cap: the reader then waits for the fill.
func (c *Cache) startWindow(ctx context.Context, key, tgt string, want *Meta, from, end int64) *fill {
	if c.cfg.Shared {
		// One process a request (CGI): the caps below live in one process's memory
		// and would bound nothing, while each window pulls the rest of a file, outside
		// the cache's bound, whether its reader reads or not. Far readers wait for the
		// fill, which the bound and trim keep.
		return nil
	}
	client := clientOf(ctx)
	c.mu.Lock()
	if c.Stats.Windows.Load() >= int64(c.cfg.Windows) || c.windows[client] >= c.cfg.WindowsPerClient {
		c.mu.Unlock()
		return nil
	}
	c.windows[client]++
	c.Stats.Windows.Add(1)
	c.mu.Unlock()
	wctx, cancel := context.WithCancel(WithClient(context.Background(), client))
	f := &fill{c: c, key: key, target: tgt, want: want, from: from, end: end, ready: make(chan struct{}), reserved: 1,
		ctx: wctx, cancel: cancel}
	go func() {
		f.run()
		cancel()
		c.mu.Lock()
		if c.windows[client]--; c.windows[client] <= 0 {
			delete(c.windows, client)
		}
		c.Stats.Windows.Add(-1)
		c.mu.Unlock()
	}()
	return f
}

func (f *fill) releaseFile(sf *sharedFile) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sf.refs--
	f.closeIfUnused()
}

// closeIfUnused closes the file once no reader holds it and none is on its way, and
// ends a window's GET once only the fill itself holds it; f.mu is held.
func (f *fill) closeIfUnused() {
	if f.reserved != 0 || f.file != nil && f.file.refs > 1 {
		return
	}
	if f.cancel != nil {
		f.cancel()
	}
	if f.file != nil && f.file.refs == 0 && f.file.f != nil {
		f.c.closeLater(f.file.f)
		f.file.f = nil
	}
}

func (f *fill) available() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written, f.err
}

func (f *fill) wait(have int64, wake func()) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.written > have || f.done {
		return false
	}
	f.waiters = append(f.waiters, wake)
	return true
}

// advance records n more bytes in the file and wakes the readers waiting for them.
func (f *fill) advance(n int64, end bool, err error) {
	f.mu.Lock()
	f.written += n
	if end {
		f.done, f.err = true, err
	}
	ws := f.waiters
	f.waiters = nil
	f.mu.Unlock()
	for _, w := range ws {
		w()
	}
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// run is the fill: GET (or resume a .part kept from before), check, copy into the .part
// file with checkpoints, asking for the rest when the base drops, then commit or clean up.
func (f *fill) run() {
	c := f.c
	if c.cfg.Shared && f.from == 0 && f.want.Size <= c.cfg.MaxBytes && !f.private {
		f.runShared() // shared.go: one filler for all the processes of a shared cache
		return
	}
	select {
	case c.up.gets <- struct{}{}:
	case <-f.ctx.Done():
		// A window whose reader left while it waited for a GET slot: no GET at all.
		f.mu.Lock()
		f.err, f.done = &Error{Status: 503, Reason: "request canceled", Err: f.ctx.Err()}, true
		f.mu.Unlock()
		close(f.ready)
		return
	}
	defer func() { <-c.up.gets }()
	// A finished fill leaves the map before it wakes its readers for the last time, so
	// a later request finds the committed entry (or starts afresh), never a dead fill.
	defer f.forget()
	defer f.releaseOwn() // after the commit: the key's lock, if a resume took it

	var l landing
	if f.from == 0 {
		if p := c.takePart(f.key); p != nil {
			file, body, at, err := f.resume(p)
			if err != nil {
				f.fail(err, "", false)
				return
			}
			if file != nil {
				c.Stats.OpenFiles.Add(1)
				meta := p.meta
				l = landing{m: &meta, body: body, file: file, part: p.path, final: finalOf(p.path), written: at}
				f.ckRec = p.part.rec
			}
		}
	}
	if l.file == nil {
		m, body, err := f.get()
		if err != nil {
			f.fail(err, "", false)
			return
		}
		l.m, l.body = m, body
	}
	defer func() { l.body.Close() }()
	var header []byte
	if l.file == nil {
		var err error
		if header, err = f.create(&l, time.Now().UnixNano()); err != nil {
			f.fail(err, "", false)
			return
		}
	}
	f.pump(&l, header)
}

// landing is where a fill copies the body to.
type landing struct {
	m       *Meta
	body    io.ReadCloser // the base's answer: the body, or the rest of it
	file    *os.File      // the .part (or, for a window, a file to unlink)
	part    string        // its path
	final   string        // its path once committed
	written int64         // body bytes in the file already (a resumed .part)
}

// create makes a new .part of generation gen for the version l.m describes and returns
// its header, to write (pump does, unless the caller did).
func (f *fill) create(l *landing, gen int64) ([]byte, error) {
	c := f.c
	m := l.m
	m.Key, m.Stored = f.key, time.Now().UTC()
	header, err := encodeHeader(m)
	if err != nil {
		return nil, &Error{Status: 502, Reason: "base sent unusable headers", Err: err}
	}
	final := c.dataPath(f.key, gen)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return nil, &Error{Status: 500, Reason: "cache folder not writable", Err: err}
	}
	part := final + ".part"
	file, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, &Error{Status: 500, Reason: "cache folder not writable", Err: err}
	}
	c.Stats.OpenFiles.Add(1)
	_ = flock(file, unix.LOCK_SH) // in use (lockfile.go): trim leaves it alone
	l.file, l.part, l.final = file, part, final
	f.ckRec = record{size: m.Size, header: headerDigest(header)}
	return header, nil
}

// forget takes a finished fill out of the map of fills in progress.
func (f *fill) forget() {
	c := f.c
	c.mu.Lock()
	if c.fills[f.key] == f {
		delete(c.fills, f.key)
	}
	c.mu.Unlock()
}

// fail ends the fill with err: the readers get it, and the .part goes, unless it is
// kept for a resume: when the cache has closed after a checkpoint (the next start
// resumes it), or, in a shared cache, when the bytes stopped coming (resumable) and the
// fill record names the .part for the next filler.
func (f *fill) fail(err error, part string, resumable bool) {
	c := f.c
	f.forget()
	f.seal()
	c.Stats.FillErrors.Add(1)
	c.cfg.Logf("cache: fill %s: %v", f.key, err)
	keep := c.shutting.Load() && f.ckRec.seq > 0 || resumable && c.cfg.Shared && f.own != nil
	if part != "" && !keep {
		removeQuiet(part, sidecarOf(part))
	}
	select {
	case <-f.ready:
	default:
		f.mu.Lock()
		f.err, f.done = err, true
		f.mu.Unlock()
		close(f.ready)
	}
	f.advance(0, true, err)
}

// publish hands the file to the readers, unless they follow it already (a shared fill
// that took over the .part it followed).
func (f *fill) publish(file *os.File, m *Meta, written int64) {
	f.mu.Lock()
	if f.file == nil {
		f.meta = *m
		f.file = &sharedFile{f: file, refs: 1} // the fill's own reference
		f.written = written
	}
	f.mu.Unlock()
	select {
	case <-f.ready:
	default:
		close(f.ready)
	}
}

// pump copies the body into the file while readers follow it, asks the base for the
// rest when it drops, and commits the fill (or fails it). header, when not nil, is
// written first.
func (f *fill) pump(l *landing, header []byte) {
	c := f.c
	m, file, written, part := l.m, l.file, l.written, l.part
	cacheable := m.Size <= c.cfg.MaxBytes && f.from == 0 && !f.private
	if !cacheable {
		// Larger than the whole cache, a window, or private: stream it through an
		// unlinked file.
		_ = os.Remove(part)
		part = ""
	}
	if header != nil {
		if _, err := file.WriteAt(header, 0); err != nil {
			c.closeLater(file)
			f.fail(&Error{Status: 500, Reason: "cache write failed", Err: err}, part, false)
			return
		}
	}
	f.publish(file, m, written)
	if part != "" {
		f.ckMu.Lock()
		f.ckFile, f.ckPath = file, sidecarOf(part)
		f.ckMu.Unlock()
	}
	defer f.releaseFile(f.file)
	defer f.ckWG.Wait() // before the release: a checkpoint uses the file

	expected := f.end - f.from // the bytes this fill writes
	var small []byte
	if cacheable && m.Size <= c.cfg.SmallFile && written == 0 {
		small = make([]byte, 0, m.Size)
	}
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	var unannounced int64
	lastCheckpoint, retries, retriedAt := written, 0, written
	for {
		n, rerr := l.body.Read(buf)
		if n > 0 {
			if written+int64(n) > expected {
				f.fail(&Error{Status: 502, Reason: "base sent more than its Content-Length"}, part, false)
				return
			}
			if _, err := file.WriteAt(buf[:n], HeaderSize+written); err != nil {
				f.fail(fmt.Errorf("cache: write %s: %w", part, err), part, false)
				return
			}
			if small != nil {
				small = append(small, buf[:n]...)
			}
			written += int64(n)
			if written < expected {
				f.advance(int64(n), false, nil)
				if part != "" && written-lastCheckpoint >= c.ckEvery && f.checkpointLater() {
					lastCheckpoint = written
				}
			} else {
				// The last bytes are announced only once the entry is committed, so a
				// reader that saw the whole body finds the entry on its next request.
				unannounced = int64(n)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil && written < expected && f.ctx.Err() == nil && !c.shutting.Load() {
			// The base dropped or stalled: ask for the rest of this version, a few
			// times, while the readers wait for the bytes as they would for slow ones.
			if written-retriedAt >= checkpointEvery {
				retries = 0
			}
			for again := true; again && retries < maxRetries && f.ctx.Err() == nil; {
				retries++
				retriedAt = written
				c.cfg.Logf("cache: fill %s: %v after %d of %d bytes; asking for the rest (%d of %d)",
					f.key, rerr, f.from+written, f.end, retries, maxRetries)
				f.pause(retryPause << (retries - 1))
				var rest io.ReadCloser
				var err error
				rest, again, err = f.rest(f.from + written)
				if err == nil {
					l.body.Close()
					l.body, rerr = rest, nil
					c.Stats.Resumed.Add(1)
					break
				}
				rerr = fmt.Errorf("cache: resume %s at %d: %w", f.key, f.from+written, err)
			}
			if rerr == nil {
				continue
			}
		}
		if rerr != nil {
			f.fail(fmt.Errorf("cache: read %s from base: %w", f.key, rerr), part, true)
			return
		}
	}
	if written != expected {
		f.fail(fmt.Errorf("cache: %s: base sent %d of %d bytes", f.key, written, expected), part, true)
		return
	}
	f.seal()
	if cacheable {
		if err := f.commit(file, part, l.final, small); err != nil {
			f.fail(err, part, false)
			return
		}
		removeQuiet(sidecarOf(part)) // committed: a leftover would only be removed at start
	}
	f.forget()
	f.advance(unannounced, true, nil)
}

// get sends the GET and checks that it describes the version the HEAD did. When the base
// changed the file in between, it asks again (a few times) rather than mix versions.
func (f *fill) get() (*Meta, io.ReadCloser, error) {
	ctx := f.ctx
	for attempt := 0; ; attempt++ {
		f.c.Stats.Gets.Add(1)
		m, resp, err := f.c.up.get(ctx, f.target, f.from, f.end, f.want)
		if err != nil {
			return nil, nil, err
		}
		if SameVersion(f.want, m) {
			return m, resp.Body, nil
		}
		resp.Body.Close()
		if attempt == 2 || f.from > 0 {
			return nil, nil, &Error{Status: 502, Reason: "file keeps changing on the base"}
		}
		f.c.cfg.Logf("cache: %s changed on the base during the fill; asking again", f.key)
		f.c.Stats.Heads.Add(1)
		want, err := f.c.up.head(ctx, f.target)
		if err != nil {
			return nil, nil, err
		}
		f.want, f.end = want, want.Size // a window never asks again (above)
	}
}

// commit makes the .part file a complete entry: sync, rename, index.
func (f *fill) commit(file *os.File, part, final string, small []byte) error {
	c := f.c
	if err := c.fsync(file); err != nil {
		return fmt.Errorf("cache: commit %s: %w", f.key, err)
	}
	if err := os.Rename(part, final); err != nil {
		return fmt.Errorf("cache: commit %s: %w", f.key, err)
	}
	prev, _ := os.Readlink(curOf(final))
	if err := setCurrent(final); err != nil {
		// Only other processes look entries up by the pointer; the scan writes it again.
		c.cfg.Logf("cache: commit %s: %v", f.key, err)
	} else if c.cfg.Shared && prev != "" && prev != filepath.Base(final) {
		removeUnused(filepath.Join(filepath.Dir(final), filepath.Base(prev))) // the version this one replaces
	}
	if dir, err := os.Open(filepath.Dir(final)); err == nil {
		_ = c.fsync(dir)
		dir.Close()
	}
	if c.cfg.Shared {
		return nil // found through the pointer; trim keeps the bound
	}
	e := &entry{c: c, meta: f.meta, path: final}
	e.confirm(clientOf(f.ctx)) // the HEAD that started the fill was for this client
	c.closing.RLock()
	defer c.closing.RUnlock()
	if c.closed {
		return nil // on disk and complete: the next start indexes it
	}
	if small == nil {
		c.keepIdle(e, file)
	}
	old, _ := c.index.Get(f.key)
	if !c.index.Set(f.key, e, f.meta.Size) {
		c.remove(e) // dropped by the policy's buffer: not cached, readers keep their fd
	}
	c.index.Wait()
	if old != nil && old != e {
		c.remove(old)
	}
	if small != nil {
		c.mem.Set(final, small, int64(len(small))+64)
	}
	return nil
}
