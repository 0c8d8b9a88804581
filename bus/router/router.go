package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsroute/natsroute/bus/router/internal/probe"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"github.com/natsroute/natsroute/resourceaware"
	"github.com/natsroute/natsroute/ring"
)

// Router serves route.request, route.ring, route.nodes and route.pools,
// takes health reports from health.*, and keeps each pool's ring membership
// in the KV bucket. Start it once; Close it once or more.
type Router struct {
	nc      *nats.Conn
	cfg     Config
	log     *slog.Logger
	ch      Strategy // ConsistentHash
	ra      Strategy // ResourceAware
	started time.Time

	poolsMu sync.Mutex              // serializes adding pools; guards closing
	pools   atomic.Pointer[poolMap] // read without a lock
	closing bool                    // no pool is added once set

	// The router's parts, each with its own file: what it knows of nodes
	// from their reports (membership.go), the bucket it follows and keeps
	// (keeper.go), and routers of an earlier release (legacy.go). Their
	// fields and methods are promoted; each part reaches the others
	// through its r.
	membership
	keeper
	legacyProbe
	live *liveness // probes and caller feedback (liveness.go)
	ej   *ejector  // ejections for callers' failures (eject.go)

	shedPolicy   ring.ShedPolicy // load-aware ConsistentHash (BalanceFactor)
	joinsWaiting atomic.Bool     // some pool has first reports waiting (pool.report)

	stats    counters
	inflight atomic.Int64
	lastReq  atomic.Int64 // unix nanos of the last request start

	// Set by Start.
	svc       micro.Service
	healthSub atomic.Pointer[nats.Subscription] // the writers, started before it, read it
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	stateMu sync.Mutex // guards state
	state   int        // 0 new, 1 started, 2 closed
}

// New returns a Router on nc; it does nothing until Start.
func New(nc *nats.Conn, cfg Config) (*Router, error) {
	if nc == nil {
		return nil, errors.New("router: New needs a NATS connection")
	}
	return newRouter(nc, cfg)
}

// newRouter builds a Router; internal tests give it no connection.
func newRouter(nc *nats.Conn, cfg Config) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	r := &Router{
		nc: nc, cfg: cfg, log: cfg.Logger.With("component", "router"),
	}
	r.membership = membership{r: r, tracker: map[string]*track{}}
	r.keeper = keeper{r: r, kick: make(chan struct{}, 1), suspect: make(chan struct{}, 1)}
	r.legacyProbe = legacyProbe{r: r}
	r.live = newLiveness(r)
	r.ej = newEjector(r)
	def, err := r.newPool(bus.DefaultPool)
	if err != nil {
		return nil, err
	}
	r.pools.Store(&poolMap{bus.DefaultPool: def})
	r.shedPolicy = ring.ShedPolicy{Factor: cfg.BalanceFactor}
	r.ch, r.ra = consistentHash{r}, resourceAware{r}
	return r, nil
}

// Strategies returns the router's strategies: ConsistentHash, ResourceAware.
func (r *Router) Strategies() []Strategy { return []Strategy{r.ch, r.ra} }

