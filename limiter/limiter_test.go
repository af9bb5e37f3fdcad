package limiter

import (
	"net/netip"
	"sync"
	"testing"
)

func TestDownloadCap(t *testing.T) {
	l := New(Config{MaxDupes: 1})
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	k1, ok := l.StartDownload(a, "/f")
	if !ok {
		t.Fatal("first download refused")
	}
	if _, ok := l.StartDownload(a, "/f"); ok {
		t.Fatal("second simultaneous download of the same URL allowed")
	}
	k2, ok := l.StartDownload(a, "/g")
	if !ok {
		t.Fatal("other URL refused")
	}
	k3, ok := l.StartDownload(b, "/f")
	if !ok {
		t.Fatal("other client refused")
	}
	l.EndDownload(k1)
	k4, ok := l.StartDownload(a, "/f")
	if !ok {
		t.Fatal("slot not freed")
	}
	for _, k := range []string{k2, k3, k4} {
		l.EndDownload(k)
	}
	if l.Downloads() != 0 {
		t.Errorf("%d downloads left", l.Downloads())
	}
}

func TestNoCap(t *testing.T) {
	l := New(Config{})
	a := netip.MustParseAddr("10.0.0.1")
	for range 10 {
		if _, ok := l.StartDownload(a, "/f"); !ok {
			t.Fatal("refused with no cap")
		}
	}
}

func TestConnCaps(t *testing.T) {
	l := New(Config{MaxConns: 3, MaxConnsPerIP: 2})
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	if l.OpenConn(a) != Allowed || l.OpenConn(a) != Allowed {
		t.Fatal("refused under the caps")
	}
	if got := l.OpenConn(a); got != TooManyConnsPerIP {
		t.Fatalf("third from one address: %v", got)
	}
	if l.OpenConn(b) != Allowed {
		t.Fatal("other address refused")
	}
	if got := l.OpenConn(netip.MustParseAddr("10.0.0.3")); got != TooManyConns {
		t.Fatalf("fourth in all: %v", got)
	}
	l.CloseConn(a)
	if l.OpenConn(a) != Allowed {
		t.Fatal("slot not freed")
	}
}

func TestClientIP(t *testing.T) {
	l := New(Config{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16")}})
	tests := []struct {
		peer, xff, want string
	}{
		{"192.0.2.1", "1.2.3.4", "192.0.2.1"},         // untrusted peer: header ignored
		{"127.0.0.1", "", "127.0.0.1"},                // no header
		{"127.0.0.1", "1.2.3.4", "1.2.3.4"},           // trusted proxy
		{"127.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4"},  // left-most is the client's own claim
		{"127.0.0.1", "1.2.3.4, 10.1.2.3", "1.2.3.4"}, // chain of trusted proxies
		{"127.0.0.1", "garbage", "127.0.0.1"},
		{"127.0.0.1", "::ffff:1.2.3.4", "1.2.3.4"},
	}
	for _, tc := range tests {
		got := l.ClientIP(netip.MustParseAddr(tc.peer), []byte(tc.xff))
		if got.String() != tc.want {
			t.Errorf("ClientIP(%s, %q) = %s, want %s", tc.peer, tc.xff, got, tc.want)
		}
	}
}

func TestConcurrent(t *testing.T) {
	l := New(Config{MaxDupes: 2, MaxConns: 1000})
	a := netip.MustParseAddr("10.0.0.1")
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				l.OpenConn(a)
				if k, ok := l.StartDownload(a, "/x"); ok {
					l.EndDownload(k)
				}
				l.CloseConn(a)
			}
		}()
	}
	wg.Wait()
	if l.Conns() != 0 || l.Downloads() != 0 {
		t.Fatalf("leaked: %d conns, %d downloads", l.Conns(), l.Downloads())
	}
}
