package router

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/text"
)

// membership is what the router knows of nodes from their health reports:
// the tracker, and the moment the health queue was last empty.
type membership struct {
	r        *Router
	healthMu sync.Mutex // guards tracker and every pool's reporters and shed
	tracker  map[string]*track
	caughtUp atomic.Int64 // unix nanos (cfg.Now) when the health queue was last empty
	pass     uint64       // counts desired's passes (track.pass); guarded by healthMu
}

// track is what this router knows of one node from its health reports.
type track struct {
	seen     time.Time // when the last accepted report arrived (router's clock)
	seq      uint64
	weight   float64
	draining bool
	left     bool     // the last report said leaving
	pools    []string // the pools of its last report that was not leaving
	down     string   // why probes found it down since its last report ("" if not; see liveness)
	pass     uint64   // the last pass of desired that found it on the ring; guarded by healthMu
	probes   bool     // its last report says it answers probes (see liveness.seen)
}

// maxExpiryHold bounds how long expiry is held back while health reports
// wait unprocessed; see silenceNow.
const maxExpiryHold = 5 * time.Second

// poolsOf returns the pools a report lists, or the default pool.
func poolsOf(h bus.Health) []string {
	if h.Pools == nil {
		return []string{bus.DefaultPool}
	}
	return h.Pools
}

// observe records a report in the membership tracker, moves the node in and
// out of pools, and wakes the writer of every pool whose document must
// change. With seq set, a report older than the last one seen is refused
// (unless the node had left). A heartbeat costs a map lookup and, per pool
// of the node, a binary search in that pool's document.
func (m *membership) observe(node string, h bus.Health) error {
	r := m.r
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	t := r.tracker[node]
	if t != nil && h.Seq != 0 && h.Seq < t.seq && !t.left {
		return fmt.Errorf("%w: %w (%d < %d)", bus.ErrInvalidReport, errStaleSeq, h.Seq, t.seq)
	}
	leaving := h.Status == bus.StatusLeaving
	pools := poolsOf(h)
	var prev track
	if t != nil {
		prev = *t
	}
	if leaving && t != nil { // leaving leaves every pool the node is in
		pools = t.pools
	}
	var add []*pool
	if !leaving {
		var fresh []string
		for _, name := range pools {
			if !slices.Contains(prev.pools, name) {
				fresh = append(fresh, name)
			}
		}
		var err error
		if add, err = r.ensurePools(fresh); err != nil {
			return err
		}
	}
	if t == nil {
		t = &track{}
		r.tracker[node] = t
	}
	t.seen, t.seq = r.cfg.Now(), h.Seq
	t.left = leaving
	t.down = ""
	t.probes = h.Probe && h.Interval > 0 && h.Status != bus.StatusLeaving
	r.live.seen(node, h, t.seen)
	t.weight = h.Weight
	if t.weight == 0 {
		t.weight = 1
	}
	t.draining = h.Status == bus.StatusDraining
	if !leaving && !slices.Equal(prev.pools, pools) {
		for _, name := range prev.pools {
			if !slices.Contains(pools, name) {
				if p := r.pool(name); p != nil {
					delete(p.reporters, node)
					p.forget(node)
					p.wakeFor(node)
				}
			}
		}
		for _, p := range add {
			p.reporters[node] = t
		}
		t.pools = slices.Clone(pools)
	}
	// Wake a pool's writer when this node's entry should change: compared
	// with the last report (the view may not show a write in flight yet),
	// and with the view (another replica may have written otherwise).
	changed := prev.seen.IsZero() || prev.left != t.left || prev.down != t.down || prev.weight != t.weight || prev.draining != t.draining
	// The node's pools, and those a first report that is a leave names;
	// at a first report, every pool whose ring lists it (another router
	// wrote it in: this one may now want it out); every pool while a router
	// of an earlier release shares the bucket (pool.members).
	wake := t.pools
	more := func(name string) {
		if !slices.Contains(wake, name) {
			wake = append(slices.Clip(wake), name)
		}
	}
	for _, name := range pools {
		more(name)
	}
	if prev.seen.IsZero() {
		for name, p := range *r.pools.Load() {
			if _, member := p.ring.Current().Doc.Node(node); member {
				more(name)
			}
		}
	}
	if r.legacy.Load() {
		more(bus.DefaultPool)
	}
	for _, name := range wake {
		p := r.pool(name)
		if p == nil {
			continue
		}
		n, member := p.ring.Current().Doc.Node(node)
		if p.isEjected(node, t.seen) {
			continue // out until its ejection ends, whatever it reports
		}
		if changed || slices.Contains(add, p) || member == t.left || (member && (n.Weight != t.weight || (n.Status == bus.StatusDraining) != t.draining)) {
			p.wakeFor(node)
		}
	}
	return nil
}

