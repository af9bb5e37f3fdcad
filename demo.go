package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/big"
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
	// The HTTPS listener of the same offload server, with a certificate from a
	// throwaway local CA (the demo's client, and curl with --cacert, trust it).
	tlsLn, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		return fmt.Errorf("offload HTTPS port: %w", err)
	}
	tlsAddr := tlsLn.Addr().String()
	tlsLn.Close()
	caFile, certFile, keyFile, roots, err := demoCA(dir)
	if err != nil {
		return err
	}

	baseURL, tlsBaseURL := existing, ""
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

		// A second base site, whose redirector sends clients to the HTTPS listener.
		rds, err := redirect.New(redirect.Config{Hosts: []string{"https://" + tlsAddr}, MinSize: redirect.DefaultMinSize,
			Files: os.DirFS(docroot).(fs.StatFS)})
		if err != nil {
			return err
		}
		lns, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		tlsBase := &http.Server{Handler: rds.Handler(count), ReadHeaderTimeout: 10 * time.Second}
		go tlsBase.Serve(lns)
		defer tlsBase.Close()
		tlsBaseURL = "http://" + lns.Addr().String()
	}

	logger := log.New(io.Discard, "", 0)
	cfg := &serveConfig{Base: baseURL, Listen: []string{offloadAddr}, Cache: cacheDir, MaxDupes: 1,
		Timeout: 45 * time.Second, Grace: 2 * time.Second, Fetchers: 16, Loops: 2,
		TLSListen: []string{tlsAddr}, TLSCert: []string{certFile}, TLSKey: []string{keyFile}}
	if err := cfg.loadCerts(); err != nil {
		return err
	}
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
	fmt.Fprintf(out, "base server    %s (Go file server with package redirect)\noffload server http://%s and https://%s (cache %s)\n\n",
		baseURL, offloadAddr, tlsAddr, cacheDir)
	var target string
	client := &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error {
		target = req.URL.String()
		return nil
	}}
	// The downloads land in one buffer, touched before any clock runs: on this
	// machine's VM the first touch of 200 MiB of fresh heap took over a second, which
	// the demo had reported as the warm download's time. They are hashed after it.
	var body []byte
	if existing == "" {
		if st, err := os.Stat(filepath.Join(docroot, filepath.FromSlash(path))); err == nil {
			body = make([]byte, st.Size())
			for i, page := 0, os.Getpagesize(); i < len(body); i += page {
				body[i] = 1
			}
		}
	}
	var sums [2][32]byte
	for i, label := range []string{"cold", "warm"} {
		n, sum, took, err := timedDownload(client, url, body)
		if err != nil {
			return fmt.Errorf("%s download: %w", label, err)
		}
		sums[i] = sum
		fmt.Fprintf(out, "%s download: %d bytes in %v (%.0f MiB/s)\n", label, n, took.Round(time.Millisecond),
			float64(n)/(1<<20)/took.Seconds())
	}
	if sums[0] != sums[1] {
		return errors.New("the cold and warm downloads differ")
	}
	if existing == "" {
		local, err := fileSum(filepath.Join(docroot, filepath.FromSlash(path)))
		switch {
		case err != nil:
			return fmt.Errorf("the file on the base: %w", err)
		case local != sums[0]:
			return errors.New("the downloads differ from the file on the base")
		}
		fmt.Fprintln(out, "bytes verified: sha256 of both downloads equals the file on the base")
	}
	fmt.Fprintf(out, "\nredirected to  %s\n", target)
	if existing == "" {
		fmt.Fprintf(out, "the base saw    %d HEAD and %d GET from the offload server (one GET: the warm download came from the cache)\n",
			baseHeads.Load(), baseGets.Load())
	}
	if tlsBaseURL != "" {
		// The same file through the base site that redirects to HTTPS.
		var tlsTarget string
		tlsClient := &http.Client{
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				tlsTarget = req.URL.String()
				return nil
			},
		}
		n, sum, took, err := timedDownload(tlsClient, tlsBaseURL+path, body)
		switch {
		case err != nil:
			return fmt.Errorf("HTTPS download: %w", err)
		case sum != sums[0]:
			return fmt.Errorf("HTTPS download of %s: its bytes differ", tlsBaseURL+path)
		}
		fmt.Fprintf(out, "\nhttps download: %d bytes in %v (%.0f MiB/s), redirected to %s, bytes verified\n",
			n, took.Round(time.Millisecond), float64(n)/(1<<20)/took.Seconds(), tlsTarget)
	}
	fmt.Fprintf(out, "\nTry it by hand:\n  curl -L -o /dev/null -w '%%{url_effective} %%{http_code} %%{size_download}\\n' %s\n", url)
	fmt.Fprintf(out, "  curl -s -o /dev/null -D - %s   # the 307 itself (a GET: HEADs are never offloaded)\n", url)
	fmt.Fprintf(out, "  curl -r 0-99 -o /dev/null -w '%%{http_code}\\n' http://%s%s   # a range from the cache\n", offloadAddr, path)
	fmt.Fprintf(out, "  curl --cacert %s -o /dev/null -w '%%{http_code} %%{size_download}\\n' https://%s%s   # over HTTPS (the demo's own CA)\n",
		caFile, tlsAddr, path)
	if tlsBaseURL != "" {
		fmt.Fprintf(out, "  curl --cacert %s -L -o /dev/null -w '%%{url_effective} %%{http_code}\\n' %s%s   # a base site that redirects to HTTPS\n",
			caFile, tlsBaseURL, path)
	}

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

