package cache

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// docSetup is a base and a local copy of its web space: root is the --docroot folder,
// outside a folder next to it that no request may reach.
type docSetup struct {
	b             *testBase
	root, outside string
}

func newDocSetup(t *testing.T) *docSetup {
	t.Helper()
	top := t.TempDir()
	d := &docSetup{b: newTestBase(t), root: filepath.Join(top, "www"), outside: filepath.Join(top, "outside")}
	os.MkdirAll(d.root, 0o755)
	os.MkdirAll(d.outside, 0o755)
	return d
}

// publish puts data on the base at path and, when local is not nil, local in the copy
// with the base's modification time (as rsync -a leaves it).
func (d *docSetup) publish(t *testing.T, path string, data, local []byte) {
	t.Helper()
	d.b.put(path, data)
	if local == nil {
		return
	}
	p := filepath.Join(d.root, filepath.FromSlash(path))
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, local, 0o644); err != nil {
		t.Fatal(err)
	}
	d.b.mu.Lock()
	mt := d.b.mtime[path]
	d.b.mu.Unlock()
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func getFor(c *Cache, path string, client netip.Addr) (*Handle, error) {
	ctx, cancel := context.WithTimeout(WithClient(context.Background(), client), 10*time.Second)
	defer cancel()
	return c.Get(ctx, path)
}

