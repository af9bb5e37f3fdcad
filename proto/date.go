package proto

import (
	"net/http"
	"sync/atomic"
	"time"
)

// TimeFormat is the IMF-fixdate layout HTTP uses for dates.
const TimeFormat = http.TimeFormat

// AppendTime appends t in IMF-fixdate form.
func AppendTime(dst []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(dst, TimeFormat)
}

// ParseTime parses an HTTP date in any of the three forms RFC 9110 allows. The common
// IMF-fixdate form is parsed without allocating.
func ParseTime(b []byte) (time.Time, bool) {
	if t, ok := parseIMFFixdate(b); ok {
		return t, true
	}
	t, err := http.ParseTime(string(b))
	return t, err == nil
}

var months = [12]string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}

// parseIMFFixdate parses "Sun, 06 Nov 1994 08:49:37 GMT".
func parseIMFFixdate(b []byte) (time.Time, bool) {
	if len(b) != 29 || b[3] != ',' || b[4] != ' ' || b[7] != ' ' || b[11] != ' ' ||
		b[16] != ' ' || b[19] != ':' || b[22] != ':' || b[25] != ' ' || string(b[26:]) != "GMT" {
		return time.Time{}, false
	}
	num := func(s []byte) (int, bool) {
		n := 0
		for _, c := range s {
			if !isDigit(c) {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	day, ok1 := num(b[5:7])
	year, ok2 := num(b[12:16])
	hh, ok3 := num(b[17:19])
	mm, ok4 := num(b[20:22])
	ss, ok5 := num(b[23:25])
	if !(ok1 && ok2 && ok3 && ok4 && ok5) || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 {
		return time.Time{}, false
	}
	month := -1
	for i, m := range months {
		if string(b[8:11]) == m {
			month = i
			break
		}
	}
	if month < 0 {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month+1), day, hh, mm, ss, 0, time.UTC), true
}

// dateCache holds the Date header value of the current second, so each response does
// not format the time again.
type dateCache struct {
	unix int64
	text []byte
}

var currentDate atomic.Pointer[dateCache]

// AppendDate appends the current time in IMF-fixdate form, formatted at most once a second.
func AppendDate(dst []byte) []byte {
	now := time.Now()
	d := currentDate.Load()
	if d == nil || d.unix != now.Unix() {
		d = &dateCache{unix: now.Unix(), text: AppendTime(nil, now)}
		currentDate.Store(d)
	}
	return append(dst, d.text...)
}