// silenceNow is the time against which silence is judged. Reports are
// stamped when the router processes them, so while reports wait unprocessed
// (the router is behind, say starved of CPU) the queued ones may be what
// keeps nodes alive: silence is then judged at the last moment the queue
// was empty, when every report received before it had been processed. That
// hold is bounded by maxExpiryHold, so a router that never catches up still
// expires silent nodes (at worst maxExpiryHold late, or early for a node
// whose reports wait longer than that).
func (m *membership) silenceNow() time.Time {
	r := m.r
	now := r.cfg.Now()
	sub := r.healthSub.Load()
	if sub == nil {
		return now
	}
	if queueEmpty(sub) {
		return now
	}
	caught := time.Unix(0, r.caughtUp.Load())
	if floor := now.Add(-maxExpiryHold); caught.Before(floor) {
		return floor
	}
	return caught
}

// alive reports whether a tracked node is a live member at now: it has
// not left, probes have not found it down, and it reported within the TTL.
func (m *membership) alive(t *track, now time.Time) bool {
	r := m.r
	return !t.left && t.down == "" && now.Sub(t.seen) <= r.cfg.MemberTTL
}

// forgetSilent drops tracker entries long past the TTL, so a router's memory
// follows the fleet. It runs from the default pool's writer.
func (m *membership) forgetSilent() {
	r := m.r
	now := r.silenceNow()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	for id, t := range r.tracker {
		if now.Sub(t.seen) <= 2*r.cfg.MemberTTL {
			continue
		}
		for _, name := range t.pools {
			if p := r.pool(name); p != nil && p.reporters[id] == t {
				delete(p.reporters, id)
			}
		}
		delete(r.tracker, id)
		r.live.sched.Remove(id)
	}
}

// onHealth takes one health report. It runs on the subscription's goroutine
// and does only in-memory work.
func (ms *membership) onHealth(m *nats.Msg) {
	r := ms.r
	node, _ := bus.NodeFromSubject(m.Subject)
	err := r.report(node, m.Data, m.Header)
	if queueEmpty(m.Sub) {
		r.caughtUp.Store(r.cfg.Now().UnixNano()) // see silenceNow
		r.flushAllJoins()
	}
	if err != nil {
		reason := rejectReason(err)
		r.stats.rejected[reason].Add(1)
		r.stats.limitedLog(r.log, reason, "health report rejected", "node", text.Clip(node), "reason", reasonNames[reason], "err", err)
		return
	}
	r.stats.accepted.Add(1)
}

// report decodes a report of node and hands it to every strategy.
func (ms *membership) report(node string, data []byte, hdr nats.Header) error {
	h, err := bus.DecodeHealth(node, data, hdr)
	if err != nil {
		return err
	}
	for _, s := range ms.r.Strategies() { // ConsistentHash first: it refuses stale seqs
		if err := s.Report(node, h); err != nil {
			return err
		}
	}
	return nil
}

// queueEmpty reports whether sub has no message waiting besides the one
// being handled. nats.go (v1.55) counts the message in hand as pending
// until its callback returns, so inside a callback "empty" is n <= 1, and
// outside one n <= 1 means at most one message, a few microseconds of work.
// Nothing depends on it for correctness: it only says when to batch less.
func queueEmpty(sub *nats.Subscription) bool {
	n, _, err := sub.Pending()
	return err == nil && n <= 1
}