// Start opens (or creates) the bucket, loads the ring from it, and begins
// serving. ctx bounds start-up only; the router runs until Close. Until ctx
// ends, Start waits for a JetStream that has no leader yet or does not
// answer for the bucket yet.
func (r *Router) Start(ctx context.Context) error {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if r.state != 0 {
		return errors.New("router: Router.Start called twice or after Close")
	}
	r.started = r.cfg.Now()
	js, err := jetstream.New(r.nc)
	if err != nil {
		return fmt.Errorf("router: jetstream: %w", err)
	}
	r.js = js
	kv, err := follow.OpenBucket(ctx, js, r.cfg.Bucket, r.cfg.KVReplicas, r.log)
	if err != nil {
		return err
	}
	r.allowKeyTTL(ctx, kv)
	if r.bucketGen, err = follow.Generation(ctx, kv); err != nil {
		r.log.Warn("bucket status unreadable; a bucket created anew will be noticed by its revisions only", "err", err)
	}
	def := r.pool(bus.DefaultPool)
	def.ring.SetKV(kv)
	if err := follow.RetryStartup(ctx, r.log, "load the rings", notInvalid, func(ctx context.Context) error {
		return r.loadPools(ctx, kv)
	}); err != nil {
		return err
	}

	r.ctx, r.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			r.stop()
		}
	}()
	// The loaded pools' writers start before anything can add a pool:
	// from here on ensurePool starts the writer of each new one.
	for _, p := range r.sortedPools() {
		r.wg.Go(func() { p.write(r.ctx) })
	}
	r.caughtUp.Store(r.cfg.Now().UnixNano())
	sub, err := r.nc.Subscribe(bus.SubjectHealthAll, r.onHealth)
	if err != nil {
		return fmt.Errorf("router: subscribe %s: %w", bus.SubjectHealthAll, err)
	}
	r.healthSub.Store(sub)
	if err := sub.SetPendingLimits(DefaultHealthPending, 256<<20); err != nil {
		return fmt.Errorf("router: pending limits: %w", err)
	}
	if err := r.live.start(r.ctx); err != nil {
		return err
	}
	r.wg.Go(func() { r.ej.run(r.ctx) })
	r.wg.Go(func() { follow.FollowReconnects(r.ctx, r.nc, r.kick, r.reconnected) })
	r.wg.Go(func() {
		follow.WatchBatches(r.ctx, def.ring.Bucket, r.watchedKeys(), r.probeBucket, r.batch(), r.kick, r.log)
	})
	r.wg.Go(func() { r.watchLegacy(r.ctx) })
	r.wg.Go(func() { r.keepBucket(r.ctx) })
	r.svc, err = micro.AddService(r.nc, micro.Config{
		Name:        bus.ServiceName,
		Version:     bus.ServiceVersion,
		Description: "natsroute: which node should take this key or request",
		QueueGroup:  r.cfg.QueueGroup,
	})
	if err != nil {
		return fmt.Errorf("router: micro service: %w", err)
	}
	for _, ep := range []struct {
		name, subject string
		h             micro.HandlerFunc
	}{
		{"route", bus.SubjectRequest, r.handleRoute},
		{"ring", bus.SubjectRing, r.handleRing},
		{"nodes", bus.SubjectNodes, r.handleNodes},
		{"pools", bus.SubjectPools, r.handlePools},
	} {
		if err := r.svc.AddEndpoint(ep.name, ep.h, micro.WithEndpointSubject(ep.subject)); err != nil {
			return fmt.Errorf("router: endpoint %s: %w", ep.subject, err)
		}
	}
	flushCtx, cancel := context.WithTimeout(ctx, 10*time.Second) // ctx may have no deadline
	defer cancel()
	if err := r.nc.FlushWithContext(flushCtx); err != nil {
		return fmt.Errorf("router: flush: %w", err)
	}
	ok = true
	r.state = 1
	v := def.ring.Current()
	r.log.Info("router started", "bucket", r.cfg.Bucket, "revision", v.Rev, "members", len(v.Doc.Nodes), "pools", len(*r.pools.Load()), "queue_group", r.cfg.QueueGroup)
	return nil
}

// Close stops taking requests, lets in-flight ones finish (up to
// DrainTimeout), and stops every goroutine the router started. It does not
// close the NATS connection. It is safe to call more than once.
func (r *Router) Close() error {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if r.state != 1 {
		r.state = 2
		return nil
	}
	r.state = 2
	return r.stop()
}

func (r *Router) stop() error {
	var errs []error
	if r.svc != nil {
		if err := r.svc.Stop(); err != nil {
			errs = append(errs, err)
		}
		r.drain()
	}
	if sub := r.healthSub.Load(); sub != nil {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			errs = append(errs, err)
		}
	}
	if err := r.live.stop(); err != nil {
		errs = append(errs, err)
	}
	r.poolsMu.Lock()
	r.closing = true
	r.poolsMu.Unlock()
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
	r.log.Info("router stopped")
	return errors.Join(errs...)
}

// maxDrainFlush bounds drain's wait for the server to confirm the
// unsubscribes.
const maxDrainFlush = 250 * time.Millisecond

