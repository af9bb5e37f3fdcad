package cache

import "os"

// closeLater closes f off the caller's goroutine. The last close of a data file that is
// already unlinked (evicted, replaced, purged, a window, a file over the bound) frees
// its blocks, which takes the file system a while for a big file (0.4 s for 2 GiB
// here); readers release files on the server's event loop, which must never wait for
// the disk. One goroutine per cache closes them in order; when it falls far behind, a
// goroutine of its own takes the extra file.
func (c *Cache) closeLater(f *os.File) {
	if f == nil {
		return
	}
	select {
	case c.closeq <- f:
	default:
		go c.closeNow(f)
	}
}

func (c *Cache) closeNow(f *os.File) {
	if err := f.Close(); err != nil {
		c.cfg.Logf("cache: close %s: %v", f.Name(), err)
	}
	c.Stats.OpenFiles.Add(-1)
}

func (c *Cache) runCloser(q <-chan *os.File) {
	for f := range q {
		c.closeNow(f)
	}
}
