package router

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsroute/natsroute/bus"
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

	// Not rejections of reports, but logged under the same limit.
	rejectEjectCap = numRejections     // an ejection past the pool's share
	rejectEntry    = numRejections + 1 // a member key's value refused
	numLogKinds    = numRejections + 2
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
	v3Purged    atomic.Uint64 // delete markers of v3 member keys purged (pool_v3.go)
	requests    [len(strategyNames)][len(codes)]atomic.Uint64

	oversizeReplies atomic.Uint64 // replies refused: over max_payload
	legacyRouters   atomic.Int64  // 1 while a router of an earlier release shares the bucket

	logMu      sync.Mutex // guards lastLog and suppressed
	lastLog    [numLogKinds]time.Time
	suppressed [numLogKinds]int
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
	Requests        []RequestCount    `json:"requests"`
	ReportsAccepted uint64            `json:"reports_accepted"`
	ReportsRejected map[string]uint64 `json:"reports_rejected"` // by reason
	HealthDropped   uint64            `json:"health_dropped"`   // lost as a slow consumer
	KVWrites        uint64            `json:"kv_writes"`
	KVConflicts     uint64            `json:"kv_conflicts"`
	// V3MarkersPurged counts the delete markers of v3 member keys this
	// router purged (members gone for MemberTTL).
	V3MarkersPurged   uint64 `json:"v3_markers_purged,omitempty"`
	KVErrors          uint64 `json:"kv_errors"`
	DocumentsRejected uint64 `json:"documents_rejected"`
	Reconnects        uint64 `json:"reconnects"`
	BucketRecreated   uint64 `json:"bucket_recreated"`   // times the bucket was gone and this router created it again
	OversizeReplies   uint64 `json:"oversize_replies"`   // replies refused as over max_payload
	OversizeDocuments uint64 `json:"oversize_documents"` // ring writes refused as over max_payload
	LegacyRouters     bool   `json:"legacy_routers"`     // a router of an earlier release shares the bucket
	// Members, Eligible, Known and Revision are the default pool's.
	Members  int    `json:"members"`
	Eligible int    `json:"eligible"` // nodes ResourceAware would pick from now
	Known    int    `json:"known"`    // nodes ResourceAware knows
	Revision uint64 `json:"revision"`
	// Pools has every pool's figures, sorted by name.
	Pools []PoolStats `json:"pools"`
	// Probes counts probes by result: answered, no_responders, timeout,
	// error, and rate_limited (a due probe that had to wait for the rate).
	Probes map[string]uint64 `json:"probes"`
	// MembersDown counts the times probes took a node down; Downs splits
	// it by reason: no_responders, probe_timeouts.
	MembersDown uint64            `json:"members_down"`
	Downs       map[string]uint64 `json:"downs"`
	// Feedback counts route.feedback messages by outcome: probed (about a
	// probing member), counted (about a member that does not probe),
	// ignored (not about a member of that pool), invalid, rate_limited.
	Feedback map[string]uint64 `json:"feedback"`
	// Ejections counts ejections by outcome: ejected (this router began
	// one: callers' failures against a node that answers probes),
	// over_share (one not begun or not honoured: the pool's share of
	// ejected nodes was reached), unshared (begun, but the bucket refused
	// its key: only this router honours it).
	Ejections map[string]uint64 `json:"ejections"`
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
	Ejected           int            `json:"ejected"` // members ejected now (callers' failures)
	Requests          []RequestCount `json:"requests"`
}

// RequestCount counts route.request answers by strategy and code.
type RequestCount struct {
	Strategy string `json:"strategy"`
	Code     int    `json:"code"`
	Count    uint64 `json:"count"`
}
