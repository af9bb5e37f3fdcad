package server

import (
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modoffload/offload/cache"
	"github.com/modoffload/offload/limiter"
)

// metrics are the counters the admin listener exports. Counters are atomic, so the event
// loops update them directly.
type metrics struct {
	registry  *prometheus.Registry
	requests  *prometheus.CounterVec
	byStatus  [600]atomic.Pointer[prometheus.Counter] // requests by status, resolved once
	bytesSent prometheus.Counter
	refusals  *prometheus.CounterVec
	inflight  atomic.Int64 // requests being answered: waiting for the base or sending a body

	// By listener: [0] plain HTTP, [1] HTTPS.
	listenerRequests [2]prometheus.Counter
	listenerBytes    [2]prometheus.Counter
	handshakes       *prometheus.CounterVec // TLS handshakes, by result

	diskDeferrals prometheus.Counter   // sends that waited for the disk pool
	diskReads     prometheus.Histogram // how long the disk pool's reads took
	// diskWaitsGivenUp counts pages a worker waited awaitLimit for, asleep, before it
	// let the read block instead (disk.go).
	diskWaitsGivenUp prometheus.Counter
}

func newMetrics(c *cache.Cache, l *limiter.Limiter) *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "offload_requests_total", Help: "Responses sent, by status.",
	}, []string{"status"})
	m.bytesSent = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "offload_sent_bytes_total", Help: "Body bytes sent to clients.",
	})
	byListener := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "offload_listener_requests_total", Help: "Responses sent, by listener (http, https).",
	}, []string{"listener"})
	bytesByListener := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "offload_listener_sent_bytes_total", Help: "Body bytes sent, by listener (http, https).",
	}, []string{"listener"})
	for i, l := range []string{"http", "https"} {
		m.listenerRequests[i] = byListener.WithLabelValues(l)
		m.listenerBytes[i] = bytesByListener.WithLabelValues(l)
	}
	m.handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "offload_tls_handshakes_total", Help: "TLS handshakes on the HTTPS listeners, by result (ok, failed).",
	}, []string{"result"})
	m.diskDeferrals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "offload_disk_deferrals_total",
		Help: "Sends whose next bytes were not in memory, handed to the disk pool instead of blocking a loop.",
	})
	m.diskReads = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "offload_disk_read_seconds",
		Help:    "How long the disk pool took to read a deferred chunk into memory.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	m.diskWaitsGivenUp = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "offload_disk_slow_pages_total",
		Help: "Pages the disk pool waited 500 ms for without blocking, then read blocking (a slow disk, or a failed read).",
	})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "offload_limiter_refusals_total", Help: "Requests or connections refused by a cap.",
	}, []string{"cap"})
	stat := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	s := &c.Stats
	m.registry.MustRegister(m.requests, m.bytesSent, byListener, bytesByListener, m.handshakes, m.refusals, m.diskDeferrals, m.diskReads, m.diskWaitsGivenUp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		stat("offload_cache_hits_total", "Requests served from a committed cache entry.", &s.Hits),
		stat("offload_cache_misses_total", "Requests that needed a fill.", &s.Misses),
		stat("offload_cache_stale_total", "Requests served stale because the base was down.", &s.Stale),
		stat("offload_cache_fills_total", "Fills started (upstream GETs coalesced).", &s.Fills),
		stat("offload_cache_fill_errors_total", "Fills that failed.", &s.FillErrors),
		stat("offload_cache_evictions_total", "Entries evicted to stay under the bound.", &s.Evictions),
		stat("offload_cache_rejected_total", "Fills not kept: the policy preferred the entries cached.", &s.Rejected),
		stat("offload_upstream_heads_total", "HEAD requests sent to the base.", &s.Heads),
		stat("offload_upstream_gets_total", "GET requests sent to the base.", &s.Gets),
		stat("offload_cache_resumed_total", "Fills continued where their bytes stopped (after a restart or a base that dropped).", &s.Resumed),
		stat("offload_docroot_hits_total", "Requests answered from the --docroot local copy.", &s.Local),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "offload_active_connections", Help: "Open client connections."},
			func() float64 { return float64(l.Conns()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "offload_active_downloads", Help: "Requests being answered: waiting for the base or sending a body."},
			func() float64 { return float64(m.inflight.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "offload_open_files", Help: "Cache data files open (each shared by its readers; idle ones close after 10 s)."},
			func() float64 { return float64(s.OpenFiles.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "offload_upstream_windows", Help: "Ranged fetches under way for readers far ahead of a fill."},
			func() float64 { return float64(s.Windows.Load()) }),
	)
	return m
}

func (m *metrics) request(status int, sent int64, tls bool) {
	l := 0
	if tls {
		l = 1
	}
	m.listenerRequests[l].Inc()
	if sent > 0 {
		m.listenerBytes[l].Add(float64(sent))
	}
	if status < 100 || status >= len(m.byStatus) {
		status = 599
	}
	p := m.byStatus[status].Load()
	if p == nil {
		c := m.requests.WithLabelValues(strconv.Itoa(status))
		m.byStatus[status].Store(&c)
		p = &c
	}
	(*p).Inc()
	if sent > 0 {
		m.bytesSent.Add(float64(sent))
	}
}

// AdminHandler serves /metrics for Prometheus, /healthz, and Go's profiles under /debug/pprof/.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	// Go's profiles, for an operator measuring memory or CPU on their own host (the
	// admin listener is meant for loopback or a private network).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}