// TestDocRoot: what is served from the local copy, what from the cache, and what not at
// all. Local bytes differ from the base's in every case (same length and date), so the
// bytes say where an answer came from.
func TestDocRoot(t *testing.T) {
	secret := bytes.Repeat([]byte("S"), 70<<10)
	for _, tc := range []struct {
		name   string
		path   string
		follow bool
		noAt2  bool                               // take the O_NOFOLLOW walk, as without openat2
		setup  func(*testing.T, *docSetup) []byte // returns the base's bytes for path
		status int                                // an *Error's status expected; 0 for a body
		local  bool                               // served from the copy: no GET
	}{
		{name: "same length and date", path: "/pub/a.iso", local: true, setup: func(t *testing.T, d *docSetup) []byte {
			base := content("a", 70<<10, 1)
			d.publish(t, "/pub/a.iso", base, content("a-local", 70<<10, 1))
			return base
		}},
		{name: "walk without openat2", path: "/pub/a.iso", noAt2: true, local: true, setup: func(t *testing.T, d *docSetup) []byte {
			base := content("a", 70<<10, 1)
			d.publish(t, "/pub/a.iso", base, content("a-local", 70<<10, 1))
			return base
		}},
		{name: "other length fills the cache", path: "/b", setup: func(t *testing.T, d *docSetup) []byte {
			base := content("b", 70<<10, 1)
			d.publish(t, "/b", base, content("b", 60<<10, 1))
			return base
		}},
		{name: "other date fills the cache", path: "/c", setup: func(t *testing.T, d *docSetup) []byte {
			base := content("c", 70<<10, 1)
			d.publish(t, "/c", base, content("c-local", 70<<10, 1))
			old := time.Unix(1_600_000_000, 0)
			os.Chtimes(filepath.Join(d.root, "c"), old, old)
			return base
		}},
		{name: "missing locally fills the cache", path: "/m", setup: func(t *testing.T, d *docSetup) []byte {
			base := content("m", 70<<10, 1)
			d.publish(t, "/m", base, nil)
			return base
		}},
		{name: "refused by the base", path: "/r", status: 403, setup: func(t *testing.T, d *docSetup) []byte {
			d.publish(t, "/r", content("r", 70<<10, 1), content("r-local", 70<<10, 1))
			d.b.status["/r"] = 401
			return nil
		}},
		{name: "removed on the base", path: "/gone", status: 404, setup: func(t *testing.T, d *docSetup) []byte {
			d.publish(t, "/gone", content("g", 70<<10, 1), content("g-local", 70<<10, 1))
			d.b.del("/gone")
			return nil
		}},
		{name: "symlink within the folder", path: "/in-link", local: true, setup: func(t *testing.T, d *docSetup) []byte {
			base := content("l", 70<<10, 1)
			d.publish(t, "/real/l", base, content("l-local", 70<<10, 1))
			d.b.put("/in-link", base)
			d.b.mtime["/in-link"] = d.b.mtime["/real/l"]
			os.Symlink("real/l", filepath.Join(d.root, "in-link"))
			return base
		}},
		{name: "symlink within the folder, walk refuses it", path: "/in-link", noAt2: true, setup: func(t *testing.T, d *docSetup) []byte {
			base := content("l", 70<<10, 1)
			d.publish(t, "/real/l", base, content("l-local", 70<<10, 1))
			d.b.put("/in-link", base)
			d.b.mtime["/in-link"] = d.b.mtime["/real/l"]
			os.Symlink("real/l", filepath.Join(d.root, "in-link"))
			return base
		}},
		{name: "absolute symlink out", path: "/abs", setup: func(t *testing.T, d *docSetup) []byte {
			return d.escape(t, "/abs", secret, func(target string) { os.Symlink(target, filepath.Join(d.root, "abs")) })
		}},
		{name: "relative symlink out", path: "/rel", setup: func(t *testing.T, d *docSetup) []byte {
			return d.escape(t, "/rel", secret, func(string) { os.Symlink("../outside/secret", filepath.Join(d.root, "rel")) })
		}},
		{name: "folder symlink out", path: "/dir/secret", setup: func(t *testing.T, d *docSetup) []byte {
			return d.escape(t, "/dir/secret", secret, func(string) { os.Symlink(d.outside, filepath.Join(d.root, "dir")) })
		}},
		{name: "relative symlink out, walk", path: "/rel", noAt2: true, setup: func(t *testing.T, d *docSetup) []byte {
			return d.escape(t, "/rel", secret, func(string) { os.Symlink("../outside/secret", filepath.Join(d.root, "rel")) })
		}},
		{name: "folder symlink out, walk", path: "/dir/secret", noAt2: true, setup: func(t *testing.T, d *docSetup) []byte {
			return d.escape(t, "/dir/secret", secret, func(string) { os.Symlink(d.outside, filepath.Join(d.root, "dir")) })
		}},
		{name: "dot-dot in the path", path: "/../outside/secret", setup: func(t *testing.T, d *docSetup) []byte {
			return d.escape(t, "/../outside/secret", secret, func(string) {})
		}},
		{name: "symlink out followed when allowed", path: "/rel", follow: true, local: true, setup: func(t *testing.T, d *docSetup) []byte {
			d.escape(t, "/rel", secret, func(string) { os.Symlink("../outside/secret", filepath.Join(d.root, "rel")) })
			return secret
		}},
		{name: "a FIFO is no file", path: "/fifo", setup: func(t *testing.T, d *docSetup) []byte {
			base := content("fifo", 70<<10, 1)
			d.b.put("/fifo", base)
			if err := unix.Mkfifo(filepath.Join(d.root, "fifo"), 0o644); err != nil {
				t.Skip("mkfifo:", err)
			}
			return base
		}},
		{name: "a folder is no file", path: "/pub", setup: func(t *testing.T, d *docSetup) []byte {
			base := content("pub", 70<<10, 1)
			d.b.put("/pub", base)
			os.MkdirAll(filepath.Join(d.root, "pub"), 0o755)
			return base
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.noAt2 {
				openat2 = func(int, string, *unix.OpenHow) (int, error) { return -1, unix.ENOSYS }
				t.Cleanup(func() { openat2 = unix.Openat2 })
			}
			d := newDocSetup(t)
			want := tc.setup(t, d)
			c := openCache(t, d.b, t.TempDir(), func(cfg *Config) { cfg.DocRoot, cfg.FollowSymlinks = d.root, tc.follow })
			h, err := get(t, c, tc.path)
			if tc.status != 0 {
				var ce *Error
				if !errors.As(err, &ce) || ce.Status != tc.status {
					t.Fatalf("got %v, want a %d", err, tc.status)
				}
				if c.Stats.Local.Load() != 0 {
					t.Error("served from the local copy")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := readAll(t, h)
			if err != nil {
				t.Fatal(err)
			}
			_, gets := d.b.counts(tc.path)
			switch {
			case bytes.Equal(got, secret) && !tc.follow:
				t.Fatal("served a file outside the docroot")
			case tc.local && (gets != 0 || c.Stats.Local.Load() != 1):
				t.Fatalf("not served from the local copy: %d GETs, %d local", gets, c.Stats.Local.Load())
			case !tc.local && (gets != 1 || c.Stats.Local.Load() != 0 || !bytes.Equal(got, want)):
				t.Fatalf("not filled from the base: %d GETs, %d local, bytes equal %v", gets, c.Stats.Local.Load(), bytes.Equal(got, want))
			case tc.local && tc.follow && !bytes.Equal(got, secret):
				t.Fatal("the followed symlink's file was not served")
			case tc.local && !tc.follow && bytes.Equal(got, want):
				t.Fatal("local bytes expected, got the base's")
			}
			if n := c.Stats.OpenFiles.Load(); n != 0 && tc.local {
				waitOpenFiles(t, c, 0)
			}
		})
	}
}

// escape puts a secret file outside the docroot and, at path on the base, a file of the
// same length and date with other bytes; link makes the path in the docroot lead to the
// secret. It returns the base's bytes.
func (d *docSetup) escape(t *testing.T, path string, secret []byte, link func(target string)) []byte {
	t.Helper()
	target := filepath.Join(d.outside, "secret")
	os.WriteFile(target, secret, 0o644)
	base := bytes.Repeat([]byte("B"), len(secret))
	d.b.put(path, base)
	d.b.mu.Lock()
	mt := d.b.mtime[path]
	d.b.mu.Unlock()
	os.Chtimes(target, mt, mt)
	link(target)
	return base
}

func waitOpenFiles(t *testing.T, c *Cache, n int64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); c.Stats.OpenFiles.Load() != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d files open, want %d", c.Stats.OpenFiles.Load(), n)
		}
	}
}

