package cache

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// heldBase is a base whose GETs never finish while the test holds them: a whole-file
// GET sends nothing, a ranged GET sends its head and then waits before its body. So a
// fill lands nothing, and a window stays under way for as long as the test likes.
type heldBase struct {
	url      string
	data     []byte
	holdFill chan struct{} // closed to let whole-file GETs go on
	mu       sync.Mutex
	hold     chan struct{} // ranged GETs wait for this one to close; a new one for later GETs
	ranged   int
	// otherSize makes ranged GETs describe a file of another size, as a base that
	// ignores If-Range would after the file changed.
	otherSize bool
}

// releaseRanged lets the ranged GETs under way go on; later ones wait again.
func (hb *heldBase) releaseRanged() {
	hb.mu.Lock()
	close(hb.hold)
	hb.hold = make(chan struct{})
	hb.mu.Unlock()
}

func newHeldBase(t *testing.T, data []byte) *heldBase {
	t.Helper()
	hb := &heldBase{data: data, hold: make(chan struct{}), holdFill: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hb.url = "http://" + ln.Addr().String()
	mod := time.Unix(1_700_000_000, 0)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"held"`)
		if r.Method == http.MethodHead {
			http.ServeContent(w, r, "", mod, bytes.NewReader(hb.data))
			return
		}
		rng := r.Header.Get("Range")
		if rng == "" {
			select {
			case <-hb.holdFill:
			case <-r.Context().Done():
				return
			}
			http.ServeContent(w, r, "", mod, bytes.NewReader(hb.data))
			return
		}
		hb.mu.Lock()
		hb.ranged++
		hold, total := hb.hold, len(hb.data)
		if hb.otherSize {
			total++
		}
		hb.mu.Unlock()
		a, b, _ := strings.Cut(strings.TrimPrefix(rng, "bytes="), "-")
		from, _ := strconv.ParseInt(a, 10, 64)
		last, _ := strconv.ParseInt(b, 10, 64)
		w.Header().Set("Last-Modified", mod.UTC().Format(http.TimeFormat))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, last, total))
		w.Header().Set("Content-Length", strconv.FormatInt(last-from+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.(http.Flusher).Flush()
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
		w.Write(hb.data[from : last+1])
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return hb
}

// TestWindowCaps: readers far ahead of a fill get windows up to the cap per client
// address and the cap in all, exactly; one more waits for the fill instead.
func TestWindowCaps(t *testing.T) {
	data := content("caps", 24<<20, 1)
	hb := newHeldBase(t, data)
	c, err := Open(Config{Dir: t.TempDir(), MaxBytes: 1 << 30, Base: hb.url, Timeout: 5 * time.Second,
		Windows: 3, WindowsPerClient: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(hb.holdFill); hb.releaseRanged(); c.Close() })
	a, b, d := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	var held []*Handle
	defer func() {
		for _, h := range held {
			h.Release()
		}
	}()
	// ask reports whether client got a window: a reader without one waits for the fill,
	// which lands nothing while the base is held, so its short wait ends in an error.
	ask := func(client netip.Addr, from int64) bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(WithClient(context.Background(), client), 500*time.Millisecond)
		defer cancel()
		h, err := c.GetFrom(ctx, "/f", from, 0)
		if err != nil {
			return false
		}
		if h.Base() != from {
			t.Fatalf("%s from %d: a handle from %d", client, from, h.Base())
		}
		held = append(held, h)
		return true
	}
	const far = 20 << 20
	for i, tc := range []struct {
		client netip.Addr
		want   bool
	}{
		{a, true},  // a's first
		{a, true},  // a's second: at the per-client cap
		{a, false}, // one over it
		{b, true},  // another client: the third in all, at that cap
		{d, false}, // one over the cap in all
		{b, false},
	} {
		if got := ask(tc.client, far+int64(i)*1000); got != tc.want {
			t.Errorf("request %d from %s: window %v, want %v (%d under way)", i+1, tc.client, got, tc.want, c.Stats.Windows.Load())
		}
	}
	// Once the windows are done, the caps are free again: for the client that was at
	// its cap too. (The fill is still held: every reader is still far ahead of it.)
	hb.releaseRanged()
	for i, h := range held {
		got, err := readAllFrom(t, h)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[h.Base():]) {
			t.Errorf("window %d: bytes differ", i)
		}
		h.Release()
	}
	held = nil
	for deadline := time.Now().Add(5 * time.Second); c.Stats.Windows.Load() != 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := c.Stats.Windows.Load(); n != 0 {
		t.Errorf("%d windows counted after they ended", n)
	}
	for _, client := range []netip.Addr{a, a, d} {
		if !ask(client, far) {
			t.Errorf("%s: no window once the earlier ones ended", client)
		}
	}
}

// readAllFrom reads a window handle's bytes from its base to its end.
func readAllFrom(t *testing.T, h *Handle) ([]byte, error) {
	t.Helper()
	var out []byte
	for off := h.Base(); off < h.End(); {
		avail, err := h.Available()
		if err != nil {
			return out, err
		}
		if avail > off {
			buf := make([]byte, min(avail, h.End())-off)
			if _, err := h.File().ReadAt(buf, h.FileOffset(off)); err != nil {
				return out, err
			}
			out = append(out, buf...)
			off += int64(len(buf))
			continue
		}
		woke := make(chan struct{})
		if h.Wait(avail, func() { close(woke) }) {
			select {
			case <-woke:
			case <-time.After(10 * time.Second):
				return out, fmt.Errorf("window reader never woken at %d", off)
			}
		}
	}
	return out, nil
}

// TestWindowOfAnotherFileRefused: a ranged answer that describes a file of another size
// than the HEAD did is not used as a window; the reader waits for the fill instead.
func TestWindowOfAnotherFileRefused(t *testing.T) {
	data := content("other", 24<<20, 1)
	for _, otherSize := range []bool{false, true} {
		hb := newHeldBase(t, data)
		hb.otherSize = otherSize
		c, err := Open(Config{Dir: t.TempDir(), MaxBytes: 1 << 30, Base: hb.url, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		h, err := c.GetFrom(ctx, "/f", 20<<20, 0)
		cancel()
		if got := err == nil; got == otherSize {
			t.Errorf("ranged answer for a file of another size %v: window %v (%v)", otherSize, got, err)
		}
		if h != nil {
			h.Release()
		}
		close(hb.holdFill)
		hb.releaseRanged()
		c.Close()
	}
}
