package redirect

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite apachemod/testdata/pick-vectors.txt from the Go implementation")

const vectorsPath = "../apachemod/testdata/pick-vectors.txt"

// vectorCase is one block of the shared test vectors: hosts, the ones down, and for each
// path the host that must be picked ("-" when none can be).
type vectorCase struct {
	name  string
	hosts []string
	down  []string
	picks [][2]string
}

func readVectors(t *testing.T) []vectorCase {
	t.Helper()
	f, err := os.Open(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []vectorCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, rest, _ := strings.Cut(line, " ")
		if kind != "case" && len(cases) == 0 {
			t.Fatalf("%s:%d: %q before the first case", vectorsPath, n, kind)
		}
		switch kind {
		case "case":
			cases = append(cases, vectorCase{name: rest})
		case "host":
			cases[len(cases)-1].hosts = append(cases[len(cases)-1].hosts, rest)
		case "down":
			cases[len(cases)-1].down = append(cases[len(cases)-1].down, rest)
		case "pick":
			p, h, ok := strings.Cut(rest, " ")
			if !ok {
				t.Fatalf("%s:%d: pick PATH HOST", vectorsPath, n)
			}
			cases[len(cases)-1].picks = append(cases[len(cases)-1].picks, [2]string{p, h})
		default:
			t.Fatalf("%s:%d: unknown line %q", vectorsPath, n, kind)
		}
	}
	return cases
}

func pickFor(t *testing.T, vc vectorCase, path string) string {
	t.Helper()
	var hosts []Host
	for _, spec := range vc.hosts {
		h, err := ParseHost(spec)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	down := map[string]bool{}
	for _, d := range vc.down {
		down[d] = true
	}
	i := PickHash(hosts, func(h Host) bool { return down[h.Addr] }, path)
	if i < 0 {
		return "-"
	}
	return hosts[i].Addr
}

var vectorPaths = []string{"/", "/pub/a.iso", "/pub/b.iso", "/pub/linux/debian-12.5.0-amd64-netinst.iso",
	"/files/a%20b.tar.gz", "/%C3%A9t%C3%A9/photo.jpg", "/x+y/z", "/downloads/game-1.0.0-setup.exe",
	"/" + strings.Repeat("long/", 30) + "file.bin", "/video/big.mp4", "/a", "/b", "/c", "/d"}

var vectorHosts = []struct {
	name  string
	hosts []string
	down  []string
}{
	{"one host", []string{"offload1.example.org"}, nil},
	{"two hosts", []string{"offload1.example.org", "offload2.example.org"}, nil},
	{"three hosts with ports and schemes", []string{"offload1.example.org", "offload2.example.org:8080", "https://offload3.example.org"}, nil},
	{"three hosts, one down", []string{"offload1.example.org", "offload2.example.org:8080", "https://offload3.example.org"}, []string{"offload2.example.org:8080"}},
	{"weighted", []string{"big.example.org 3", "small.example.org 1", "mid.example.org 2"}, nil},
	{"loopback test hosts", []string{"127.0.0.2:8081", "127.0.0.3:8082"}, nil},
	{"all down", []string{"a.example", "b.example"}, []string{"a.example", "b.example"}},
}

func TestPickVectors(t *testing.T) {
	if *update {
		var b strings.Builder
		b.WriteString("# Test vectors for the offload host choice (rendezvous hashing, 64-bit FNV-1a).\n")
		b.WriteString("# Read by redirect/vectors_test.go and by apachemod's C test: both must agree.\n")
		b.WriteString("# Regenerate from Go with: go test ./redirect -run TestPickVectors -update\n")
		for _, vh := range vectorHosts {
			vc := vectorCase{name: vh.name, hosts: vh.hosts, down: vh.down}
			fmt.Fprintf(&b, "\ncase %s\n", vh.name)
			for _, h := range vh.hosts {
				fmt.Fprintf(&b, "host %s\n", h)
			}
			for _, d := range vh.down {
				fmt.Fprintf(&b, "down %s\n", d)
			}
			for _, p := range vectorPaths {
				fmt.Fprintf(&b, "pick %s %s\n", p, pickFor(t, vc, p))
			}
		}
		if err := os.WriteFile(vectorsPath, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := readVectors(t)
	if len(cases) < 5 {
		t.Fatalf("only %d cases in %s", len(cases), vectorsPath)
	}
	for _, vc := range cases {
		for _, p := range vc.picks {
			if got := pickFor(t, vc, p[0]); got != p[1] {
				t.Errorf("%s: %s picked %s, vectors say %s", vc.name, p[0], got, p[1])
			}
		}
	}
}

// TestPickSpreadAndStability: files spread over hosts by weight, and a host going down
// moves only its own files.
func TestPickSpreadAndStability(t *testing.T) {
	hosts := []Host{{"http", "a", 1}, {"http", "b", 1}, {"http", "c", 2}}
	count := map[int]int{}
	moved := 0
	for i := range 20000 {
		p := fmt.Sprintf("/f/%d.bin", i)
		before := PickHash(hosts, nil, p)
		count[before]++
		after := PickHash(hosts, func(h Host) bool { return h.Addr == "b" }, p)
		if before != 1 && after != before {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d files not on the down host moved", moved)
	}
	if count[0] < 4000 || count[1] < 4000 || count[2] < 9000 {
		t.Errorf("uneven spread %v (want about 5000, 5000, 10000)", count)
	}
}

func TestWildcard(t *testing.T) {
	tests := []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"video/*", "VIDEO/mp4", true}, {"*wget*", "Wget/1.21", true},
		{"image/???", "image/png", true}, {"image/???", "image/jpeg", false}, {"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false}, {"127.0.0.*", "127.0.0.5", true}, {"", "x", false},
	}
	for _, tc := range tests {
		if got := wildcardMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("match(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}