// demoCA makes a throwaway certificate authority and, signed by it, a certificate for
// the offload host 127.0.0.2, in dir: ca.pem, offload.pem and offload.key.
func demoCA(dir string) (caFile, certFile, keyFile string, roots *x509.CertPool, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", "", nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return "", "", "", nil, err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "offload demo CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(crand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", nil, fmt.Errorf("demo CA: %w", err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return "", "", "", nil, err
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.2"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 2)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(crand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", "", nil, fmt.Errorf("demo certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", "", nil, err
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "offload.pem"), filepath.Join(dir, "offload.key")
	for _, f := range []struct {
		name, typ string
		der       []byte
		mode      os.FileMode
	}{{caFile, "CERTIFICATE", caDER, 0o644}, {certFile, "CERTIFICATE", der, 0o644}, {keyFile, "PRIVATE KEY", keyDER, 0o600}} {
		if err := os.WriteFile(f.name, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return "", "", "", nil, err
		}
	}
	roots = x509.NewCertPool()
	roots.AddCert(caCert)
	return caFile, certFile, keyFile, roots, nil
}

// timedDownload GETs url and returns the body's length and sha256, and how long the
// transfer took. A body that fits in buf is read into it and hashed after the clock;
// another is hashed as it arrives, and the time includes the hashing.
func timedDownload(client *http.Client, url string, buf []byte) (n int64, sum [32]byte, took time.Duration, err error) {
	start := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		return 0, sum, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, sum, 0, fmt.Errorf("%s: status %d", url, resp.StatusCode)
	}
	if size := resp.ContentLength; size >= 0 && size <= int64(len(buf)) {
		// (net/http ends a body at its Content-Length.)
		if k, err := io.ReadFull(resp.Body, buf[:size]); err != nil {
			return int64(k), sum, 0, fmt.Errorf("%s: %w after %d bytes", url, err, k)
		}
		took = time.Since(start)
		return size, sha256.Sum256(buf[:size]), took, nil
	}
	n, sum, err = hashOf(resp.Body)
	if err != nil {
		return n, sum, 0, fmt.Errorf("%s: %w after %d bytes", url, err, n)
	}
	return n, sum, time.Since(start), nil
}

// fileSum is the sha256 of a file's bytes.
func fileSum(path string) (sum [32]byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	_, sum, err = hashOf(f)
	return sum, err
}

// hashOf reads r to its end and returns how many bytes it gave and their sha256.
func hashOf(r io.Reader) (n int64, sum [32]byte, err error) {
	h := sha256.New()
	n, err = io.CopyBuffer(h, r, make([]byte, 1<<20))
	h.Sum(sum[:0])
	return n, sum, err
}
