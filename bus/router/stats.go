package router

import (
	"errors"
	"github.com/natsroute/natsroute/bus"
	"log/slog"
	"math"
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
	rejectInvalidPool                   // pools: empty, too many, duplicate or invalid name
	rejectTooManyPools                  // a new pool past max_pools
	numRejections
)

var reasonNames = [numRejections]string{"malformed", "invalid_id", "invalid_value", "stale_seq", "invalid_pool", "too_many_pools"}

func rejectReason(err error) rejection {
	switch {
	case errors.Is(err, bus.ErrInvalidNodeID):
		return rejectInvalidID
	case errors.Is(err, errTooManyPools):
		return rejectTooManyPools
	case errors.Is(err, bus.ErrInvalidPool):
		return rejectInvalidPool
	case errors.Is(err, errStaleSeq):
		return rejectStaleSeq
	case errors.Is(err, bus.ErrMalformed):
		return rejectMalformed
	}
	return rejectInvalidValue
}

var (
	strategyNames = [...]string{bus.StrategyConsistentHash, bus.StrategyResourceAware, "unknown"}
	codes         = [...]int{200, bus.CodeBadRequest, bus.CodeNoNodes, bus.CodeInternal}
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
	recreated   atomic.Uint64 // the bucket was gone and this router created it again
	requests    [len(strategyNames)][len(codes)]atomic.Uint64

	oversizeReplies atomic.Uint64 // replies refused: over max_payload
	legacyRouters   atomic.Int64  // 1 while a router of an earlier release shares the bucket

	logMu      sync.Mutex // guards lastLog and suppressed
	lastLog    [numRejections]time.Time
	suppressed [numRejections]int
}

// request counts one answered request, in its pool too if it had one.
func (c *counters) request(p *pool, strategy string, code int, took time.Duration, cfg Config) {
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
	if p != nil {
		p.count(si, ci)
	}
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
	BucketRecreated   uint64            `json:"bucket_recreated"`   // times the bucket was gone and this router created it again
	OversizeReplies   uint64            `json:"oversize_replies"`   // replies refused as over max_payload
	OversizeDocuments uint64            `json:"oversize_documents"` // ring writes refused as over max_payload
	LegacyRouters     bool              `json:"legacy_routers"`     // a router of an earlier release shares the bucket
	// Members, Eligible, Known and Revision are the default pool's.
	Members  int    `json:"members"`
	Eligible int    `json:"eligible"` // nodes ResourceAware would pick from now
	Known    int    `json:"known"`    // nodes ResourceAware knows
	Revision uint64 `json:"revision"`
	// Pools has every pool's figures, sorted by name.
	Pools []PoolStats `json:"pools"`
}

// PoolStats are one pool's figures.
type PoolStats struct {
	Name              string         `json:"name"`
	Key               string         `json:"key"`
	Members           int            `json:"members"`
	Eligible          int            `json:"eligible"`
	Known             int            `json:"known"`
	Revision          uint64         `json:"revision"`
	Format            int            `json:"format"`   // of its ring document
	Shedding          int            `json:"shedding"` // members that shed keys
	OversizeDocuments uint64         `json:"oversize_documents"`
	Requests          []RequestCount `json:"requests"`
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
		BucketRecreated:   c.recreated.Load(),
		OversizeReplies:   c.oversizeReplies.Load(),
		LegacyRouters:     c.legacyRouters.Load() != 0,
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
	for _, p := range r.sortedPools() {
		ps := p.stats()
		s.OversizeDocuments += ps.OversizeDocuments
		if p.name == bus.DefaultPool {
			s.Members, s.Eligible, s.Known, s.Revision = ps.Members, ps.Eligible, ps.Known, ps.Revision
		}
		s.Pools = append(s.Pools, ps)
	}
	return s
}

func (p *pool) stats() PoolStats {
	v := p.ring.Current()
	ps := PoolStats{
		Name: p.name, Key: p.key, Members: len(v.Doc.Nodes), Revision: v.Rev, Format: v.Doc.Format,
		Shedding: v.Snap.Shedding(), OversizeDocuments: p.oversize.Load(),
	}
	ps.Known, ps.Eligible = p.settle().Counts()
	for si, sn := range strategyNames {
		for ci, code := range codes {
			if n := p.requests[si][ci].Load(); n > 0 {
				ps.Requests = append(ps.Requests, RequestCount{Strategy: sn, Code: code, Count: n})
			}
		}
	}
	return ps
}

// Nodes returns every node of the default pool: ring members and nodes
// that report, sorted by id.
func (r *Router) Nodes() bus.NodesState { return r.NodesPage(bus.DefaultPool, 0, math.MaxInt) }

// NodesPage returns up to limit nodes of a pool (0 means bus.DefaultNodesPage)
// from offset on, sorted by id, with the total and the next offset.
func (r *Router) NodesPage(pool string, offset, limit int) bus.NodesState {
	if limit <= 0 {
		limit = bus.DefaultNodesPage
	}
	out := bus.NodesState{Nodes: []bus.NodeStatus{}, Offset: offset}
	p := r.pool(pool)
	if p == nil {
		return out
	}
	if p.name != bus.DefaultPool {
		out.Pool = p.name
	}
	v := p.ring.Current()
	all := p.settle().Nodes()
	out.Revision, out.Total = v.Rev, len(all)
	if offset >= len(all) {
		return out
	}
	end := len(all)
	if limit < end-offset {
		end = offset + limit
		out.Next = end
	}
	for _, n := range all[offset:end] {
		m, member := v.Doc.Node(n.ID)
		st := bus.NodeStatus{
			ID: n.ID, Member: member, Status: n.Status, Weight: n.Weight,
			Score: n.Score, Eligible: n.Eligible, Reason: n.Reason,
			Reported: n.HasReport, ReportAgeMS: -1, Stale: n.Stale,
			CPUUsage: n.Report.CPUUsage, MemoryUsage: n.Report.MemoryUsage,
			Connections: n.Report.ActiveConnections,
			LatencyMS:   float64(n.Report.AvgLatency) / float64(time.Millisecond),
			Shed:        m.Shed,
			Recovering:  n.Recovering, Note: n.Note,
		}
		if n.SlowStart < 1 {
			st.SlowStart = n.SlowStart
		}
		if member && !n.HasReport {
			st.Weight = m.Weight
			if m.Status == bus.StatusDraining {
				st.Status = bus.StatusDraining
			}
		}
		if n.HasReport {
			st.ReportAgeMS = n.Age.Milliseconds()
		}
		out.Nodes = append(out.Nodes, st)
	}
	return out
}

// Pools lists the pools this router serves, sorted by name.
func (r *Router) Pools() bus.PoolsState {
	out := bus.PoolsState{Pools: []bus.PoolInfo{}}
	for _, p := range r.sortedPools() {
		v := p.ring.Current()
		known, _ := p.settle().Counts()
		out.Pools = append(out.Pools, bus.PoolInfo{Name: p.name, Key: p.key, Members: len(v.Doc.Nodes), Known: known, Revision: v.Rev, Format: v.Doc.Format})
	}
	return out
}
