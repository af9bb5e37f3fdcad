package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// slotsFolder is where, under the cache folder, CGI mode keeps its download slots
// (limiter.Slots): offload serve's scan leaves it alone, trim sweeps it.
const slotsFolder = "slots"

// runCache is `offload cache <subcommand>`.
func runCache(args []string) int {
	if len(args) == 0 || args[0] != "trim" {
		fmt.Fprint(os.Stderr, "usage: offload cache trim [--cache DIR] --cache-size N [--config FILE]\n")
		return 2
	}
	return runTrim(args[1:], os.Stdout, os.Stderr)
}

// trimConfig is what `offload cache trim` is told: the cache settings of serve's.
type trimConfig struct {
	Cache     string
	CacheSize int64
}

// parseTrimConfig reads the flags, then the --config file for what they did not give.
// The file is serve's (and CGI mode's): trim takes cache and cache-size from it and
// passes over the other settings.
func parseTrimConfig(args []string, stderr io.Writer) (*trimConfig, error) {
	cfg := &trimConfig{Cache: "/var/cache/offload"}
	fset := flag.NewFlagSet("offload cache trim", flag.ContinueOnError)
	fset.SetOutput(stderr)
	var configFile string
	fset.StringVar(&cfg.Cache, "cache", cfg.Cache, "cache folder")
	fset.Var(sizeFlag{&cfg.CacheSize}, "cache-size", "remove entries until the bodies take at most this, e.g. 500G (required)")
	fset.StringVar(&configFile, "config", "", "offload's config file (name = value lines); flags win")
	if err := fset.Parse(args); err != nil {
		return nil, err
	}
	if fset.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fset.Arg(0))
	}
	if configFile != "" {
		set := map[string]bool{}
		fset.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if err := readCacheSettings(configFile, fset, set); err != nil {
			return nil, err
		}
	}
	switch {
	case cfg.Cache == "":
		return nil, errors.New("--cache must name a folder")
	case cfg.CacheSize <= 0:
		return nil, errors.New("--cache-size is required (the bound to trim to, e.g. 500G), on the command line or in --config")
	}
	return cfg, nil
}

// readCacheSettings applies the cache and cache-size lines of a config file (in
// readConfigFile's syntax) to the flags not set on the command line; the other lines
// are serve's.
func readCacheSettings(path string, fset *flag.FlagSet, set map[string]bool) error {
	return readSettings(path, fset, set, func(name string) (bool, error) {
		return name == "cache" || name == "cache-size", nil
	})
}

func runTrim(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseTrimConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "offload cache trim:", err)
		return 2
	}
	if st, err := os.Stat(cfg.Cache); err != nil || !st.IsDir() {
		fmt.Fprintf(stderr, "offload cache trim: --cache %s: not a folder\n", cfg.Cache)
		return 1
	}
	began := time.Now()
	st, err := cache.Trim(cfg.Cache, cfg.CacheSize, nil)
	if err != nil {
		fmt.Fprintln(stderr, "offload cache trim:", err)
		return 1
	}
	swept := 0
	if slots := filepath.Join(cfg.Cache, slotsFolder); dirExists(slots) {
		if s, err := limiter.NewSlots(slots, 1); err == nil {
			// A slot file is held for as long as its download runs: one nobody holds
			// is free whatever its age; the minute spares those being taken now.
			swept, _ = s.Sweep(time.Minute)
		}
	}
	fmt.Fprintf(stdout, "offload cache trim: %s: %d entries, %s before, %s after (bound %s): removed %d entries, %d leftovers, %d free download slots; %d in use left alone; %v\n",
		cfg.Cache, st.Entries, bytesText(st.Before), bytesText(st.After), bytesText(cfg.CacheSize), st.Removed, st.Garbage,
		swept, st.InUse, time.Since(began).Round(time.Millisecond))
	if st.Failed > 0 {
		// Nothing else says so: the bound would go unkept while every run looks fine.
		fmt.Fprintf(stderr, "offload cache trim: could not remove %d files (%v): run trim as the user that owns the cache folder (the web server's user for CGI mode)\n",
			st.Failed, st.FailedErr)
		return 1
	}
	if st.After > cfg.CacheSize {
		fmt.Fprintf(stdout, "offload cache trim: still %s over the bound: what is left is in use; the next run removes it once it is not\n",
			bytesText(st.After-cfg.CacheSize))
	}
	return 0
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// bytesText is n in the unit that suits it (powers of 1024, as sizes are given).
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTP"[i])
}
