package router

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"github.com/natsroute/natsroute/resourceaware"
	"github.com/natsroute/natsroute/ring"
)

// pool is one service's routing state: the ring of its KV key, its
// ResourceAware view, the nodes that report for it and the writer that
// keeps its document. Every pool is alike, the default one included, so a
// new pool adds state, not code paths.
type pool struct {
	name     string
	key      string // KV key of its ring document
	r        *Router
	ring     *follow.Follower[bus.RingDocument]
	balancer *resourceaware.Balancer

	v3     v3Keys    // its member keys, as last seen (pool_v3.go)
	legacy legacyDoc // its whole document, as last seen (pool_v3.go)

	// Owned by the keeper's watch (keeper.go): the pool's member keys as
	// applied (published to ring once the pool is v3), whether the current
	// batch touched them, and the newest document entry of the batch.
	view     *bus.PoolView
	touched  bool
	news     bool     // the batch brought an entry this router did not write, not a member's
	newsOf   []string // the members whose entries the batch brought that this router did not write
	docEntry jetstream.KeyValueEntry

	dirty     chan struct{} // wakes the writer
	resyncNow chan struct{} // asks the writer to re-read the key
	// What the writer looks at when woken (see flush): every member
	// (whole, set by wake), or only the nodes named since its last flush
	// (wakeFor); and whether the view changed since the document was last
	// written (legacyDue).
	whole     atomic.Bool
	namedMu   sync.Mutex
	named     map[string]struct{}
	legacyDue atomic.Bool

	// Guarded by r.healthMu.
	reporters map[string]*track  // nodes whose last report lists this pool
	shed      map[string]float64 // shed fractions the load policy wants
	shedRev   uint64             // the document revision the policy last ran on
	// What the documents this router applied say of each member's sheds:
	// when it last changed and the give-back policy's backoff, derived from
	// that history alone, so replicas that applied the same documents agree
	// (ring.ShedBackoff).
	backoff map[string]ring.ShedBackoff
	// Ejections this pool honours, by node (see ejector); nEjected is
	// their number, read without the lock.
	ejected  map[string]ejection
	nEjected atomic.Int32

	// Changes waiting for the balancer, at most one per node: the newest.
	// pendMu also serializes every change handed to the balancer from the
	// health path, so a waiting change and a direct one never cross.
	pendMu  sync.Mutex
	pend    map[string]pendingChange
	waiting atomic.Bool // pend is not empty, or its changes are being applied

	requests        [len(strategyNames)][len(codes)]atomic.Uint64
	oversize        atomic.Uint64 // ring writes refused: the document is over max_payload
	lastOversizeLog atomic.Int64  // unix nanos
}

// pendingChange is a change to a pool's balancer that waits in its batch:
// a report (stamped with when it arrived) or, with forget set, a leave.
type pendingChange struct {
	rep    resourceaware.Report
	forget bool
}

// report gives a node's report to the pool's balancer. Joins and leaves
// wait in a batch: each re-lays the balancer's snapshot, O(n), so one at a
// time a burst of 10,000 joins took 23 s and a mass leave as long; a batch
// re-lays it once. A report of a node with a change waiting replaces that
// change (the newest wins), so the batch never applies an older report over
// a newer one; the balancer ignores older reports too (Report.Received).
// The batch goes in when the health queue runs empty (see onHealth), when
// it reaches an eighth of the pool, or before the pool's balancer is read.
func (p *pool) report(node string, rep resourceaware.Report) error {
	if p.ejectedNow(node) {
		return nil // it comes back when the ejection ends, through the ring
	}
	p.pendMu.Lock()
	if _, waiting := p.pend[node]; !waiting && p.balancer.Known(node) {
		defer p.pendMu.Unlock()
		return p.balancer.Report(node, rep)
	}
	return p.queue(node, pendingChange{rep: rep})
}

// forget drops a node from the pool's balancer, through the batch.
func (p *pool) forget(node string) {
	p.pendMu.Lock()
	if !p.balancer.Known(node) {
		delete(p.pend, node) // never applied: nothing to undo
		p.pendMu.Unlock()
		return
	}
	_ = p.queue(node, pendingChange{forget: true})
}

// queue puts a change in the batch, with p.pendMu held, and releases it.
func (p *pool) queue(node string, c pendingChange) error {
	p.pend[node] = c
	n := len(p.pend)
	p.waiting.Store(true) // before unlocking: a read that misses it finds the change applied
	p.r.joinsWaiting.Store(true)
	p.pendMu.Unlock()
	if n >= max(64, p.balancer.Len()/8) {
		p.flushJoins()
	}
	return nil
}

