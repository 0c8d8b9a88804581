package bus

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Why a health report was rejected.
type rejection int

const (
	rejectMalformed    rejection = iota // undecodable, trailing bytes, too deep, missing fields
	rejectInvalidID                     // node id not [A-Za-z0-9_-]{1,64}
	rejectInvalidValue                  // NaN, out of range, unknown status, body/subject id mismatch
	rejectStaleSeq                      // seq older than the last one seen
	numRejections
)

var reasonNames = [numRejections]string{"malformed", "invalid_id", "invalid_value", "stale_seq"}

func rejectReason(err error) rejection {
	switch {
	case errors.Is(err, ErrInvalidNodeID):
		return rejectInvalidID
	case errors.Is(err, errStaleSeq):
		return rejectStaleSeq
	case errors.Is(err, errMalformed):
		return rejectMalformed
	}
	return rejectInvalidValue
}

var (
	strategyNames = [...]string{StrategyConsistentHash, StrategyResourceAware, "unknown"}
	codes         = [...]int{200, CodeBadRequest, CodeNoNodes, CodeInternal}
)

// counters are the router's counts; all atomic.
type counters struct {
	accepted    atomic.Uint64
	rejected    [numRejections]atomic.Uint64
	kvWrites    atomic.Uint64
	kvConflicts atomic.Uint64
	kvErrors    atomic.Uint64
	docRejected atomic.Uint64
	reconnects  atomic.Uint64
	requests    [len(strategyNames)][len(codes)]atomic.Uint64

	logMu      sync.Mutex // guards lastLog and suppressed
	lastLog    [numRejections]time.Time
	suppressed [numRejections]int
}

func (c *counters) request(strategy string, code int, took time.Duration, cfg Config) {
	si := len(strategyNames) - 1
	for i, n := range strategyNames {
		if n == strategy {
			si = i
		}
	}
	ci := len(codes) - 1
	for i, n := range codes {
		if n == code {
			ci = i
		}
	}
	c.requests[si][ci].Add(1)
	if cfg.OnRequest != nil {
		cfg.OnRequest(strategyNames[si], codes[ci], took)
	}
}

// limitedLog logs at most once a second per reason, saying how many
// messages it held back since.
func (c *counters) limitedLog(log *slog.Logger, reason rejection, msg string, args ...any) {
	c.logMu.Lock()
	now := time.Now()
	if now.Sub(c.lastLog[reason]) < time.Second {
		c.suppressed[reason]++
		c.logMu.Unlock()
		return
	}
	held := c.suppressed[reason]
	c.lastLog[reason], c.suppressed[reason] = now, 0
	c.logMu.Unlock()
	if held > 0 {
		args = append(args, "suppressed_since_last", held)
	}
	log.Warn(msg, args...)
}

// Stats is a snapshot of a router's counters.
type Stats struct {
	Requests          []RequestCount    `json:"requests"`
	ReportsAccepted   uint64            `json:"reports_accepted"`
	ReportsRejected   map[string]uint64 `json:"reports_rejected"` // by reason
	HealthDropped     uint64            `json:"health_dropped"`   // lost as a slow consumer
	KVWrites          uint64            `json:"kv_writes"`
	KVConflicts       uint64            `json:"kv_conflicts"`
	KVErrors          uint64            `json:"kv_errors"`
	DocumentsRejected uint64            `json:"documents_rejected"`
	Reconnects        uint64            `json:"reconnects"`
	Members           int               `json:"members"`
	Eligible          int               `json:"eligible"` // nodes ResourceAware would pick from now
	Known             int               `json:"known"`    // nodes ResourceAware knows
	Revision          uint64            `json:"revision"`
}

// RequestCount counts route.request answers by strategy and code.
type RequestCount struct {
	Strategy string `json:"strategy"`
	Code     int    `json:"code"`
	Count    uint64 `json:"count"`
}

