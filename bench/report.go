package bench

import (
	"fmt"
	"io"
	"slices"
)

// WriteTable prints a result as a small table for people.
func WriteTable(w io.Writer, cfg Config, r *Result) {
	fmt.Fprintf(w, "%d URL(s), %d connections, %.2fs\n", len(cfg.URLs), cfg.Conns, r.Seconds)
	fmt.Fprintf(w, "  requests     %d (%.1f/s), errors %d, unfinished at the end %d\n", r.Requests, r.RequestsPerS, r.Errors, r.Unfinished)
	fmt.Fprintf(w, "  read         %s (%s/s)\n", size(float64(r.Bytes)), size(r.BytesPerS))
	codes := make([]int, 0, len(r.Statuses))
	for c := range r.Statuses {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	fmt.Fprint(w, "  statuses    ")
	for _, c := range codes {
		fmt.Fprintf(w, " %d: %d", c, r.Statuses[c])
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  first byte   p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n", r.FirstByte.P50, r.FirstByte.P90, r.FirstByte.P99, r.FirstByte.Max)
	fmt.Fprintf(w, "  last byte    p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n", r.LastByte.P50, r.LastByte.P90, r.LastByte.P99, r.LastByte.Max)
	fmt.Fprintf(w, "  connections  peak %d open\n", r.PeakConns)
	if r.PeakRSS > 0 {
		fmt.Fprintf(w, "  target RSS   %s before, %s peak, %s per open connection\n", size(float64(r.BaseRSS)), size(float64(r.PeakRSS)), size(r.RSSPerConn))
	}
	if r.Dropped > 0 {
		fmt.Fprintf(w, "  cold disk    %d files evicted from the page cache first\n", r.Dropped)
	}
	if p := r.Probe; p != nil {
		fmt.Fprintf(w, "  probe        %d requests, %d errors; p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n",
			p.Requests, p.Errors, p.Latency.P50, p.Latency.P90, p.Latency.P99, p.Latency.Max)
	}
	fmt.Fprintf(w, "  client CPU   %.0f%% of one core\n", r.ClientCPU)
	for _, e := range r.ErrorSamples {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
}

func size(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}