// TestDocRootBaseDown: with the base down, no local file is served (the base decides
// who may have it); a copy in the cache is served stale as without a docroot.
func TestDocRootBaseDown(t *testing.T) {
	d := newDocSetup(t)
	data := content("down", 70<<10, 1)
	d.publish(t, "/down", data, data)
	c := openCache(t, d.b, t.TempDir(), func(cfg *Config) { cfg.DocRoot = d.root })
	d.b.srv.Close()
	_, err := get(t, c, "/down")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 502 || c.Stats.Local.Load() != 0 {
		t.Fatalf("base down: %v, %d local; want a 502 and no local file", err, c.Stats.Local.Load())
	}
}

// TestDocRootRevalidate: with Revalidate, a HEAD that found the local file current is
// trusted for its client only, and only while the path names the same file.
func TestDocRootRevalidate(t *testing.T) {
	d := newDocSetup(t)
	data := content("rv", 70<<10, 1)
	d.publish(t, "/rv", data, data)
	c := openCache(t, d.b, t.TempDir(), func(cfg *Config) { cfg.DocRoot, cfg.Revalidate = d.root, time.Hour })
	alice, bob := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	read := func(client netip.Addr) {
		t.Helper()
		h, err := getFor(c, "/rv", client)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := readAll(t, h); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read: %v", err)
		}
	}
	read(alice)
	read(alice)
	if heads, _ := d.b.counts("/rv"); heads != 1 {
		t.Fatalf("%d HEADs for two requests of one client, want 1", heads)
	}
	read(bob)
	if heads, _ := d.b.counts("/rv"); heads != 2 {
		t.Fatalf("another client's request was not checked: %d HEADs", heads)
	}
	// rsync replaces the file (a new inode): checked again.
	p := filepath.Join(d.root, "rv")
	os.WriteFile(p+".tmp", data, 0o644)
	st, _ := os.Stat(p)
	os.Chtimes(p+".tmp", st.ModTime(), st.ModTime())
	os.Rename(p+".tmp", p)
	read(bob)
	if heads, gets := d.b.counts("/rv"); heads != 3 || gets != 0 {
		t.Fatalf("a replaced file was trusted: %d HEADs, %d GETs", heads, gets)
	}
	if c.Stats.Local.Load() != 4 {
		t.Errorf("%d local answers, want 4", c.Stats.Local.Load())
	}
}

// TestDocRootMatchRule: the rule for "the local file is the base's version".
func TestDocRootMatchRule(t *testing.T) {
	lm := "Wed, 01 May 2024 12:00:00 GMT"
	sec := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).Unix()
	for _, tc := range []struct {
		name string
		size int64
		mt   int64
		nsec int64
		m    Meta
		ok   bool
	}{
		{"equal", 10, sec, 0, Meta{Size: 10, LastModified: lm, ETag: `"anything"`}, true},
		{"sub-second mtime", 10, sec, 999_999_999, Meta{Size: 10, LastModified: lm}, true},
		{"a second later", 10, sec + 1, 0, Meta{Size: 10, LastModified: lm}, false},
		{"longer", 11, sec, 0, Meta{Size: 10, LastModified: lm}, false},
		{"ETag only", 10, sec, 0, Meta{Size: 10, ETag: `"e"`}, false},
	} {
		st := &unix.Stat_t{Size: tc.size, Mtim: unix.Timespec{Sec: tc.mt, Nsec: tc.nsec}}
		if got := matches(st, &tc.m) == ""; got != tc.ok {
			t.Errorf("%s: match %v, want %v (%s)", tc.name, got, tc.ok, matches(st, &tc.m))
		}
	}
}

// TestDocRootHandleOffsets: a local file's handle has its body at offset 0; the cache's
// at HeaderSize, so the server's FileOffset and Fd work on both unchanged.
func TestDocRootHandleOffsets(t *testing.T) {
	d := newDocSetup(t)
	data := content("off", 100<<10, 1)
	d.publish(t, "/local", data, data)
	d.b.put("/cached", data)
	c := openCache(t, d.b, t.TempDir(), func(cfg *Config) { cfg.DocRoot = d.root })
	for path, at := range map[string]int64{"/local": 0, "/cached": HeaderSize} {
		h, err := get(t, c, path)
		if err != nil {
			t.Fatal(err)
		}
		if got := h.FileOffset(123); got != at+123 {
			t.Errorf("%s: FileOffset(123) = %d, want %d", path, got, at+123)
		}
		if got, err := readAll(t, h); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: read %v", path, err)
		}
	}
}
