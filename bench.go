package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/modoffload/offload/bench"
)

func runBench(args []string) int {
	fset := flag.NewFlagSet("offload bench", flag.ContinueOnError)
	fset.Usage = func() {
		fmt.Fprintln(fset.Output(), "usage: offload bench [-c CONNS] [-n REQUESTS | -d DURATION] [--rate BYTES/s] [--range] [--keepalive] [--verify] [--pid PID] [--drop-cache DIR]... [--probe URL] [--cacert FILE | --insecure] [--json] URL...")
		fset.PrintDefaults()
	}
	var cfg bench.Config
	var rate int64
	var asJSON bool
	fset.IntVar(&cfg.Conns, "c", 10, "connections open at once")
	fset.IntVar(&cfg.Requests, "n", 0, "total requests (default: run for -d)")
	fset.DurationVar(&cfg.Duration, "d", 10*time.Second, "how long to run when -n is not given")
	fset.Var(sizeFlag{&rate}, "rate", "bytes per second each connection reads, e.g. 100K (default: full speed)")
	fset.BoolVar(&cfg.Range, "range", false, "ask for random byte ranges")
	fset.BoolVar(&cfg.KeepAlive, "keepalive", false, "reuse connections for several requests")
	fset.BoolVar(&cfg.Verify, "verify", false, "sha256 every full body; bodies of one URL must agree")
	fset.IntVar(&cfg.PID, "pid", 0, "sample this process's RSS (the server under test)")
	fset.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fset.Var(&listFlag{vals: &cfg.DropCache}, "drop-cache", "evict the files under this folder from the page cache before the run (repeatable): a cold-disk run")
	fset.StringVar(&cfg.Probe, "probe", "", "a hot URL to ask for in a loop during the run, to measure its latency")
	fset.IntVar(&cfg.ProbeConns, "probe-conns", 2, "keep-alive connections of the --probe")
	fset.Float64Var(&cfg.ProbeRate, "probe-rate", 0, "--probe requests per second, on a fixed schedule, each timed from when it was due (default: back to back)")
	var caFile string
	var insecure bool
	fset.StringVar(&caFile, "cacert", "", "PEM file of the CA certificates to trust for https:// URLs (default: the system's)")
	fset.BoolVar(&insecure, "insecure", false, "https:// URLs: do not verify the server's certificate")
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg.URLs, cfg.Rate = fset.Args(), rate
	if caFile != "" || insecure {
		cfg.TLS = &tls.Config{InsecureSkipVerify: insecure}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				fmt.Fprintf(os.Stderr, "offload bench: --cacert: %v\n", err)
				return 2
			}
			cfg.TLS.RootCAs = x509.NewCertPool()
			if !cfg.TLS.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintf(os.Stderr, "offload bench: --cacert %s: no PEM certificates in it\n", caFile)
				return 2
			}
		}
	}
	if len(cfg.URLs) == 0 {
		fset.Usage()
		return 2
	}
	if st, err := os.Stderr.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 && !asJSON {
		cfg.Progress = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := bench.Run(ctx, cfg)
	if cfg.Progress != nil {
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "offload bench:", err)
		return 2
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	} else {
		bench.WriteTable(os.Stdout, cfg, res)
	}
	if res.Errors > 0 {
		return 1
	}
	return 0
}
