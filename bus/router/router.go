package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"github.com/natsroute/natsroute/bus/internal/text"
	"log/slog"
	"math"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
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

	healthMu sync.Mutex // guards tracker and every pool's reporters and shed
	tracker  map[string]*track

	kick         chan struct{} // restarts the bucket watch (after a reconnect)
	suspect      chan struct{} // asks keepBucket to check the bucket
	bucketGen    time.Time     // when the bucket's stream was created; keepBucket's own
	js           jetstream.JetStream
	legacy       atomic.Bool     // a router of an earlier release shares the bucket
	shedPolicy   ring.ShedPolicy // load-aware ConsistentHash (BalanceFactor)
	caughtUp     atomic.Int64    // unix nanos (cfg.Now) when the health queue was last empty
	joinsWaiting atomic.Bool     // some pool has first reports waiting (pool.report)

	stats    counters
	inflight atomic.Int64
	lastReq  atomic.Int64 // unix nanos of the last request start

	// Set by Start.
	svc       micro.Service
	healthSub *nats.Subscription
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
		nc: nc, cfg: cfg, log: cfg.Logger.With("component", "router"), tracker: map[string]*track{},
		kick: make(chan struct{}, 1), suspect: make(chan struct{}, 1),
	}
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
		return errors.New("bus: Router.Start called twice or after Close")
	}
	r.started = r.cfg.Now()
	js, err := jetstream.New(r.nc)
	if err != nil {
		return fmt.Errorf("bus: jetstream: %w", err)
	}
	r.js = js
	kv, err := follow.OpenBucket(ctx, js, r.cfg.Bucket, r.cfg.KVReplicas, r.log)
	if err != nil {
		return err
	}
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
	if r.healthSub, err = r.nc.Subscribe(bus.SubjectHealthAll, r.onHealth); err != nil {
		return fmt.Errorf("bus: subscribe %s: %w", bus.SubjectHealthAll, err)
	}
	if err := r.healthSub.SetPendingLimits(DefaultHealthPending, 256<<20); err != nil {
		return fmt.Errorf("bus: pending limits: %w", err)
	}
	r.wg.Go(func() { follow.FollowReconnects(r.ctx, r.nc, r.kick, r.reconnected) })
	r.wg.Go(func() {
		follow.WatchKeys(r.ctx, def.ring.Bucket, []string{bus.RingKey, bus.RingKey + ".>"}, func(ctx context.Context) error { _, _, err := def.ring.Resync(ctx); return err }, r.applyEntry, r.kick, r.log)
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
		return fmt.Errorf("bus: micro service: %w", err)
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
			return fmt.Errorf("bus: endpoint %s: %w", ep.subject, err)
		}
	}
	flushCtx, cancel := context.WithTimeout(ctx, 10*time.Second) // ctx may have no deadline
	defer cancel()
	if err := r.nc.FlushWithContext(flushCtx); err != nil {
		return fmt.Errorf("bus: flush: %w", err)
	}
	ok = true
	r.state = 1
	v := def.ring.Current()
	r.log.Info("router started", "bucket", r.cfg.Bucket, "revision", v.Rev, "members", len(v.Doc.Nodes), "pools", len(*r.pools.Load()), "queue_group", r.cfg.QueueGroup)
	return nil
}

// loadPools reads the ring document of every pool with a key in the bucket,
// so a restarted router serves every pool at once.
func (r *Router) loadPools(ctx context.Context, kv jetstream.KeyValue) error {
	keys, err := kv.ListKeysFiltered(ctx, bus.RingKey, bus.RingKey+".>")
	if err != nil {
		return fmt.Errorf("bus: list ring keys: %w", err)
	}
	var names []string
	for k := range keys.Keys() {
		if name, ok := bus.PoolFromKey(k); ok {
			names = append(names, name)
		}
	}
	if err := ctx.Err(); err != nil { // the listing stopped short
		return fmt.Errorf("bus: list ring keys: %w", err)
	}
	if !slices.Contains(names, bus.DefaultPool) {
		names = append(names, bus.DefaultPool)
	}
	for _, name := range names {
		p, err := r.ensurePool(name)
		if err != nil {
			r.log.Warn("pool in the bucket not served", "pool", name, "err", err)
			continue
		}
		p.ring.SetKV(kv)
		if _, _, err := p.ring.Resync(ctx); err != nil {
			return err
		}
	}
	return nil
}

