package redirect

import (
	"bufio"
	"errors"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// downFile is the host-down file (Config.HostDownFile), read again when it changes.
type downFile struct {
	path string
	logf func(format string, args ...any)

	mu     sync.Mutex      // protects the fields below
	mtime  time.Time       // of the file last read
	size   int64           // of the file last read
	set    map[string]bool // Host.Addr → listed
	failed string          // the last failure to read, logged once per change
}

// down returns the hosts the file lists (by Host.Addr); no file: none. A file that cannot
// be read leaves the last state, and says so once per change, as does each line that
// names no host.
func (d *downFile) down(hosts []Host) map[string]bool {
	if d.path == "" {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := os.Stat(d.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.set, d.mtime, d.size, d.failed = nil, time.Time{}, 0, ""
		return nil
	case err != nil:
		d.fail(err.Error())
		return d.set
	case d.set != nil && st.ModTime().Equal(d.mtime) && st.Size() == d.size:
		return d.set
	}
	lines, err := readLines(d.path)
	if err != nil {
		d.fail(err.Error() + " at " + st.ModTime().String())
		return d.set
	}
	set := map[string]bool{}
	for _, line := range lines {
		named := false
		for _, h := range hosts {
			if lineNames(line, h) {
				set[h.Addr], named = true, true
			}
		}
		if !named {
			d.logf("redirect: host-down file %s: %q names no offload host (want [scheme://]host[:port] as in Hosts); it takes no host out of rotation", d.path, line)
		}
	}
	d.set, d.mtime, d.size, d.failed = set, st.ModTime(), st.Size(), ""
	return set
}

func (d *downFile) fail(why string) {
	if why != d.failed {
		d.logf("redirect: host-down file %s: cannot read it (%s); the hosts it lists stay as they were", d.path, why)
		d.failed = why
	}
}

// readLines returns the file's non-empty lines, each cut at '#' and at its first blank
// (a weight copied from Hosts is ignored).
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if fields := strings.Fields(line); len(fields) > 0 {
			lines = append(lines, fields[0])
		}
	}
	return lines, sc.Err()
}

// lineNames reports whether a down-file entry names h: the same host name and, when
// written, the same scheme and port (a bare host names all its ports).
func lineNames(entry string, h Host) bool {
	scheme, rest, hasScheme := strings.Cut(entry, "://")
	if !hasScheme {
		scheme, rest = "", entry
	}
	rest = strings.TrimSuffix(rest, "/")
	name, port := rest, ""
	if host, p, err := net.SplitHostPort(rest); err == nil {
		name, port = host, p
	}
	name = strings.Trim(name, "[]")
	return strings.EqualFold(name, h.name()) && (scheme == "" || strings.EqualFold(scheme, h.Scheme)) &&
		(port == "" || port == h.port())
}
