package limiter

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestSlotChild is not a test: it is the body of the child processes the slot tests
// start (the test binary run again). It takes a slot for OFFLOAD_SLOT_PATH, prints
// "took" or "refused", and holds the slot until its stdin closes.
func TestSlotChild(t *testing.T) {
	dir := os.Getenv("OFFLOAD_SLOT_DIR")
	if dir == "" {
		t.Skip("runs only as a child process of the slot tests")
	}
	max, _ := strconv.Atoi(os.Getenv("OFFLOAD_SLOT_MAX"))
	s, err := NewSlots(dir, max)
	if err != nil {
		os.Stdout.WriteString("error " + err.Error() + "\n")
		os.Exit(1)
	}
	l := New(Config{MaxDupes: max, Slots: s})
	if _, ok := l.StartDownload(netip.MustParseAddr("192.0.2.7"), os.Getenv("OFFLOAD_SLOT_PATH")); ok {
		os.Stdout.WriteString("took\n")
	} else {
		os.Stdout.WriteString("refused\n")
	}
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// childEnv is this process's environment for a child: under the race detector, a child
// that exits would otherwise sleep a second first (GORACE's atexit_sleep_ms).
func childEnv() []string {
	return append(os.Environ(), "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
}

// slotChild starts a child that asks for a slot and returns what it said; the child
// holds its slot until the test kills it or closes its stdin.
func slotChild(t *testing.T, dir string, max int, path string) (*exec.Cmd, io.WriteCloser, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSlotChild$")
	cmd.Env = append(childEnv(), "OFFLOAD_SLOT_DIR="+dir, "OFFLOAD_SLOT_MAX="+strconv.Itoa(max), "OFFLOAD_SLOT_PATH="+path)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	return cmd, stdin, line[:len(line)-1]
}

// TestSlotsAcrossProcesses: the cap holds over processes, counts per address and path,
// and a slot comes free when its process ends, even by SIGKILL.
func TestSlotsAcrossProcesses(t *testing.T) {
	for _, max := range []int{1, 2} {
		t.Run("max "+strconv.Itoa(max), func(t *testing.T) {
			dir := t.TempDir()
			var holders []*exec.Cmd
			for i := range max {
				cmd, _, said := slotChild(t, dir, max, "/big.iso")
				if said != "took" {
					t.Fatalf("download %d of %d: %s", i+1, max, said)
				}
				holders = append(holders, cmd)
			}
			if _, _, said := slotChild(t, dir, max, "/big.iso"); said != "refused" {
				t.Fatalf("download %d over a cap of %d: %s", max+1, max, said)
			}
			s, err := NewSlots(dir, max)
			if err != nil {
				t.Fatal(err)
			}
			client := netip.MustParseAddr("192.0.2.7")
			if sl, err := s.Take(client, "/big.iso"); sl != nil || err != nil {
				t.Fatalf("this process got a slot over the cap: %v", err)
			}
			other, err := s.Take(client, "/other.iso")
			if other == nil || err != nil {
				t.Fatalf("another path refused: %v", err)
			}
			other.Release()
			if sl, _ := s.Take(netip.MustParseAddr("192.0.2.8"), "/big.iso"); sl == nil {
				t.Fatal("another address refused")
			} else {
				sl.Release()
			}
			holders[0].Process.Signal(syscall.SIGKILL)
			holders[0].Wait()
			sl, err := s.Take(client, "/big.iso")
			if sl == nil || err != nil {
				t.Fatalf("no slot after its holder was killed: %v", err)
			}
			sl.Release()
		})
	}
}

// TestSlotsSameAsMemory: a Limiter with Slots answers a random sequence of starts and
// ends exactly as the in-memory one.
func TestSlotsSameAsMemory(t *testing.T) {
	for _, max := range []int{1, 3} {
		s, err := NewSlots(t.TempDir(), max)
		if err != nil {
			t.Fatal(err)
		}
		mem, files := New(Config{MaxDupes: max}), New(Config{MaxDupes: max, Slots: s})
		clients := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("::ffff:10.0.0.2")}
		paths := []string{"/a", "/b"}
		var memKeys, fileKeys []string
		rng := rand.New(rand.NewPCG(1, uint64(max)))
		for i := range 500 {
			if rng.IntN(3) > 0 || len(memKeys) == 0 {
				c, p := clients[rng.IntN(len(clients))], paths[rng.IntN(len(paths))]
				k1, ok1 := mem.StartDownload(c, p)
				k2, ok2 := files.StartDownload(c, p)
				if ok1 != ok2 {
					t.Fatalf("max %d, step %d: %v %s: memory says %v, slots %v", max, i, c, p, ok1, ok2)
				}
				if ok1 {
					memKeys, fileKeys = append(memKeys, k1), append(fileKeys, k2)
				}
			} else {
				j := rng.IntN(len(memKeys))
				mem.EndDownload(memKeys[j])
				files.EndDownload(fileKeys[j])
				memKeys = append(memKeys[:j], memKeys[j+1:]...)
				fileKeys = append(fileKeys[:j], fileKeys[j+1:]...)
			}
			if mem.Downloads() != files.Downloads() {
				t.Fatalf("step %d: %d downloads in memory, %d in slots", i, mem.Downloads(), files.Downloads())
			}
		}
	}
}

// TestSlotsSweep: Sweep removes the slot files nobody holds, and only those.
func TestSlotsSweep(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewSlots(dir, 1)
	held, _ := s.Take(netip.MustParseAddr("10.0.0.1"), "/held")
	free, _ := s.Take(netip.MustParseAddr("10.0.0.1"), "/free")
	free.f.Close() // its process killed: the kernel drops the lock, the file stays
	if n, err := s.Sweep(time.Hour); n != 0 || err != nil {
		t.Fatalf("swept %d young slots: %v", n, err)
	}
	if n, err := s.Sweep(0); n != 1 || err != nil {
		t.Fatalf("swept %d, want the free one: %v", n, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
	if len(left) != 1 {
		t.Fatalf("slot files left: %v", left)
	}
	if sl, _ := s.Take(netip.MustParseAddr("10.0.0.1"), "/held"); sl != nil {
		t.Fatal("a held slot was taken again after a sweep")
	}
	held.Release()
	if sl, _ := s.Take(netip.MustParseAddr("10.0.0.1"), "/held"); sl == nil {
		t.Fatal("slot not free after its release")
	}
}

// TestSlotsRace: ten processes ask for the one slot of an address and path at once;
// exactly one gets it.
func TestSlotsRace(t *testing.T) {
	dir := t.TempDir()
	results := make(chan bool, 10)
	for range 10 {
		go func() {
			cmd := exec.Command(os.Args[0], "-test.run=^TestSlotChild$")
			cmd.Env = append(childEnv(), "OFFLOAD_SLOT_DIR="+dir, "OFFLOAD_SLOT_MAX=1", "OFFLOAD_SLOT_PATH=/race.iso")
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Error(err)
				results <- false
				return
			}
			t.Cleanup(func() { stdin.Close(); cmd.Wait() }) // holds its slot until every child has answered
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			results <- line == "took\n"
		}()
	}
	took := 0
	for range 10 {
		if <-results {
			took++
		}
	}
	if took != 1 {
		t.Errorf("%d of 10 processes took the one slot", took)
	}
}

// TestSlotsReleaseRemoves: a client that asks for many paths (files, 404s, anything)
// leaves no slot file behind once its downloads end; without it, every address and path
// ever asked for kept an inode under slots/ until the next trim, and forever without one.
func TestSlotsReleaseRemoves(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewSlots(dir, 2)
	client := netip.MustParseAddr("10.0.0.1")
	for i := range 200 {
		a, err := s.Take(client, "/f"+strconv.Itoa(i))
		if a == nil || err != nil {
			t.Fatalf("take %d: %v, %v", i, a, err)
		}
		b, _ := s.Take(client, "/f"+strconv.Itoa(i))
		if b == nil {
			t.Fatalf("second slot of /f%d refused", i)
		}
		if c, _ := s.Take(client, "/f"+strconv.Itoa(i)); c != nil {
			t.Fatalf("third slot of /f%d taken with max 2", i)
		}
		b.Release()
		a.Release()
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*", "*")); len(left) != 0 {
		t.Fatalf("%d slot files left after every download ended, e.g. %s", len(left), left[0])
	}
	// A slot released while another process holds the path's other slot: the holder's
	// file stays, and the cap still counts it.
	held, _ := s.Take(client, "/x")
	free, _ := s.Take(client, "/x")
	free.Release()
	if again, _ := s.Take(client, "/x"); again == nil {
		t.Fatal("released slot not free")
	} else if third, _ := s.Take(client, "/x"); third != nil {
		t.Fatal("cap of 2 exceeded after a release")
	} else {
		again.Release()
	}
	held.Release()
}

// TestSlotsSymlinkNotFollowed: a slot file planted as a symlink, in a folder someone
// else can write, makes no file where it points (O_CREAT follows a dangling symlink and
// creates its target); the download is let through, as for any slot error.
func TestSlotsSymlinkNotFollowed(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewSlots(dir, 1)
	client := netip.MustParseAddr("10.0.0.1")
	sum := sha256.Sum256([]byte(client.String() + "\x00" + "/f"))
	name := hex.EncodeToString(sum[:16])
	p := filepath.Join(dir, name[:2], name+".0")
	os.MkdirAll(filepath.Dir(p), 0o755)
	victim := filepath.Join(t.TempDir(), "made-by-offload")
	if err := os.Symlink(victim, p); err != nil {
		t.Fatal(err)
	}
	sl, err := s.Take(client, "/f")
	t.Logf("take through a planted symlink: %v, %v", sl, err)
	sl.Release()
	if _, err := os.Lstat(victim); err == nil {
		t.Fatal("a slot created the file a planted symlink names")
	}
}
