package cache

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkLookupHit is the hit path the event loop takes with --revalidate: no network.
func BenchmarkLookupHit(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			base := newTestBase(b)
			base.put("/f", content("f", size, 1))
			c, err := Open(Config{Dir: b.TempDir(), MaxBytes: 1 << 30, Base: base.URL, Revalidate: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			h, err := c.Get(context.Background(), "/f")
			if err != nil {
				b.Fatal(err)
			}
			waitComplete(b, h)
			h.Release()
			b.ReportAllocs()
			for b.Loop() {
				h := c.Lookup("/f")
				if h == nil {
					b.Fatal("miss")
				}
				h.Release()
			}
		})
	}
}

const fillSize = 64 << 20

// BenchmarkFill fills a 64 MiB file from a base on loopback into the cache (a cold GET
// each time); compare with BenchmarkIOCopy, the same bytes with a plain io.Copy.
func BenchmarkFill(b *testing.B) {
	base := newTestBase(b)
	data := content("big", fillSize, 1)
	c, err := Open(Config{Dir: b.TempDir(), MaxBytes: 1 << 40, Base: base.URL})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.SetBytes(fillSize)
	for i := 0; b.Loop(); i++ {
		path := "/big-" + strconv.Itoa(i)
		base.put(path, data)
		h, err := c.Get(context.Background(), path)
		if err != nil {
			b.Fatal(err)
		}
		waitComplete(b, h)
		h.Release()
	}
}

// waitComplete waits, as a reader does, until the whole body has landed.
func waitComplete(tb testing.TB, h *Handle) {
	for {
		n, err := h.Available()
		if err != nil {
			tb.Fatal(err)
		}
		if n == h.Meta.Size {
			return
		}
		done := make(chan struct{})
		if h.Wait(n, func() { close(done) }) {
			<-done
		}
	}
}

func BenchmarkIOCopy(b *testing.B) {
	base := newTestBase(b)
	base.put("/big", content("big", fillSize, 1))
	b.SetBytes(fillSize)
	for b.Loop() {
		req, _ := http.NewRequest("GET", base.URL+"/big", nil)
		req.Header.Set("X-Mod-Offload-Bypass", "true")
		req.Header.Set("User-Agent", "bench")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// BenchmarkScan100k measures the start-up scan of a cache folder of 100,000 entries.
func BenchmarkScan100k(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	host := "base.example"
	for i := range n {
		key := host + "/f/" + strconv.Itoa(i)
		m := &Meta{Key: key, Size: 100, ETag: `"x"`, Stored: time.Unix(1e9, 0)}
		hdr, err := encodeHeader(m)
		if err != nil {
			b.Fatal(err)
		}
		c := &Cache{cfg: Config{Dir: dir}}
		p := c.dataPath(key, 1)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(hdr, make([]byte, 100)...), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		c, err := Open(Config{Dir: dir, MaxBytes: 1 << 30, Base: "http://" + host})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, ok := c.index.Get(host + "/f/77"); !ok {
			b.Fatal("entry not indexed")
		}
		c.Close()
		b.StartTimer()
	}
}

// BenchmarkOpen is what a process pays to open the cache folder before its first
// request, with 20,000 entries on disk: offload serve scans them; a shared cache (one
// process per request in CGI mode) reads none.
func BenchmarkOpen(b *testing.B) {
	base := newTestBase(b)
	dir := b.TempDir()
	c, err := Open(Config{Dir: dir, MaxBytes: 1 << 40, Base: base.URL, Shared: true})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 20_000 {
		key := c.key("/f" + strconv.Itoa(i))
		m := &Meta{Key: key, Size: 1, ETag: `"x"`, Stored: time.Now()}
		hdr, _ := encodeHeader(m)
		final := c.dataPath(key, int64(i+1))
		os.MkdirAll(filepath.Dir(final), 0o755)
		if err := os.WriteFile(final, append(hdr, 'x'), 0o644); err != nil {
			b.Fatal(err)
		}
		setCurrent(final)
	}
	c.Close()
	for _, shared := range []bool{false, true} {
		b.Run(map[bool]string{false: "serve", true: "shared"}[shared], func(b *testing.B) {
			for b.Loop() {
				c, err := Open(Config{Dir: dir, MaxBytes: 1 << 40, Base: base.URL, Shared: shared})
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// BenchmarkSharedRequest is the cache's part of one CGI request for a cached 1 MiB
// file: open the shared cache, HEAD the base (on loopback), open the entry by its name,
// read the body, close.
func BenchmarkSharedRequest(b *testing.B) {
	base := newTestBase(b)
	data := content("f", 1<<20, 1)
	base.put("/f", data)
	dir := b.TempDir()
	cfg := Config{Dir: dir, MaxBytes: 1 << 30, Base: base.URL, Shared: true}
	ctx := context.Background()
	for b.Loop() {
		c, err := Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		h, err := c.Get(ctx, "/f")
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, h.Reader(ctx, 0, h.Meta.Size)); err != nil || n != int64(len(data)) {
			b.Fatal(n, err)
		}
		h.Release()
		c.Drain(ctx)
		c.Close()
	}
	if _, gets := base.counts("/f"); gets != 1 {
		b.Errorf("%d GETs", gets)
	}
}
