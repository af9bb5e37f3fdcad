package apachetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// installed are the files `make install` and a2enmod write into Debian's Apache.
var installed = []string{
	"/usr/lib/apache2/modules/mod_offload.so",
	"/etc/apache2/mods-available/offloader.load",
	"/etc/apache2/mods-available/offloader.conf",
	"/etc/apache2/mods-enabled/offloader.load",
	"/etc/apache2/mods-enabled/offloader.conf",
}

// saveFiles records the files (or symlinks) at paths and restores exactly that state when
// the test ends: the ones that did not exist are removed.
func saveFiles(t *testing.T, paths []string) {
	t.Helper()
	type saved struct {
		link, data string
		mode       os.FileMode
		exists     bool
	}
	state := map[string]saved{}
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			state[p] = saved{}
			continue
		}
		s := saved{exists: true, mode: st.Mode()}
		if st.Mode()&os.ModeSymlink != 0 {
			s.link, _ = os.Readlink(p)
		} else {
			b, _ := os.ReadFile(p)
			s.data = string(b)
		}
		state[p] = s
	}
	t.Cleanup(func() {
		for p, s := range state {
			os.Remove(p)
			switch {
			case !s.exists:
			case s.link != "":
				os.Symlink(s.link, p)
			default:
				os.WriteFile(p, []byte(s.data), s.mode.Perm())
			}
		}
	})
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebianInstall is the README's install line on Debian's own /etc/apache2: make
// install, a2enmod, configtest, a2dismod (item 1). The system is left as it was.
func TestDebianInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it installs into the system's Apache (scripts/test runs as root in CI)")
	}
	need(t, "apxs", "make", "a2enmod", "a2dismod", "apache2ctl")
	if _, err := os.Stat("/etc/apache2/mods-available"); err != nil {
		t.Skip("not Debian's Apache layout: no /etc/apache2/mods-available")
	}
	for _, readme := range []string{"../../README.md", "../README.md"} {
		b, _ := os.ReadFile(readme)
		if !strings.Contains(string(b), "sudo a2enmod offloader") {
			t.Errorf("%s does not say `sudo a2enmod offloader`, the line this test checks", readme)
		}
	}
	saveFiles(t, installed)
	dir := t.TempDir()
	for _, f := range []string{"Makefile", "mod_offload.c", "offload_pick.h", "offloader.load", "offloader.conf"} {
		data, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), data, 0o644)
	}
	os.Remove("/etc/apache2/mods-available/offloader.conf") // make install keeps an admin's edited copy
	run(t, dir, "make")
	run(t, dir, "make", "install")
	run(t, dir, "a2enmod", "offloader")
	if target, err := os.Readlink("/etc/apache2/mods-enabled/offloader.load"); err != nil || !strings.HasSuffix(target, "offloader.load") {
		t.Fatalf("a2enmod offloader made no link: %q %v", target, err)
	}
	run(t, dir, "apache2ctl", "configtest")
	if mods := run(t, dir, "apache2ctl", "-M"); !strings.Contains(mods, "offload_module") {
		t.Errorf("offload_module not loaded after a2enmod:\n%s", mods)
	}
	run(t, dir, "a2dismod", "offloader")
	if _, err := os.Lstat("/etc/apache2/mods-enabled/offloader.load"); err == nil {
		t.Errorf("a2dismod offloader left the link")
	}
	run(t, dir, "apache2ctl", "configtest")
}

// TestReadmeSnippets: every Apache configuration block of the READMEs passes configtest
// as written (issue 11: the README's lines must work as written).
func TestReadmeSnippets(t *testing.T) {
	so := buildModule(t)
	a := newApache(t)
	// The README's CGI mode lines (offload cgi) use SetEnv, AliasMatch and cgi-script.
	a.mods = append(a.mods, "env", "alias", "cgid")
	n := 0
	for _, readme := range []string{"../../README.md", "../README.md"} {
		text, err := os.ReadFile(readme)
		if err != nil {
			t.Fatal(err)
		}
		blocks := strings.Split(string(text), "```apache\n")
		for _, b := range blocks[1:] {
			snippet, _, _ := strings.Cut(b, "```")
			n++
			if out, ok := a.configTest(t, so, snippet); !ok {
				t.Errorf("%s: configtest fails on\n%s\n%s", readme, snippet, out)
			}
		}
	}
	if n < 2 {
		t.Errorf("found %d Apache snippets in the READMEs", n)
	}
}