// drain waits until no request is in flight and none has started for a
// moment (the endpoint subscriptions deliver what they had buffered), or
// until DrainTimeout.
func (r *Router) drain() {
	deadline := time.Now().Add(r.cfg.DrainTimeout)
	if r.nc.IsConnected() { // so the server has processed the unsubscribes
		// A round trip takes well under a millisecond. A server that is
		// shutting down may leave the connection up but not answer: CI
		// once saw Close wait the whole DrainTimeout (5 s) here.
		ctx, cancel := context.WithTimeout(context.Background(), min(r.cfg.DrainTimeout, maxDrainFlush))
		_ = r.nc.FlushWithContext(ctx)
		cancel()
	}
	const quiet = 20 * time.Millisecond
	for time.Now().Before(deadline) {
		if r.inflight.Load() == 0 && time.Since(time.Unix(0, r.lastReq.Load())) > quiet {
			return
		}
		time.Sleep(time.Millisecond)
	}
	r.log.Warn("drain timed out with requests in flight", "in_flight", r.inflight.Load())
}

// Revision returns the KV revision of the default pool's ring.
func (r *Router) Revision() uint64 { return r.ring().Current().Rev }

// Ring returns the default pool's ring document and its revision.
func (r *Router) Ring() (bus.RingDocument, uint64) { return r.PoolRing(bus.DefaultPool) }

// PoolRing returns a pool's ring document and its revision; an unknown pool
// has an empty document at revision 0.
func (r *Router) PoolRing(name string) (bus.RingDocument, uint64) {
	p := r.pool(name)
	if p == nil {
		return bus.NewRingDocument(r.cfg.VirtualNodes), 0
	}
	v := p.ring.Current()
	return v.Doc, v.Rev
}

// Ready reports nil when the router is serving: started and not closed,
// connected to NATS, and answering from a ring read from the bucket (an
// empty ring counts).
func (r *Router) Ready() error {
	r.stateMu.Lock()
	state := r.state
	r.stateMu.Unlock()
	switch {
	case state == 0:
		return errors.New("not started")
	case state == 2:
		return bus.ErrClosed
	case !r.nc.IsConnected():
		return fmt.Errorf("not connected to NATS (%s)", r.nc.Status())
	}
	return nil
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
		reporters: map[string]*track{}, shed: map[string]float64{},
		backoff: map[string]ring.ShedBackoff{},
		ejected: map[string]ejection{},
		pend:    map[string]pendingChange{},
	}
	f.OnApply = func(old, cur *follow.View[bus.RingDocument]) {
		p.syncBalancer(old, cur)
		if !p.ring.Published() {
			p.wake() // a document to convert (a pool on member keys wakes on news: publish)
		}
	}
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

// wakeAll has every pool's writer look at its document again.
func (r *Router) wakeAll() {
	for _, p := range *r.pools.Load() {
		p.wake()
	}
}

// Stats returns the router's counters.
func (r *Router) Stats() Stats {
	c := &r.stats
	s := Stats{
		ReportsAccepted:   c.accepted.Load(),
		ReportsRejected:   map[string]uint64{},
		KVWrites:          c.kvWrites.Load(),
		KVConflicts:       c.kvConflicts.Load(),
		V3MarkersPurged:   c.v3Purged.Load(),
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
	s.Probes, s.Feedback = map[string]uint64{}, map[string]uint64{}
	for i, n := range probe.OutcomeNames {
		s.Probes[n] = r.live.probes[i].Load()
	}
	for i, n := range feedbackOutcomeNames {
		s.Feedback[n] = r.live.feedback[i].Load()
	}
	s.Downs = map[string]uint64{}
	for i, n := range downReasonNames {
		v := r.live.downs[i].Load()
		s.Downs[n] = v
		s.MembersDown += v
	}
	s.Ejections = map[string]uint64{
		"ejected": r.ej.ejections.Load(), "over_share": r.ej.capped.Load(), "unshared": r.ej.unshared.Load(),
	}
	for si, sn := range strategyNames {
		for ci, code := range codes {
			if n := c.requests[si][ci].Load(); n > 0 {
				s.Requests = append(s.Requests, RequestCount{Strategy: sn, Code: code, Count: n})
			}
		}
	}
	r.stateMu.Lock()
	if sub := r.healthSub.Load(); sub != nil {
		if d, err := sub.Dropped(); err == nil {
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
	all := p.withOut(p.settle().Nodes())
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
			Shed:        m.Shed, ShedState: p.shedState(n.ID, m.Shed),
			Recovering: n.Recovering, Note: n.Note,
			Down: p.r.live.downReason(n.ID), Ejected: p.ejectedWhy(n.ID),
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
