package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testBase is a real base server on 127.0.0.1 serving generated files from memory. It
// counts HEADs and GETs per path and can change, delete, delay or cut a file.
type testBase struct {
	t   testing.TB
	srv *http.Server
	ln  net.Listener
	URL string

	mu     sync.Mutex
	files  map[string][]byte
	mtime  map[string]time.Time
	heads  map[string]int
	gets   map[string]int
	cut    map[string]int           // send only this many bytes of a GET, then drop
	delay  time.Duration            // before each GET's body
	gate   map[string]chan struct{} // a GET for the path waits on this before its body
	noETag bool
	// throttle, when set, sends whole-file GETs in 64 KiB pieces this far apart (ranged
	// GETs go at full speed): a slow base for the far-range tests.
	throttle time.Duration
	ranged   map[string]int // GETs with a Range header, by path
	// headHook, when set, runs before a HEAD is answered, with the path and its count.
	headHook func(path string, n int)
	status   map[string]int // answer this status instead
	totalG   atomic.Int64
}

func newTestBase(t testing.TB) *testBase {
	t.Helper()
	b := &testBase{t: t, files: map[string][]byte{}, mtime: map[string]time.Time{}, heads: map[string]int{},
		gets: map[string]int{}, cut: map[string]int{}, status: map[string]int{}, gate: map[string]chan struct{}{},
		ranged: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.ln = ln
	b.URL = "http://" + ln.Addr().String()
	b.srv = &http.Server{Handler: b}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// content is n deterministic bytes that differ by name and version.
func content(name string, n int, version int) []byte {
	seed := sha256.Sum256([]byte(fmt.Sprintf("%s#%d", name, version)))
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:16])))
	out := make([]byte, (n+7)&^7)
	for i := 0; i < len(out); i += 8 {
		binary.LittleEndian.PutUint64(out[i:], rng.Uint64())
	}
	return out[:n]
}

func (b *testBase) put(path string, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files[path] = data
	// A new second each version, so Last-Modified differs too.
	b.mtime[path] = time.Unix(1_700_000_000+int64(len(b.mtime)*1000)+int64(b.heads[path]+b.gets[path]+len(data)), 0)
}

func (b *testBase) del(path string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.files, path)
}

func (b *testBase) counts(path string) (heads, gets int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.heads[path], b.gets[path]
}

func (b *testBase) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Mod-Offload-Bypass") != "true" || r.Header.Get("User-Agent") == "" {
		http.Error(w, "missing bypass header", 400)
		return
	}
	path := r.URL.EscapedPath()
	b.mu.Lock()
	gate := b.gate[path]
	b.mu.Unlock()
	if r.Method == http.MethodGet && gate != nil {
		b.mu.Lock()
		b.gets[path]++ // counted as it arrives, before it waits
		b.totalG.Add(1)
		b.mu.Unlock()
		<-gate
	}
	b.mu.Lock()
	if r.Method == http.MethodHead {
		b.heads[path]++
	} else if gate == nil {
		b.gets[path]++
		b.totalG.Add(1)
	}
	data, ok := b.files[path]
	mtime := b.mtime[path]
	cut, hasCut := b.cut[path]
	delay, status, noETag, throttle := b.delay, b.status[path], b.noETag, b.throttle
	headHook, nHeads := b.headHook, b.heads[path]
	if r.Method == http.MethodGet && r.Header.Get("Range") != "" {
		b.ranged[path]++
	}
	b.mu.Unlock()
	if r.Method == http.MethodHead && headHook != nil {
		headHook(path, nHeads)
	}
	if status != 0 {
		if status == 401 {
			w.Header().Set("WWW-Authenticate", `Basic realm="x"`)
		}
		if status/100 == 3 {
			w.Header().Set("Location", "http://elsewhere.example/x")
		}
		w.WriteHeader(status)
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	if !noETag {
		w.Header().Set("ETag", `"`+strconv.Itoa(len(data))+"-"+strconv.FormatInt(mtime.Unix(), 16)+`"`)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodGet && throttle > 0 && r.Header.Get("Range") == "" {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Header().Set("Last-Modified", mtime.UTC().Format(http.TimeFormat))
		for i := 0; i < len(data); i += 64 << 10 {
			if _, err := w.Write(data[i:min(i+64<<10, len(data))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(throttle)
		}
		return
	}
	if r.Method == http.MethodGet {
		time.Sleep(delay)
		if hasCut {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Header().Set("Last-Modified", mtime.UTC().Format(http.TimeFormat))
			w.WriteHeader(200)
			w.Write(data[:cut])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // drop the connection mid-body
		}
	}
	http.ServeContent(w, r, "", mtime, bytes.NewReader(data))
}
