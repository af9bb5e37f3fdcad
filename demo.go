package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modoffload/offload/redirect"
	"github.com/modoffload/offload/server"
)

// demoFiles is the sample folder: name and size.
var demoFiles = []struct {
	name string
	size int64
}{
	{"index.txt", 10 << 10},
	{"pub/docs.pdf", 1 << 20},
	{"pub/video.mp4", 50 << 20},
	{"pub/big.iso", 200 << 20},
}

func runDemo(args []string) int {
	fset := flag.NewFlagSet("offload demo", flag.ContinueOnError)
	keep := fset.Bool("keep", false, "keep the sample and cache folders at the end")
	dir := fset.String("dir", "", "folder for the sample files and the cache (default: a new temporary folder)")
	basePort := fset.Int("base-port", 8080, "port of the demo base server on 127.0.0.1 (0: any free port)")
	offloadPort := fset.Int("offload-port", 8081, "port of the offload server on 127.0.0.2 (0: any free port)")
	existing := fset.String("base", "", "use this existing base server (http://host[:port]) instead of the demo base")
	path := fset.String("path", "/pub/big.iso", "file to download through the system")
	exit := fset.Bool("exit", false, "exit after the summary instead of serving until Ctrl-C")
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := demo(*dir, *keep, *basePort, *offloadPort, *existing, *path, *exit, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "offload demo:", err)
		return 1
	}
	return 0
}

func demo(dir string, keep bool, basePort, offloadPort int, existing, path string, exit bool, out io.Writer) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "offload-demo-")
		if err != nil {
			return err
		}
		dir = d
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	docroot, cacheDir := filepath.Join(dir, "www"), filepath.Join(dir, "cache")
	fmt.Fprintf(out, "offload demo: files in %s\n", dir)

	// The offload host listens on 127.0.0.2: the base tells requests from offload hosts
	// (which are never redirected) by address, and the demo's client is 127.0.0.1.
	offloadLn, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", offloadPort))
	if err != nil {
		return fmt.Errorf("offload port: %w (try --offload-port 0)", err)
	}
	offloadAddr := offloadLn.Addr().String()
	offloadLn.Close()

	baseURL := existing
	var baseHeads, baseGets atomic.Int64
	if baseURL == "" {
		if err := makeSampleFiles(docroot, out); err != nil {
			return err
		}
		rd, err := redirect.New(redirect.Config{Hosts: []string{offloadAddr}, MinSize: redirect.DefaultMinSize,
			Files: os.DirFS(docroot).(fs.StatFS)})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", basePort))
		if err != nil {
			return fmt.Errorf("base port: %w (try --base-port 0)", err)
		}
		files := http.FileServer(http.Dir(docroot))
		count := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Mod-Offload-Bypass") != "" {
				if r.Method == http.MethodHead {
					baseHeads.Add(1)
				} else {
					baseGets.Add(1)
				}
			}
			if st, err := os.Stat(filepath.Join(docroot, filepath.FromSlash(r.URL.Path))); err == nil && st.Mode().IsRegular() {
				w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano()))
			}
			files.ServeHTTP(w, r)
		})
		base := &http.Server{Handler: rd.Handler(count), ReadHeaderTimeout: 10 * time.Second}
		go base.Serve(ln)
		defer base.Close()
		baseURL = "http://" + ln.Addr().String()
	}

	logger := log.New(io.Discard, "", 0)
	cfg := &serveConfig{Base: baseURL, Listen: []string{offloadAddr}, Cache: cacheDir, MaxDupes: 1,
		Timeout: 45 * time.Second, Grace: 2 * time.Second, Fetchers: 16, Loops: 2}
	started := make(chan *server.Server, 1)
	served := make(chan error, 1)
	go func() { served <- serve(cfg, logger, func(s *server.Server) { started <- s }) }()
	var srv *server.Server
	select {
	case srv = <-started:
	case err := <-served:
		return fmt.Errorf("offload server: %v", err)
	}

	url := baseURL + path
	fmt.Fprintf(out, "base server    %s (Go file server with package redirect)\noffload server http://%s (cache %s)\n\n", baseURL, offloadAddr, cacheDir)
	var target string
	client := &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error {
		target = req.URL.String()
		return nil
	}}
	var sums [2][32]byte
	var took [2]time.Duration
	for i, label := range []string{"cold", "warm"} {
		start := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		buf.Grow(int(max(resp.ContentLength, 0)))
		_, err = buf.ReadFrom(resp.Body)
		body := buf.Bytes()
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			return fmt.Errorf("%s download of %s: status %d, %v", label, url, resp.StatusCode, err)
		}
		took[i] = time.Since(start)
		n := len(body)
		sums[i] = sha256.Sum256(body) // after the clock: the time is the transfer's
		fmt.Fprintf(out, "%s download: %d bytes in %v (%.0f MiB/s)\n", label, n, took[i].Round(time.Millisecond),
			float64(n)/(1<<20)/took[i].Seconds())
	}
	if sums[0] != sums[1] {
		return errors.New("the cold and warm downloads differ")
	}
	if existing == "" {
		local, err := os.ReadFile(filepath.Join(docroot, filepath.FromSlash(path)))
		if err != nil || sha256.Sum256(local) != sums[0] {
			return errors.New("the downloads differ from the file on the base")
		}
		fmt.Fprintln(out, "bytes verified: sha256 of both downloads equals the file on the base")
	}
	fmt.Fprintf(out, "\nredirected to  %s\n", target)
	if existing == "" {
		fmt.Fprintf(out, "the base saw    %d HEAD and %d GET from the offload server (one GET: the warm download came from the cache)\n",
			baseHeads.Load(), baseGets.Load())
	}
	fmt.Fprintf(out, "\nTry it by hand:\n  curl -L -o /dev/null -w '%%{url_effective} %%{http_code} %%{size_download}\\n' %s\n", url)
	fmt.Fprintf(out, "  curl -s -o /dev/null -D - %s   # the 307 itself (a GET: HEADs are never offloaded)\n", url)
	fmt.Fprintf(out, "  curl -r 0-99 -o /dev/null -w '%%{http_code}\\n' http://%s%s   # a range from the cache\n", offloadAddr, path)

	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	}
	if exit {
		stop()
		return nil
	}
	fmt.Fprintln(out, "\nServing until Ctrl-C.")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sigs:
	case err := <-served:
		return err
	}
	stop()
	if keep {
		fmt.Fprintf(out, "kept %s\n", dir)
	}
	return nil
}

// makeSampleFiles writes the sample folder with pseudo-random bytes.
func makeSampleFiles(docroot string, out io.Writer) error {
	rng := rand.New(rand.NewPCG(2026, 11))
	buf := make([]byte, 1<<20)
	for _, f := range demoFiles {
		p := filepath.Join(docroot, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		fh, err := os.Create(p)
		if err != nil {
			return err
		}
		for left := f.size; left > 0; left -= int64(len(buf)) {
			for i := 0; i < len(buf); i += 8 {
				binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
			}
			if _, err := fh.Write(buf[:min(left, int64(len(buf)))]); err != nil {
				fh.Close()
				return err
			}
		}
		if err := fh.Close(); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "sample files: %d, from 10 KiB to 200 MiB\n", len(demoFiles))
	return nil
}
