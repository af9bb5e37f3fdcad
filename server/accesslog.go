package server

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// AccessLog writes one line per response in Apache's Combined Log Format followed by
// the listener's scheme, http or https (Apache's "%h %l %u %t \"%r\" %>s %b
// \"%{Referer}i\" \"%{User-Agent}i\" %{REQUEST_SCHEME}x"; log parsers read the
// Combined fields and ignore one more). Lines are
// buffered and flushed once a second; Reopen (on SIGHUP) starts a new file after
// rotation. A nil *AccessLog logs nothing.
type AccessLog struct {
	path string // "-" for standard output

	mu sync.Mutex // protects w, f
	w  *bufio.Writer
	f  *os.File
}

// OpenAccessLog opens path for appending ("-" is standard output) and starts the flusher.
func OpenAccessLog(path string) (*AccessLog, error) {
	l := &AccessLog{path: path}
	if err := l.Reopen(); err != nil {
		return nil, err
	}
	go func() {
		for range time.Tick(time.Second) {
			l.Flush()
		}
	}()
	return l, nil
}

// Reopen closes and opens the file again.
func (l *AccessLog) Reopen() error {
	var f *os.File
	var w io.Writer = os.Stdout
	if l.path != "-" {
		var err error
		f, err = os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("access log: %w", err)
		}
		w = f
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != nil {
		l.w.Flush()
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.w = f, bufio.NewWriterSize(w, 64<<10)
	return nil
}

// Flush writes out buffered lines.
func (l *AccessLog) Flush() {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.w.Flush()
	l.mu.Unlock()
}

// logEntry is what one line says.
type logEntry struct {
	client  string
	when    time.Time
	request string // method, target and protocol, as received
	status  int
	bytes   int64
	referer string
	agent   string
	https   bool // the request came on an HTTPS listener
}

// write appends one line.
func (l *AccessLog) write(e *logEntry) {
	if l == nil {
		return
	}
	var buf [512]byte
	b := append(buf[:0], e.client...)
	b = append(b, " - - ["...)
	b = e.when.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
	b = append(b, "] \""...)
	b = appendEscaped(b, e.request)
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(e.status), 10)
	b = append(b, ' ')
	if e.bytes > 0 {
		b = strconv.AppendInt(b, e.bytes, 10)
	} else {
		b = append(b, '-')
	}
	b = append(b, " \""...)
	b = appendEscaped(b, orDash(e.referer))
	b = append(b, "\" \""...)
	b = appendEscaped(b, orDash(e.agent))
	if e.https {
		b = append(b, "\" https\n"...)
	} else {
		b = append(b, "\" http\n"...)
	}
	l.mu.Lock()
	l.w.Write(b)
	l.mu.Unlock()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// appendEscaped appends s with quotes, backslashes and control bytes escaped as Apache
// does, so a client cannot forge log lines.
func appendEscaped(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c >= 0x7f:
			b = append(b, '\\', 'x', hex[c>>4], hex[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}