// applyEntry hands a watched KV entry to its pool, adding pools that other
// routers created.
func (r *Router) applyEntry(e jetstream.KeyValueEntry) {
	name, ok := bus.PoolFromKey(e.Key())
	if !ok {
		return
	}
	p, err := r.ensurePool(name)
	if err != nil {
		r.stats.limitedLog(r.log, rejectTooManyPools, "pool in the bucket not served", "pool", name, "err", err)
		return
	}
	p.ring.ApplyEntry(e)
}

// suspectBucket asks keepBucket to check that the bucket is still there: a
// write or read failed, or the bucket holds an older revision than a view.
func (r *Router) suspectBucket() {
	select {
	case r.suspect <- struct{}{}:
	default:
	}
}

// keepBucket checks the bucket whenever something suggests it is gone (an
// operator deleted it; the server restarted on an empty store) or was
// created anew, at most four times a second, until ctx ends. Without it a
// router retried its writes against a missing bucket for ever.
func (r *Router) keepBucket(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.suspect:
		}
		attempt, cancel := context.WithTimeout(ctx, follow.JSAttempt)
		r.checkBucket(attempt)
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// checkBucket creates the bucket again, with the configured settings, if it
// is gone, and then has every pool republish its ring from memory; a bucket
// that another router created anew is re-read the same way.
func (r *Router) checkBucket(ctx context.Context) {
	kv, created, err := follow.BindBucket(ctx, r.js, r.cfg.Bucket, r.cfg.KVReplicas)
	if err != nil {
		r.log.Debug("bucket check failed", "bucket", r.cfg.Bucket, "err", err)
		return
	}
	gen, err := follow.Generation(ctx, kv)
	if err != nil {
		r.log.Debug("bucket check failed", "bucket", r.cfg.Bucket, "err", err)
		return
	}
	if !created && gen.Equal(r.bucketGen) {
		return
	}
	r.bucketGen = gen
	pools := r.sortedPools()
	if created {
		r.stats.recreated.Add(1)
		r.log.Warn("the ring bucket was gone; created it again and republishing every pool's ring from memory",
			"bucket", r.cfg.Bucket, "replicas", r.cfg.KVReplicas, "pools", len(pools))
	} else {
		r.log.Warn("the ring bucket was created anew by someone else; re-reading it", "bucket", r.cfg.Bucket, "pools", len(pools))
	}
	for _, p := range pools {
		p.ring.SetKV(kv)
		p.ring.Reset()
		p.wake()
	}
	select { // the watch of the old bucket delivers nothing more
	case r.kick <- struct{}{}:
	default:
	}
}

