package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the router's Prometheus series, all prefixed natsroute_.
type metrics struct {
	latency *prometheus.HistogramVec
	// observers[strategy][code] are latency's children, looked up once so
	// that recording a request allocates nothing.
	observers map[string]map[int]prometheus.Observer
}

func newMetrics() *metrics {
	m := &metrics{latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "natsroute",
		Name:      "request_duration_seconds",
		Help:      "Time to answer a route.request, by strategy and code.",
		Buckets:   []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3},
	}, []string{"strategy", "code"}), observers: map[string]map[int]prometheus.Observer{}}
	for _, s := range []string{bus.StrategyConsistentHash, bus.StrategyResourceAware, "unknown"} {
		m.observers[s] = map[int]prometheus.Observer{}
		for _, c := range []int{200, bus.CodeBadRequest, bus.CodeNoNodes, bus.CodeInternal} {
			m.observers[s][c] = m.latency.WithLabelValues(s, codeLabel(c))
		}
	}
	return m
}

func (m *metrics) observe(strategy string, code int, took time.Duration) {
	if o, ok := m.observers[strategy][code]; ok {
		o.Observe(took.Seconds())
		return
	}
	m.latency.WithLabelValues(strategy, codeLabel(code)).Observe(took.Seconds())
}

func codeLabel(code int) string {
	switch code {
	case 200:
		return "200"
	case 400:
		return "400"
	case 503:
		return "503"
	}
	return "500"
}

// statsCollector exposes Router.Stats at scrape time.
type statsCollector struct {
	r                                                                      *router.Router
	requests, accepted, rejected, dropped, writes, conflicts, kvErrs, docs *prometheus.Desc
	reconnects, membersDesc, eligibleDesc, knownDesc, revisionDesc         *prometheus.Desc
	poolRequests, shedding, oversizeReplies, oversizeDocs, legacy, pools   *prometheus.Desc
	memberShed, recreated                                                  *prometheus.Desc
	probes, downs, feedback, ejections, ejected                            *prometheus.Desc
}

