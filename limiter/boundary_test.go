package limiter

import (
	"net/netip"
	"testing"
)

// Tests of the caps exactly at their value and one past it, and of the twins of the
// main tests' cases.

func TestDupesAtAndOverTheCap(t *testing.T) {
	for _, capN := range []int{1, 2, 3} {
		l := New(Config{MaxDupes: capN})
		a := netip.MustParseAddr("10.0.0.1")
		var keys []string
		for i := range capN {
			k, ok := l.StartDownload(a, "/f")
			if !ok {
				t.Fatalf("cap %d: download %d refused", capN, i+1)
			}
			keys = append(keys, k)
		}
		if _, ok := l.StartDownload(a, "/f"); ok {
			t.Fatalf("cap %d: download %d allowed", capN, capN+1)
		}
		if got := l.Downloads(); got != capN {
			t.Errorf("cap %d: %d downloads counted", capN, got)
		}
		l.EndDownload(keys[0])
		k, ok := l.StartDownload(a, "/f")
		if !ok {
			t.Fatalf("cap %d: slot not freed", capN)
		}
		keys[0] = k
		for _, k := range keys {
			l.EndDownload(k)
		}
		if got := l.Downloads(); got != 0 {
			t.Errorf("cap %d: %d downloads left", capN, got)
		}
	}
}

func TestEndDownloadTwins(t *testing.T) {
	l := New(Config{MaxDupes: 1})
	a := netip.MustParseAddr("10.0.0.1")
	l.EndDownload("") // no slot: nothing happens
	k, _ := l.StartDownload(a, "/f")
	l.EndDownload(k)
	l.EndDownload(k) // once too often: never below zero
	if got := l.Downloads(); got != 0 {
		t.Fatalf("%d downloads after ending one twice", got)
	}
	if _, ok := l.StartDownload(a, "/f"); !ok {
		t.Fatal("refused after ending one twice")
	}
	if _, ok := l.StartDownload(a, "/f"); ok {
		t.Fatal("ending one twice gave a second slot")
	}
	// The same path from another address, another path from the same address.
	if _, ok := l.StartDownload(netip.MustParseAddr("10.0.0.2"), "/f"); !ok {
		t.Error("other address refused")
	}
	if _, ok := l.StartDownload(a, "/f2"); !ok {
		t.Error("other path refused")
	}
	// No cap: no slot to give back.
	if k, ok := New(Config{}).StartDownload(a, "/f"); !ok || k != "" {
		t.Errorf("no cap: %q %v", k, ok)
	}
}

func TestConnCapsAtAndOver(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cfg         Config
		peers       []string // opened in order
		want        []Refusal
		thenClose   string
		thenOpen    string
		thenOpenGot Refusal
	}{
		{"per address at 1", Config{MaxConnsPerIP: 1}, []string{"10.0.0.1", "10.0.0.1", "10.0.0.2"},
			[]Refusal{Allowed, TooManyConnsPerIP, Allowed}, "10.0.0.1", "10.0.0.1", Allowed},
		{"per address at 2", Config{MaxConnsPerIP: 2}, []string{"10.0.0.1", "10.0.0.1", "10.0.0.1"},
			[]Refusal{Allowed, Allowed, TooManyConnsPerIP}, "10.0.0.1", "10.0.0.1", Allowed},
		{"in all at 2", Config{MaxConns: 2}, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"},
			[]Refusal{Allowed, Allowed, TooManyConns}, "10.0.0.2", "10.0.0.3", Allowed},
		{"both, in all first", Config{MaxConns: 2, MaxConnsPerIP: 2}, []string{"10.0.0.1", "10.0.0.1", "10.0.0.1"},
			[]Refusal{Allowed, Allowed, TooManyConns}, "10.0.0.1", "10.0.0.1", Allowed},
		{"IPv6", Config{MaxConnsPerIP: 1}, []string{"2001:db8::1", "2001:db8::1", "2001:db8::2"},
			[]Refusal{Allowed, TooManyConnsPerIP, Allowed}, "2001:db8::1", "2001:db8::1", Allowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(tc.cfg)
			opened := 0
			for i, p := range tc.peers {
				got := l.OpenConn(netip.MustParseAddr(p))
				if got != tc.want[i] {
					t.Fatalf("connection %d from %s: %v, want %v", i+1, p, got, tc.want[i])
				}
				if got == Allowed {
					opened++
				}
			}
			if l.Conns() != opened {
				t.Errorf("%d connections counted, %d opened", l.Conns(), opened)
			}
			l.CloseConn(netip.MustParseAddr(tc.thenClose))
			if got := l.OpenConn(netip.MustParseAddr(tc.thenOpen)); got != tc.thenOpenGot {
				t.Errorf("after a close, %s: %v, want %v", tc.thenOpen, got, tc.thenOpenGot)
			}
		})
	}
}

func TestClientIPTwins(t *testing.T) {
	l := New(Config{Trusted: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("::1/128")}})
	tests := []struct {
		peer, xff, want string
	}{
		{"10.1.255.255", "1.2.3.4", "1.2.3.4"},      // last address of the trusted prefix
		{"10.1.0.0", "1.2.3.4", "1.2.3.4"},          // first
		{"10.2.0.0", "1.2.3.4", "10.2.0.0"},         // one past it
		{"10.0.255.255", "1.2.3.4", "10.0.255.255"}, // one before it
		{"::1", "2001:db8::7", "2001:db8::7"},
		{"::2", "2001:db8::7", "::2"},
		{"10.1.0.1", " 1.2.3.4 ", "1.2.3.4"},
		{"10.1.0.1", "5.6.7.8,1.2.3.4", "1.2.3.4"},
		{"10.1.0.1", "1.2.3.4, 10.1.9.9, 10.1.8.8", "1.2.3.4"},
		{"10.1.0.1", "1.2.3.4, 9.9.9.9", "9.9.9.9"},
	}
	for _, tc := range tests {
		got := l.ClientIP(netip.MustParseAddr(tc.peer), []byte(tc.xff))
		if got.String() != tc.want {
			t.Errorf("ClientIP(%s, %q) = %s, want %s", tc.peer, tc.xff, got, tc.want)
		}
	}
}

// TestCloseConnKeepsTheOthers: closing one of two connections from an address leaves the
// other counted: the cap of 2 then allows one more, not two.
func TestCloseConnKeepsTheOthers(t *testing.T) {
	l := New(Config{MaxConnsPerIP: 2})
	a := netip.MustParseAddr("10.0.0.1")
	l.OpenConn(a)
	l.OpenConn(a)
	l.CloseConn(a)
	if got := l.OpenConn(a); got != Allowed {
		t.Fatalf("second connection after a close: %v", got)
	}
	if got := l.OpenConn(a); got != TooManyConnsPerIP {
		t.Fatalf("third connection with two open: %v, want TooManyConnsPerIP", got)
	}
	if l.Conns() != 2 {
		t.Errorf("%d connections counted, want 2", l.Conns())
	}
}
