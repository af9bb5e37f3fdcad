package cache

import (
	"testing"
	"time"
)

// TestIdleAccountingHolds: readers that take up an idle descriptor and let it go again,
// many times between two janitor passes, leave exactly one idle descriptor counted
// (the count once drifted up by one per cycle until it passed maxIdleOpen, after which
// no descriptor was ever kept open again).
func TestIdleAccountingHolds(t *testing.T) {
	b := newTestBase(t)
	data := content("idle", 300<<10, 1)
	b.put("/idle", data)
	c := openCache(t, b, t.TempDir(), func(c *Config) { c.Revalidate = time.Hour })
	mustGet(t, c, "/idle", data)
	for range 2 * maxIdleOpen {
		h := c.Lookup("/idle")
		if h == nil {
			t.Fatal("Lookup missed the idle descriptor")
		}
		h.Release()
	}
	c.idleMu.Lock()
	n := len(c.idle)
	c.idleMu.Unlock()
	if got := c.idleOpen.Load(); got != int64(n) || n != 1 {
		t.Fatalf("idleOpen %d, idle entries %d; want 1 and 1", got, n)
	}
	c.closeIdle(true)
	if got := c.idleOpen.Load(); got != 0 {
		t.Fatalf("idleOpen %d after closing every idle descriptor", got)
	}
	waitOpen(t, c, 0)
}