// reconnected counts a reconnect and has every writer re-read its ring.
func (r *Router) reconnected() {
	r.stats.reconnects.Add(1)
	r.log.Info("reconnected to NATS; re-reading the rings")
	for _, p := range *r.pools.Load() {
		select {
		case p.resyncNow <- struct{}{}:
		default:
		}
	}
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
	if r.healthSub != nil {
		if err := r.healthSub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			errs = append(errs, err)
		}
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

// drain waits until no request is in flight and none has started for a
// moment (the endpoint subscriptions deliver what they had buffered), or
// until DrainTimeout.
func (r *Router) drain() {
	deadline := time.Now().Add(r.cfg.DrainTimeout)
	if r.nc.IsConnected() { // so the server has processed the unsubscribes
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
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

// onHealth takes one health report. It runs on the subscription's goroutine
// and does only in-memory work.
func (r *Router) onHealth(m *nats.Msg) {
	node, _ := bus.NodeFromSubject(m.Subject)
	h, err := bus.DecodeHealth(node, m.Data, m.Header)
	if err == nil {
		for _, s := range r.Strategies() { // ConsistentHash first: it refuses stale seqs
			if err = s.Report(node, h); err != nil {
				break
			}
		}
	}
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

// queueEmpty reports whether sub has no message waiting besides the one
// being handled. nats.go (v1.55) counts the message in hand as pending
// until its callback returns, so inside a callback "empty" is n <= 1, and
// outside one n <= 1 means at most one message, a few microseconds of work.
// Nothing depends on it for correctness: it only says when to batch less.
func queueEmpty(sub *nats.Subscription) bool {
	n, _, err := sub.Pending()
	return err == nil && n <= 1
}

// handleRoute answers route.request.
func (r *Router) handleRoute(req micro.Request) {
	start := time.Now()
	r.inflight.Add(1)
	r.lastReq.Store(start.UnixNano())
	defer r.inflight.Add(-1)
	data := req.Data()
	enc := bus.DetectEncoding(data, nats.Header(req.Headers()))
	strategy := "unknown"
	var p *pool
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("panic answering a request", "panic", v, "stack", string(debug.Stack()))
			r.respondError(req, enc, fmt.Errorf("%w: %v", bus.ErrInternal, v))
			r.stats.request(p, strategy, bus.CodeInternal, time.Since(start), r.cfg)
		}
	}()
	reply, err := r.route(data, enc, &strategy, &p)
	code := 200
	if err == nil {
		buf := replyBufs.Get().(*[]byte)
		var out []byte
		if out, err = enc.AppendReply((*buf)[:0], &reply); err == nil {
			err = r.send(req, out, "ask for fewer keys or a smaller count")
		} else {
			err = fmt.Errorf("%w: encode reply: %w", bus.ErrInternal, err)
		}
		if cap(out) <= maxPooledReply { // Respond has copied it out
			*buf = out
			replyBufs.Put(buf)
		}
	}
	if err != nil {
		code = bus.ErrorCode(err)
		r.respondError(req, enc, err)
	}
	r.stats.request(p, strategy, code, time.Since(start), r.cfg)
}

// replyBufs hold encoded replies between requests, so that answering
// allocates no reply buffer; batch-sized ones are let go.
var replyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledReply = 64 << 10

// route decodes and validates a request, finds its pool and answers it.
func (r *Router) route(data []byte, enc bus.Encoding, strategy *string, p **pool) (bus.Reply, error) {
	var q bus.Request
	if err := enc.UnmarshalRequest(data, &q); err != nil {
		return bus.Reply{}, badRequest("%v", err)
	}
	s, err := r.validate(&q)
	if err != nil {
		return bus.Reply{}, err
	}
	*strategy = s.Name()
	if *p = r.pool(q.Pool); *p == nil {
		return bus.Reply{}, noMembers(q.Pool)
	}
	return s.Select(r.ctx, q)
}

// validate checks q against the contract and the limits, fills in
// defaults, and returns the strategy to answer it.
func (r *Router) validate(q *bus.Request) (Strategy, error) {
	lim := r.cfg.Limits
	if q.Key != "" && q.Keys != nil {
		return nil, badRequest("set key or keys, not both")
	}
	if len(q.Key) > lim.MaxKeyBytes {
		return nil, badRequest("key is %d bytes; the limit is %d", len(q.Key), lim.MaxKeyBytes)
	}
	if q.Count < 0 || q.Count > lim.MaxCount {
		return nil, badRequest("count %d is out of range: want 1 to %d (0 or absent means 1)", q.Count, lim.MaxCount)
	}
	if q.Count == 0 {
		q.Count = 1
	}
	if len(q.Candidates) > lim.MaxCandidates {
		return nil, badRequest("%d candidates; the limit is %d", len(q.Candidates), lim.MaxCandidates)
	}
	for i, c := range q.Candidates {
		if err := bus.ValidateNodeID(c); err != nil {
			return nil, badRequest("candidates[%d]: %v", i, err)
		}
	}
	if len(q.Keys) > lim.MaxBatch {
		return nil, badRequest("%d keys; the batch limit is %d", len(q.Keys), lim.MaxBatch)
	}
	if len(q.Keys) == 0 {
		q.Keys = nil
	}
	for i, k := range q.Keys {
		if k == "" || len(k) > lim.MaxKeyBytes {
			return nil, badRequest("keys[%d] is %d bytes; want 1 to %d", i, len(k), lim.MaxKeyBytes)
		}
	}
	if q.Pool != "" {
		if err := bus.ValidatePoolName(q.Pool); err != nil {
			return nil, badRequest("%v", err)
		}
	}
	if q.Spread < 0 || q.Spread > lim.MaxCount {
		return nil, badRequest("spread %d is out of range: want 1 to %d (0 or absent means 1)", q.Spread, lim.MaxCount)
	}
	if q.Spread > 1 {
		switch {
		case q.Count > 1:
			return nil, badRequest("spread picks one node among the key's first %d owners; it does not go with count > 1", q.Spread)
		case q.Keys != nil:
			return nil, badRequest("spread does not go with keys (a batch)")
		case q.Key == "" || q.Strategy == bus.StrategyResourceAware:
			return nil, badRequest("spread needs %s and a key", bus.StrategyConsistentHash)
		}
	}
	switch q.Strategy {
	case "":
		if q.Key != "" || q.Keys != nil {
			return r.ch, nil
		}
		return r.ra, nil
	case bus.StrategyConsistentHash:
		if q.Key == "" && q.Keys == nil {
			return nil, badRequest("%s needs a key (or keys)", bus.StrategyConsistentHash)
		}
		return r.ch, nil
	case bus.StrategyResourceAware:
		return r.ra, nil
	}
	return nil, badRequest("unknown strategy %q: use %s or %s", text.Clip(q.Strategy), bus.StrategyConsistentHash, bus.StrategyResourceAware)
}

// respondError sends an error reply in the request's encoding.
func (r *Router) respondError(req micro.Request, enc bus.Encoding, err error) {
	code := bus.ErrorCode(err)
	msg := err.Error()
	body, mErr := enc.Marshal(&bus.ErrorBody{Error: msg, Code: code})
	if mErr != nil {
		body = nil
	}
	if err := req.Error(fmt.Sprint(code), msg, body); err != nil {
		r.log.Debug("error reply failed", "err", err)
	}
}

// decodePoolRequest decodes a route.ring/nodes/pools body; an empty body
// means every default.
func decodePoolRequest(data []byte, enc bus.Encoding) (bus.PoolRequest, error) {
	var q bus.PoolRequest
	if len(bytes.TrimSpace(data)) == 0 {
		return q, nil
	}
	if err := enc.Unmarshal(data, &q); err != nil {
		return q, badRequest("%v", err)
	}
	if q.Pool != "" {
		if err := bus.ValidatePoolName(q.Pool); err != nil {
			return q, badRequest("%v", err)
		}
	}
	if q.Offset < 0 {
		return q, badRequest("offset %d is negative", q.Offset)
	}
	if q.Limit < 0 || q.Limit > bus.MaxNodesPage {
		return q, badRequest("limit %d is out of range: want 1 to %d (0 or absent means %d)", q.Limit, bus.MaxNodesPage, bus.DefaultNodesPage)
	}
	return q, nil
}

func (r *Router) handleRing(req micro.Request) {
	enc := bus.DetectEncoding(req.Data(), nats.Header(req.Headers()))
	q, err := decodePoolRequest(req.Data(), enc)
	if err != nil {
		r.respondError(req, enc, err)
		return
	}
	p := r.pool(q.Pool)
	if p == nil {
		r.respondError(req, enc, noMembers(q.Pool))
		return
	}
	v := p.ring.Current()
	st := bus.RingState{Revision: v.Rev, Ring: v.Doc}
	if p.name != bus.DefaultPool {
		st.Pool = p.name
	}
	r.respond(req, enc, &st, fmt.Sprintf("read the document from the KV bucket instead: nats kv get %s %s", r.cfg.Bucket, p.key))
}

func (r *Router) handleNodes(req micro.Request) {
	enc := bus.DetectEncoding(req.Data(), nats.Header(req.Headers()))
	q, err := decodePoolRequest(req.Data(), enc)
	if err != nil {
		r.respondError(req, enc, err)
		return
	}
	if r.pool(q.Pool) == nil {
		r.respondError(req, enc, noMembers(q.Pool))
		return
	}
	st := r.NodesPage(q.Pool, q.Offset, q.Limit)
	r.respond(req, enc, &st, "ask for a smaller page with \"limit\"")
}

func (r *Router) handlePools(req micro.Request) {
	enc := bus.DetectEncoding(req.Data(), nats.Header(req.Headers()))
	st := r.Pools()
	r.respond(req, enc, &st, "")
}

// respond encodes v in enc and sends it; a reply too large for the
// connection becomes an error reply that says what to ask instead (hint).
func (r *Router) respond(req micro.Request, enc bus.Encoding, v any, hint string) {
	out, err := enc.Marshal(v)
	if err != nil {
		r.respondError(req, enc, fmt.Errorf("%w: %w", bus.ErrInternal, err))
		return
	}
	if err := r.send(req, out, hint); err != nil {
		r.respondError(req, enc, err)
	}
}

// send sends a reply, or returns a 400 if it would exceed the connection's
// max_payload (NATS would drop it, and the caller would only see a
// timeout). hint tells the caller how to ask instead.
func (r *Router) send(req micro.Request, out []byte, hint string) error {
	if limit := r.maxReply(); len(out) > limit {
		r.stats.oversizeReplies.Add(1)
		msg := fmt.Sprintf("the reply would be %d bytes, %s %d", len(out), bus.OversizeReply, limit)
		if hint != "" {
			msg += "; " + hint
		}
		return badRequest("%s", msg)
	}
	if err := req.Respond(out); err != nil {
		r.log.Debug("respond failed", "err", err)
	}
	return nil
}

// maxReply is the largest reply body the connection can carry, leaving
// room for the reply's subject and headers.
func (r *Router) maxReply() int {
	if r.nc == nil {
		return math.MaxInt
	}
	return int(r.nc.MaxPayload()) - replyOverhead
}

// replyOverhead leaves room for the headers of a reply.
const replyOverhead = 1024

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