// Stats returns the router's counters.
func (r *Router) Stats() Stats {
	c := &r.stats
	s := Stats{
		ReportsAccepted:   c.accepted.Load(),
		ReportsRejected:   map[string]uint64{},
		KVWrites:          c.kvWrites.Load(),
		KVConflicts:       c.kvConflicts.Load(),
		KVErrors:          c.kvErrors.Load(),
		DocumentsRejected: c.docRejected.Load(),
		Reconnects:        c.reconnects.Load(),
	}
	for i, n := range reasonNames {
		s.ReportsRejected[n] = c.rejected[i].Load()
	}
	for si, sn := range strategyNames {
		for ci, code := range codes {
			if n := c.requests[si][ci].Load(); n > 0 {
				s.Requests = append(s.Requests, RequestCount{Strategy: sn, Code: code, Count: n})
			}
		}
	}
	r.stateMu.Lock()
	if r.healthSub != nil {
		if d, err := r.healthSub.Dropped(); err == nil {
			s.HealthDropped = uint64(d)
		}
	}
	r.stateMu.Unlock()
	v := r.ring.current()
	s.Members, s.Revision = len(v.doc.Nodes), v.rev
	for _, n := range r.balancer.Nodes() {
		s.Known++
		if n.Eligible {
			s.Eligible++
		}
	}
	return s
}

// NodeStatus is one node as a router sees it (route.nodes).
type NodeStatus struct {
	ID          string  `json:"id" msgpack:"id"`
	Member      bool    `json:"member" msgpack:"member"`     // on the ring
	Status      string  `json:"status" msgpack:"status"`     // up or draining
	Weight      float64 `json:"weight" msgpack:"weight"`     // ring weight and selection multiplier
	Score       float64 `json:"score" msgpack:"score"`       // ResourceAware selection weight
	Eligible    bool    `json:"eligible" msgpack:"eligible"` // ResourceAware may pick it now
	Reason      string  `json:"reason,omitempty" msgpack:"reason,omitempty"`
	Reported    bool    `json:"reported" msgpack:"reported"`           // a report has arrived since the router started
	ReportAgeMS int64   `json:"report_age_ms" msgpack:"report_age_ms"` // -1 if none
	Stale       bool    `json:"stale" msgpack:"stale"`
	CPUUsage    float64 `json:"cpu_usage" msgpack:"cpu_usage"`
	MemoryUsage float64 `json:"memory_usage" msgpack:"memory_usage"`
	Connections int64   `json:"active_connections" msgpack:"active_connections"`
	LatencyMS   float64 `json:"avg_latency_ms" msgpack:"avg_latency_ms"`
}

// NodesState is the reply of route.nodes.
type NodesState struct {
	Revision uint64       `json:"revision" msgpack:"revision"`
	Nodes    []NodeStatus `json:"nodes" msgpack:"nodes"`
}

// Nodes returns every node the router knows: ring members and nodes that
// report, sorted by id.
func (r *Router) Nodes() NodesState {
	v := r.ring.current()
	out := NodesState{Revision: v.rev, Nodes: []NodeStatus{}}
	for _, n := range r.balancer.Nodes() {
		m, member := v.doc.node(n.ID)
		st := NodeStatus{
			ID: n.ID, Member: member, Status: n.Status, Weight: n.Weight,
			Score: n.Score, Eligible: n.Eligible, Reason: n.Reason,
			Reported: n.HasReport, ReportAgeMS: -1, Stale: n.Stale,
			CPUUsage: n.Report.CPUUsage, MemoryUsage: n.Report.MemoryUsage,
			Connections: n.Report.ActiveConnections,
			LatencyMS:   float64(n.Report.AvgLatency) / float64(time.Millisecond),
		}
		if member && !n.HasReport {
			st.Weight = m.Weight
			if m.Status == StatusDraining {
				st.Status = StatusDraining
			}
		}
		if n.HasReport {
			st.ReportAgeMS = n.Age.Milliseconds()
		}
		out.Nodes = append(out.Nodes, st)
	}
	return out
}