// flushJoins hands the waiting changes to the balancer: leaves first, then
// reports, each kind in one call.
func (p *pool) flushJoins() {
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	if len(p.pend) == 0 {
		p.waiting.Store(false)
		return
	}
	var gone, ids []string
	var reps []resourceaware.Report
	for id, c := range p.pend {
		if c.forget {
			gone = append(gone, id)
		} else {
			ids, reps = append(ids, id), append(reps, c.rep)
		}
	}
	clear(p.pend)
	if len(gone) > 0 {
		p.balancer.Forget(gone...)
	}
	if err := p.balancer.ReportAll(ids, reps); err != nil { // validated already; should not happen
		p.r.log.Error("batched reports refused", "pool", p.name, "err", err)
	}
	p.waiting.Store(false) // only now: a read meanwhile waits for the lock
}

// settle hands waiting changes to the balancer before it is read: a read
// sees every change handed to the pool before it, even while another
// goroutine is applying them.
func (p *pool) settle() *resourceaware.Balancer {
	if p.waiting.Load() {
		p.flushJoins()
	}
	return p.balancer
}

// count records one answered request in the pool's counters.
func (p *pool) count(si, ci int) { p.requests[si][ci].Add(1) }

// ringCodec reads ring documents for a pool's follower.
var ringCodec = follow.Codec[bus.RingDocument]{
	Decode:  bus.DecodeRingDocument,
	Empty:   bus.NewRingDocument,
	Members: bus.RingDocument.Members,
	VNodes:  func(d bus.RingDocument) int { return d.VNodes },
}

// wake has the pool's writer decide every member again.
func (p *pool) wake() {
	p.whole.Store(true)
	p.signal()
}

// wakeFor has the pool's writer decide the nodes ids again: something
// their entries depend on changed (a report, a down, an ejection, another
// router's write of their keys).
func (p *pool) wakeFor(ids ...string) {
	p.addNamed(ids)
	p.signal()
}

// takeNamed returns the nodes named since the last call, sorted.
func (p *pool) takeNamed() []string {
	p.namedMu.Lock()
	defer p.namedMu.Unlock()
	if len(p.named) == 0 {
		return nil
	}
	ids := slices.Sorted(maps.Keys(p.named))
	clear(p.named)
	return ids
}

// addNamed adds ids to the nodes the writer decides at its next flush.
func (p *pool) addNamed(ids []string) {
	p.namedMu.Lock()
	defer p.namedMu.Unlock()
	if p.named == nil {
		p.named = map[string]struct{}{}
	}
	for _, id := range ids {
		p.named[id] = struct{}{}
	}
}

func (p *pool) signal() {
	select {
	case p.dirty <- struct{}{}:
	default:
	}
}

// members returns the nodes whose reports make them members of the pool:
// those that report for it, or, in the default pool while a router of an
// earlier release shares the bucket, every node (as that router has it; see
// watchLegacy). With r.healthMu held.
func (p *pool) members() map[string]*track {
	if p.name == bus.DefaultPool && p.r.legacy.Load() {
		return p.r.tracker
	}
	return p.reporters
}

// syncBalancer keeps the pool's ResourceAware view in step with its ring:
// members that have not reported count as neutral, and nodes that left the
// ring are forgotten unless they still report for the pool. It runs under
// the ring follower's lock, after each new view, and looks at the nodes
// that joined or left the ring only (one merge walk, no map lookup for the
// others): a member stays known to the balancer from its join until it
// leaves the ring, or until its own leave, down or ejection forgets it (a
// report makes it known again).
func (p *pool) syncBalancer(old, cur *follow.View[bus.RingDocument]) {
	r := p.r
	now := r.cfg.Now()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	var joined, gone []string
	o, c := old.Doc.Nodes, cur.Doc.Nodes // both sorted by id
	for len(o) > 0 || len(c) > 0 {
		switch {
		case len(c) == 0 || len(o) > 0 && o[0].ID < c[0].ID:
			id := o[0].ID
			o = o[1:]
			if t := p.reporters[id]; t == nil || !r.alive(t, now) || p.isEjected(id, now) {
				gone = append(gone, id)
			}
		case len(o) == 0 || c[0].ID < o[0].ID:
			// A document written before a node's leave still lists it:
			// that must not make a node that left known again.
			id := c[0].ID
			c = c[1:]
			if t := r.tracker[id]; (t == nil || r.alive(t, now)) && !p.isEjected(id, now) {
				joined = append(joined, id)
			}
		default:
			o, c = o[1:], c[1:]
		}
	}
	_ = p.balancer.Add(joined...)
	if old.Doc.Shedding() || cur.Doc.Shedding() {
		p.noteShedChanges(old.Doc, cur.Doc)
	}
	if cur.Doc.Shedding() && r.cfg.BalanceFactor == 0 {
		p.wake() // a router with shedding on wrote it; this one removes it
	}
	p.balancer.Forget(gone...) // at once: each call re-lays the selection snapshot
}