func newStatsCollector(r *router.Router) *statsCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("natsroute_"+name, help, labels, nil)
	}
	return &statsCollector{
		r:               r,
		requests:        d("requests_total", "route.request answers by strategy and code.", "strategy", "code"),
		poolRequests:    d("pool_requests_total", "route.request answers by pool, strategy and code.", "pool", "strategy", "code"),
		shedding:        d("shedding_members", "Members that shed keys (load-aware ConsistentHash), by pool.", "pool"),
		oversizeReplies: d("oversize_replies_total", "Replies refused because they would exceed the server's max_payload."),
		oversizeDocs:    d("oversize_documents_total", "Ring writes refused because the document would exceed the server's max_payload, by pool.", "pool"),
		legacy:          d("legacy_routers", "1 while a router of an earlier release (no pools, no format 2) shares the bucket."),
		pools:           d("pools", "Pools this router serves."),
		memberShed:      d("member_shed", "Fraction of its keys a member sheds to the next members (load-aware ConsistentHash); only members that shed.", "pool", "node"),
		accepted:        d("reports_accepted_total", "Health reports accepted."),
		rejected:        d("reports_rejected_total", "Health reports rejected, by reason.", "reason"),
		dropped:         d("reports_dropped_total", "Health reports lost because the router fell behind (slow consumer)."),
		writes:          d("kv_writes_total", "Ring documents written to the KV bucket."),
		conflicts:       d("kv_conflicts_total", "Compare-and-set conflicts on the ring document (re-read and re-applied)."),
		kvErrs:          d("kv_errors_total", "Failed ring writes (retried)."),
		docs:            d("documents_rejected_total", "Ring documents in the bucket that this router refused."),
		reconnects:      d("reconnects_total", "Reconnections to NATS."),
		recreated:       d("bucket_recreated_total", "Times the KV bucket was gone and this router created it again (and republished every pool's ring)."),
		membersDesc:     d("members", "Members of the ring, by pool.", "pool"),
		eligibleDesc:    d("eligible_nodes", "Nodes ResourceAware would pick from now, by pool.", "pool"),
		knownDesc:       d("known_nodes", "Nodes ResourceAware knows (members and reporters), by pool.", "pool"),
		revisionDesc:    d("ring_revision", "KV revision of the ring the router answers from, by pool.", "pool"),
		probes:          d("probes_total", "Probes of nodes that missed a report or that callers reported, by result (answered, no_responders, timeout, error; rate_limited: a due probe waited for the rate).", "result"),
		downs:           d("members_down_total", "Times probes took a node down (out of its pools until its next report), by reason (no_responders, probe_timeouts).", "reason"),
		feedback:        d("feedback_total", "route.feedback messages, by outcome (probed, counted, ignored, invalid, rate_limited).", "outcome"),
		ejections:       d("ejections_total", "Ejections for callers' failures, by outcome (ejected: this router began one; over_share: refused, the pool's share of ejected nodes was reached; unshared: the bucket refused the key, only this router honours it).", "outcome"),
		ejected:         d("ejected_members", "Members ejected now for callers' failures, by pool.", "pool"),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.accepted, c.rejected, c.dropped, c.writes, c.conflicts, c.kvErrs, c.docs, c.reconnects, c.membersDesc, c.eligibleDesc, c.knownDesc, c.revisionDesc,
		c.poolRequests, c.shedding, c.oversizeReplies, c.oversizeDocs, c.legacy, c.pools, c.memberShed, c.recreated,
		c.probes, c.downs, c.feedback, c.ejections, c.ejected} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, rq := range s.Requests {
		counter(c.requests, rq.Count, rq.Strategy, codeLabel(rq.Code))
	}
	counter(c.accepted, s.ReportsAccepted)
	for reason, n := range s.ReportsRejected {
		counter(c.rejected, n, reason)
	}
	counter(c.dropped, s.HealthDropped)
	counter(c.writes, s.KVWrites)
	counter(c.conflicts, s.KVConflicts)
	counter(c.kvErrs, s.KVErrors)
	counter(c.docs, s.DocumentsRejected)
	counter(c.reconnects, s.Reconnects)
	counter(c.recreated, s.BucketRecreated)
	counter(c.oversizeReplies, s.OversizeReplies)
	for result, n := range s.Probes {
		counter(c.probes, n, result)
	}
	for reason, n := range s.Downs {
		counter(c.downs, n, reason)
	}
	for outcome, n := range s.Feedback {
		counter(c.feedback, n, outcome)
	}
	for outcome, n := range s.Ejections {
		counter(c.ejections, n, outcome)
	}
	legacy := 0.0
	if s.LegacyRouters {
		legacy = 1
	}
	gauge(c.legacy, legacy)
	gauge(c.pools, float64(len(s.Pools)))
	for _, p := range s.Pools {
		gauge(c.membersDesc, float64(p.Members), p.Name)
		gauge(c.eligibleDesc, float64(p.Eligible), p.Name)
		gauge(c.knownDesc, float64(p.Known), p.Name)
		gauge(c.revisionDesc, float64(p.Revision), p.Name)
		gauge(c.shedding, float64(p.Shedding), p.Name)
		gauge(c.ejected, float64(p.Ejected), p.Name)
		counter(c.oversizeDocs, p.OversizeDocuments, p.Name)
		for _, rq := range p.Requests {
			counter(c.poolRequests, rq.Count, p.Name, rq.Strategy, codeLabel(rq.Code))
		}
		if p.Shedding > 0 {
			doc, _ := c.r.PoolRing(p.Name)
			for _, n := range doc.Nodes {
				if n.Shed > 0 {
					gauge(c.memberShed, n.Shed, p.Name, n.ID)
				}
			}
		}
	}
}

type httpServer struct {
	srv  *http.Server
	done chan struct{}
}

// startHTTP serves /healthz, /readyz, /metrics and /status on addr.
func startHTTP(addr string, nc *nats.Conn, r *router.Router, m *metrics, log *slog.Logger) (*httpServer, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.latency, newStatsCollector(r),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, q *http.Request) {
		// ?pool=P shows that pool (default: the default pool); the nodes
		// are the first page of route.nodes, with the total.
		pool := q.URL.Query().Get("pool")
		if pool == "" {
			pool = bus.DefaultPool
		}
		doc, rev := r.PoolRing(pool)
		nodes := r.NodesPage(pool, 0, 0)
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{
			"nats":        map[string]any{"connected": nc.IsConnected(), "url": nc.ConnectedUrlRedacted()},
			"ready":       r.Ready() == nil,
			"pool":        pool,
			"pools":       r.Pools().Pools,
			"revision":    rev,
			"ring":        doc,
			"nodes":       nodes.Nodes,
			"nodes_total": nodes.Total,
			"stats":       r.Stats(),
		})
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	h := &httpServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
		}
	}()
	return h, nil
}

func (h *httpServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
	<-h.done
}
