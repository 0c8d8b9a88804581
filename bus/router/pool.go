package router

import (
	"fmt"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsroute/natsroute/resourceaware"
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

	dirty     chan struct{} // wakes the writer
	resyncNow chan struct{} // asks the writer to re-read the key

	// Guarded by r.healthMu.
	reporters map[string]*track    // nodes whose last report lists this pool
	shed      map[string]float64   // shed fractions the load policy wants
	shedAt    map[string]time.Time // when each member's shed last changed

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

// poolMap is the router's pools by name; readers load it without a lock
// and writers replace it whole (pools are added rarely).
type poolMap map[string]*pool

func (r *Router) newPool(name string) (*pool, error) {
	b, err := resourceaware.New(r.cfg.Balancer)
	if err != nil {
		return nil, err
	}
	log := r.log
	if name != bus.DefaultPool {
		log = log.With("pool", name)
	}
	f, err := follow.New(ringCodec, r.cfg.VirtualNodes, bus.PoolKey(name), log)
	if err != nil {
		return nil, err
	}
	p := &pool{
		name: name, key: bus.PoolKey(name), r: r, ring: f, balancer: b,
		dirty: make(chan struct{}, 1), resyncNow: make(chan struct{}, 1),
		reporters: map[string]*track{}, shed: map[string]float64{}, shedAt: map[string]time.Time{},
		pend: map[string]pendingChange{},
	}
	f.OnApply = p.syncBalancer
	f.OnReject = func(uint64, error) { r.stats.docRejected.Add(1) }
	f.OnBehind = r.suspectBucket
	return p, nil
}

// pool returns the pool called name, or nil if this router has none.
func (r *Router) pool(name string) *pool {
	if name == "" {
		name = bus.DefaultPool
	}
	return (*r.pools.Load())[name]
}

// ensurePool returns the pool called name, adding it if it is new; see
// ensurePools.
func (r *Router) ensurePool(name string) (*pool, error) {
	ps, err := r.ensurePools([]string{name})
	if err != nil {
		return nil, err
	}
	return ps[0], nil
}

// ensurePools returns the pools with these names, adding the new ones (and
// starting their writers, if the router runs). It adds all or none: past
// MaxPools, or once the router is closing, it adds nothing.
func (r *Router) ensurePools(names []string) ([]*pool, error) {
	out := make([]*pool, 0, len(names))
	for _, name := range names {
		if p := r.pool(name); p != nil {
			out = append(out, p)
		}
	}
	if len(out) == len(names) {
		return out, nil
	}
	r.poolsMu.Lock()
	defer r.poolsMu.Unlock()
	cur := *r.pools.Load()
	var missing []string
	for _, name := range names {
		if cur[name] == nil {
			missing = append(missing, name)
		}
	}
	if r.closing {
		return nil, bus.ErrClosed
	}
	if n := len(cur) + len(missing); n > r.cfg.MaxPools {
		return nil, fmt.Errorf("%w: %w: pools %q would make %d pools; the limit is %d (max_pools)", bus.ErrInvalidReport, errTooManyPools, missing, n, r.cfg.MaxPools)
	}
	next := maps.Clone(cur)
	for _, name := range missing {
		p, err := r.newPool(name)
		if err != nil {
			return nil, err
		}
		if r.ctx != nil { // started: follow the bucket and write
			p.ring.SetKV(r.ring().Bucket())
			r.wg.Go(func() { p.write(r.ctx) })
		}
		next[name] = p
		r.log.Info("pool added", "pool", name, "pools", len(next))
	}
	r.pools.Store(&next)
	out = out[:0]
	for _, name := range names {
		out = append(out, next[name])
	}
	return out, nil
}

// ring returns the default pool's follower, which also holds the bucket.
func (r *Router) ring() *follow.Follower[bus.RingDocument] { return r.pool(bus.DefaultPool).ring }

// sortedPools returns the pools sorted by name.
func (r *Router) sortedPools() []*pool {
	m := *r.pools.Load()
	out := make([]*pool, 0, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[name])
	}
	return out
}

// noMembers is the 503 of a pool with nothing to route to.
func noMembers(pool string) error {
	if pool == bus.DefaultPool || pool == "" {
		return fmt.Errorf("%w: the ring has no members", bus.ErrNoNodes)
	}
	return fmt.Errorf("%w: pool %s has no members", bus.ErrNoNodes, pool)
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

// flushAllJoins settles every pool with changes waiting.
func (r *Router) flushAllJoins() {
	if !r.joinsWaiting.Swap(false) {
		return
	}
	for _, p := range *r.pools.Load() {
		if p.waiting.Load() {
			p.flushJoins()
		}
	}
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
