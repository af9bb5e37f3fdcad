package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// cacheBodies is the body bytes of the data files under a cache folder.
func cacheBodies(t *testing.T, dir string) (total int64) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasSuffix(p, ".lock") && !strings.HasSuffix(p, ".resume") {
			if info, err := d.Info(); err == nil && info.Size() > 4096 {
				total += info.Size() - 4096
			}
		}
		return nil
	})
	return total
}

func runTrimCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(offloadBin, append([]string{"cache", "trim"}, args...)...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// TestCacheTrimCommand: offload cache trim reads serve's config file, leaves alone what
// a running offload serve has open, trims to the bound once it stopped, and serve then
// serves every file right again (filling what was trimmed).
func TestCacheTrimCommand(t *testing.T) {
	b := startBase(t)
	files := map[string][]byte{}
	for i := range 6 {
		data := make([]byte, 1<<20)
		rand.Read(data)
		name := fmt.Sprintf("/f%d.bin", i)
		files[name] = data
		os.WriteFile(filepath.Join(b.dir, name), data, 0o644)
	}
	dir := t.TempDir()
	conf := filepath.Join(t.TempDir(), "offload.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("base = %s\ncache = %s\ncache-size = 3M # trim's bound\nmax-dupes = 1\nlisten = 127.0.0.1:1\n", b.url, dir)), 0o644)
	d := startDaemon(t, "--base", b.url, "--cache", dir, "--cache-size", "100M")
	check := func() {
		t.Helper()
		for name, data := range files {
			if sum, code := sha(t, d.url+name); code != 200 || sum != sha256.Sum256(data) {
				t.Fatalf("%s: %d, wrong bytes", name, code)
			}
		}
	}
	check()
	if got := cacheBodies(t, dir); got != 6<<20 {
		t.Fatalf("%d body bytes cached", got)
	}
	// serve keeps each data file open for a while after its download: in use.
	out, code := runTrimCmd(t, "--config", conf)
	if code != 0 || !strings.Contains(out, "removed 0 entries") || !strings.Contains(out, "6 in use") {
		t.Errorf("trim beside serve: exit %d\n%s", code, out)
	}
	check()
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
	out, code = runTrimCmd(t, "--config", conf)
	if code != 0 || !strings.Contains(out, "removed 3 entries") {
		t.Errorf("trim: exit %d\n%s", code, out)
	}
	if got := cacheBodies(t, dir); got > 3<<20 {
		t.Errorf("%d body bytes after trimming to 3 MiB", got)
	}
	// The command line wins over the file.
	if out, code = runTrimCmd(t, "--config", conf, "--cache-size", "1M"); code != 0 || !strings.Contains(out, "removed 2 entries") {
		t.Errorf("trim --cache-size 1M: exit %d\n%s", code, out)
	}
	gets := b.gets.Load()
	d = startDaemon(t, "--base", b.url, "--cache", dir, "--cache-size", "100M")
	check()
	if n := b.gets.Load() - gets; n != 5 {
		t.Errorf("%d GETs after the trims, want 5 (the trimmed files)", n)
	}
}

func TestCacheTrimErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("base = http://x\n\ncache-size = lots\n"), 0o644)
	none := filepath.Join(dir, "none.conf")
	os.WriteFile(none, []byte("base = http://x\ncache = "+dir+"\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"--config", bad}, "bad.conf:3: cache-size", 2},
		{[]string{"--config", none}, "--cache-size is required", 2},
		{[]string{"--cache", filepath.Join(dir, "missing"), "--cache-size", "1G"}, "not a folder", 1},
		{[]string{"--cache", dir, "--cache-size", "1G", "extra"}, "unexpected argument", 2},
	} {
		out, code := runTrimCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", tc.args, code, out, tc.code, tc.want)
		}
	}
	out, _ := exec.Command(offloadBin, "cache").CombinedOutput()
	if !bytes.Contains(out, []byte("usage: offload cache trim")) {
		t.Errorf("offload cache: %q", out)
	}
}