// updateShed recomputes the shed fractions the pool's members should carry
// from their fresh load reports, and reports whether they changed (the
// writer then writes the document). It runs from the pool's writer, once
// per ShedInterval, and only when load-aware ConsistentHash is on. While a
// router of a release that reads only format 1 shares the bucket, nothing
// sheds: that router would refuse the document and serve a stale ring.
func (p *pool) updateShed() bool {
	r := p.r
	v := p.ring.Current()
	doc := v.Doc
	var states []resourceaware.NodeState
	if !r.legacy.Load() {
		states = p.settle().Nodes()
	}
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	want := map[string]float64{}
	if states != nil {
		byID := make(map[string]int, len(states))
		for i, st := range states {
			byID[st.ID] = i
		}
		now := r.cfg.Now()
		ms := make([]ring.MemberLoad, len(doc.Nodes))
		for i, n := range doc.Nodes {
			m := ring.MemberLoad{Weight: n.Weight, Draining: n.Status == bus.StatusDraining, Shed: n.Shed}
			if j, ok := byID[n.ID]; ok && states[j].HasReport && !states[j].Stale {
				m.Fresh, m.Load = true, float64(states[j].Report.ActiveConnections)
				// A load reported before the shed last changed (plus a
				// moment for connections to turn over) cannot show the
				// change yet: the policy keeps that member's shed.
				m.Pending = !now.Add(-states[j].Age).After(p.backoff[n.ID].Changed().Add(r.cfg.ShedInterval))
			}
			m.Hold = p.backoff[n.ID].Holds(now) // a fall undone lately: wait before the next
			ms[i] = m
		}
		for i, f := range r.shedPolicy.Next(ms) {
			if f = bus.QuantizeShed(f); f > 0 {
				want[doc.Nodes[i].ID] = f
			}
		}
	}
	changed := !maps.Equal(want, p.shed) || v.Rev != p.shedRev
	p.shed, p.shedRev = want, v.Rev
	return changed
}

// noteShedChanges records the members' shed changes in the pool's
// document (their backoff, whose Changed time also dates the last change):
// every replica sees the same documents, so they agree on which loads were
// measured before a change and on when a fall may come. With r.healthMu
// held.
func (p *pool) noteShedChanges(old, cur bus.RingDocument) {
	now := p.r.cfg.Now()
	if !p.ring.Published() { // a pool on its member keys notes each entry (noteShed)
		for _, n := range cur.Nodes {
			if o, _ := old.Node(n.ID); o.Shed != n.Shed {
				p.noteShed(n.ID, o.Shed, n.Shed, now)
			}
		}
		for _, o := range old.Nodes { // a member that left has no shed
			if _, still := cur.Node(o.ID); !still && o.Shed != 0 {
				p.noteShed(o.ID, o.Shed, 0, now)
			}
		}
	}
	maps.DeleteFunc(p.backoff, func(id string, b ring.ShedBackoff) bool {
		_, member := cur.Node(id)
		return !member && now.Sub(b.Changed()) > p.r.cfg.MemberTTL
	})
}

// noteShed records that a member's shed went from one value to another in
// the ring this router follows, with r.healthMu held.
func (p *pool) noteShed(id string, from, to float64, now time.Time) {
	p.backoff[id] = p.r.shedPolicy.Observe(p.backoff[id], from, to, now)
}

// shedState says where a member's shed is going, for status and explain:
// "shed 30 %, falling", "shed 30 %, holding: fell back 2× (the last 6 min
// ago), next try in 4 min"; "" for a member that does not shed.
func (p *pool) shedState(id string, shed float64) string {
	if shed == 0 {
		return ""
	}
	r := p.r
	r.healthMu.Lock()
	b := p.backoff[id]
	r.healthMu.Unlock()
	return r.shedPolicy.Describe(b, shed, r.cfg.Now()).String()
}

func (p *pool) stats() PoolStats {
	v := p.ring.Current()
	ps := PoolStats{
		Name: p.name, Key: p.key, Members: len(v.Doc.Nodes), Revision: v.Rev, Format: v.Doc.Format,
		Shedding: v.Snap.Shedding(), OversizeDocuments: p.oversize.Load(),
	}
	ps.Known, ps.Eligible = p.settle().Counts()
	if p.nEjected.Load() > 0 {
		r := p.r
		r.healthMu.Lock()
		ps.Ejected = p.ejectedCount(r.cfg.Now())
		r.healthMu.Unlock()
	}
	for si, sn := range strategyNames {
		for ci, code := range codes {
			if n := p.requests[si][ci].Load(); n > 0 {
				ps.Requests = append(ps.Requests, RequestCount{Strategy: sn, Code: code, Count: n})
			}
		}
	}
	return ps
}
