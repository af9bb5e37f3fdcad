// Command offload is the offload server of mod_offload, reimplemented: it serves big
// static files that a base web server redirects to it, from a disk cache it fills from
// the base. Subcommands: serve, cgi, demo, bench, hostcheck, cache trim, version.
package main

import (
	"fmt"
	"os"

	"github.com/modoffload/offload/proto"
)

// version is the release, sent as Server and User-Agent.
const version = "0.1.0"

func main() {
	proto.ServerName = "offload/" + version
	if startedAsCGI() {
		os.Exit(runCGI()) // its arguments, if any, come from the client: see startedAsCGI
	}
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var code int
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		code = runServe(args)
	case "demo":
		code = runDemo(args)
	case "bench":
		code = runBench(args)
	case "hostcheck":
		code = runHostcheck(args)
	case "cache":
		code = runCache(args)
	case "cgi":
		if len(args) > 0 {
			fmt.Fprintf(os.Stderr, "offload cgi: takes no arguments (the config file: $%s, or %s next to the program)\n", configEnv, cgiConfigName)
			code = 2
			break
		}
		code = runCGI()
	case "version", "-version", "--version":
		fmt.Println("offload", version)
	case "help", "-h", "-help", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "offload: unknown command %q\n", cmd)
		usage()
		code = 2
	}
	os.Exit(code)
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: offload <command> [flags]

commands:
  serve    run the offload server (offload serve -h for its flags)
  demo     run a base and an offload server on 127.0.0.1 and show a download
  bench    load-test an HTTP server (offload bench -h)
  hostcheck  probe offload hosts, keep the base's host-down file (offload hostcheck -h)
  cache trim  remove cache entries until the cache fits its bound (for CGI mode; offload cache trim -h)
  cgi      answer one request as a CGI program of a web server (settings: $OFFLOAD_CONFIG or offload.conf next to the program)
  version  print the version
`)
}
