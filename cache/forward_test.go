package cache

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"
)

// restrictedBase is a base that admits only some client addresses to its one file, by
// X-Forwarded-For, as Apache with mod_offload and "Require ip" does; it records what
// each request said.
type restrictedBase struct {
	*httptest.Server
	data  []byte
	allow map[string]bool
	delay time.Duration // before answering a HEAD

	mu    sync.Mutex
	heads []string // X-Forwarded-For of each HEAD
	gets  []string // and of each GET
}

func newRestrictedBase(t *testing.T, data []byte, allow ...string) *restrictedBase {
	b := &restrictedBase{data: data, allow: map[string]bool{}}
	for _, a := range allow {
		b.allow[a] = true
	}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		xff := r.Header.Get("X-Forwarded-For")
		b.mu.Lock()
		if r.Method == http.MethodHead {
			b.heads = append(b.heads, xff)
		} else {
			b.gets = append(b.gets, xff)
		}
		b.mu.Unlock()
		if r.Method == http.MethodHead {
			time.Sleep(b.delay)
		}
		if !b.allow[xff] {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(b.data)))
		if r.Method == http.MethodGet {
			w.Write(b.data)
		}
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *restrictedBase) seen() (heads, gets []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.heads...), append([]string(nil), b.gets...)
}

// TestForwardedClient: every request to the base names the client it is for, and what the
// base answered one client is never used for another: not a confirmed entry within
// Revalidate (Get and LookupFor), not a HEAD in flight.
func TestForwardedClient(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 200<<10)
	b := newRestrictedBase(t, data, "192.0.2.10")
	c, err := Open(Config{Dir: t.TempDir(), MaxBytes: 1 << 30, Base: b.URL, UserAgent: "offload/test", Timeout: 5 * time.Second, Revalidate: time.Hour, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	admitted, refused := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	get := func(client netip.Addr) error {
		h, err := c.Get(WithClient(context.Background(), client), "/f")
		if err == nil {
			got, rerr := readAll(t, h)
			if rerr != nil || !bytes.Equal(got, data) {
				t.Errorf("client %v: %d bytes, %v", client, len(got), rerr)
			}
		}
		return err
	}
	if err := get(admitted); err != nil {
		t.Fatalf("admitted client: %v", err)
	}
	if heads, gets := b.seen(); len(heads) != 1 || heads[0] != "192.0.2.10" || len(gets) != 1 || gets[0] != "192.0.2.10" {
		t.Fatalf("base saw HEADs %q, GETs %q; want each once for 192.0.2.10", heads, gets)
	}
	if h := c.LookupFor("/f", admitted); h == nil {
		t.Error("LookupFor missed the entry filled for the same client")
	} else {
		h.Release()
	}
	if h := c.LookupFor("/f", refused); h != nil {
		h.Release()
		t.Fatal("LookupFor gave another client the entry confirmed for the first")
	}
	if h := c.Lookup("/f"); h != nil {
		h.Release()
		t.Fatal("Lookup with no client gave the entry confirmed for a client")
	}
	var ce *Error
	if err := get(refused); err == nil || !asError(err, &ce) || ce.Status != 403 {
		t.Fatalf("refused client: %v, want the base's 403", err)
	}
	if err := get(admitted); err != nil {
		t.Fatalf("admitted client again: %v", err)
	}
	if heads, _ := b.seen(); len(heads) != 2 || heads[1] != "192.0.2.11" {
		t.Errorf("base saw HEADs %q; want the refused client's HEAD and none for the admitted client's repeat", heads)
	}

	// Two clients asking at once: each gets its own HEAD, and its own answer.
	b.delay = 200 * time.Millisecond
	b.mu.Lock()
	b.heads = nil
	b.mu.Unlock()
	c2, err := Open(Config{Dir: t.TempDir(), MaxBytes: 1 << 30, Base: b.URL, UserAgent: "offload/test", Timeout: 5 * time.Second, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, client := range []netip.Addr{admitted, refused} {
		wg.Go(func() {
			h, err := c2.Stat(WithClient(context.Background(), client), "/f")
			if err == nil {
				h.Release()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if errs[0] != nil || errs[1] == nil {
		t.Errorf("simultaneous HEADs: admitted %v, refused %v", errs[0], errs[1])
	}
	if heads, _ := b.seen(); len(heads) != 2 {
		t.Errorf("simultaneous HEADs of two clients: base saw %q, want one each", heads)
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}
