package main

// offload hostcheck: probes the offload hosts and keeps the host-down file that Apache's
// OffloadHostDownFile (and package redirect's HostDownFile) reads, so the base stops
// sending clients to a host that is down and takes it back when it answers again.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modoffload/offload/redirect"
)

func runHostcheck(args []string) int {
	fs := flag.NewFlagSet("hostcheck", flag.ContinueOnError)
	downFile := fs.String("down-file", "", "the host-down file to keep (required); Apache's OffloadHostDownFile")
	interval := fs.Duration("interval", 10*time.Second, "probe every host this often")
	timeout := fs.Duration("timeout", redirect.DefaultProbeTimeout, "a probe taking longer fails")
	once := fs.Bool("once", false, "probe once, write the file, exit (for a timer); exit status 1 when a host is down")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: offload hostcheck --down-file PATH [--interval 10s] [--timeout 3s] [--once] HOST...

HOST is written as in OffloadHost: [scheme://]host[:port] [weight]. Each host gets a
GET /robots.txt on its public listener (offload serve answers it without asking the base);
the hosts that fail are listed in the down file, rewritten atomically (mode 0644) whenever
that list changes.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	hosts, err := parseHostArgs(fs.Args())
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, "offload hostcheck:", err)
		return 2
	case *downFile == "":
		fmt.Fprintln(os.Stderr, "offload hostcheck: --down-file is required")
		return 2
	case *interval <= 0 || *timeout <= 0:
		fmt.Fprintln(os.Stderr, "offload hostcheck: --interval and --timeout must be more than 0")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var last map[string]error
	lastWriteErr := ""
	for {
		failed := redirect.CheckHosts(ctx, hosts, *timeout)
		if ctx.Err() != nil {
			return 0
		}
		for _, h := range hosts {
			_, was := last[h.Addr]
			err, is := failed[h.Addr]
			switch {
			case is && !was:
				log.Printf("offload hostcheck: %s://%s is down: %v", h.Scheme, h.Addr, err)
			case !is && was:
				log.Printf("offload hostcheck: %s://%s answers again", h.Scheme, h.Addr)
			}
		}
		last = failed
		if _, err := writeDownFile(*downFile, hosts, failed); err != nil {
			if err.Error() != lastWriteErr { // once, not every interval
				log.Printf("offload hostcheck: %v", err)
				lastWriteErr = err.Error()
			}
			if *once {
				return 1
			}
		} else {
			lastWriteErr = ""
		}
		if *once {
			if len(failed) > 0 {
				return 1
			}
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(*interval):
		}
	}
}

// parseHostArgs reads hosts as OffloadHost writes them; a number after a host is its
// weight, whether the shell kept it in one argument with the host or not.
func parseHostArgs(args []string) ([]redirect.Host, error) {
	words := strings.Fields(strings.Join(args, " "))
	var hosts []redirect.Host
	for i := 0; i < len(words); i++ {
		spec := words[i]
		if i+1 < len(words) {
			if _, err := strconv.Atoi(words[i+1]); err == nil {
				spec += " " + words[i+1]
				i++
			}
		}
		h, err := redirect.ParseHost(spec)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	if len(hosts) == 0 {
		return nil, errors.New("no hosts to check")
	}
	return hosts, nil
}

// writeDownFile lists the failed hosts in path, when that changes what it says: a
// temporary file in the same folder, mode 0644 (Apache's user reads it), synced and
// renamed over path, so a reader sees the old list or the new one, never half of one.
func writeDownFile(path string, hosts []redirect.Host, failed map[string]error) (bool, error) {
	var b strings.Builder
	b.WriteString("# written by offload hostcheck: the offload hosts that failed their last probe\n")
	for _, h := range hosts {
		if failed[h.Addr] != nil {
			fmt.Fprintf(&b, "%s://%s\n", h.Scheme, h.Addr)
		}
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == b.String() {
		return false, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, fmt.Errorf("down file %s: %w", path, err)
	}
	_, err = tmp.WriteString(b.String())
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return false, fmt.Errorf("down file %s: %w", path, err)
	}
	return true, nil
}
