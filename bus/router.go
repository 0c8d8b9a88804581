package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/natsroute/natsroute/resourceaware"
)

// Router serves route.request, route.ring and route.nodes, takes health
// reports from health.*, and keeps the ring membership in the KV bucket.
// Start it once; Close it once or more.
type Router struct {
	nc       *nats.Conn
	cfg      Config
	log      *slog.Logger
	balancer *resourceaware.Balancer
	ch       Strategy // ConsistentHash
	ra       Strategy // ResourceAware
	started  time.Time

	ring *ringFollower // the bucket's ring, which answers

	healthMu sync.Mutex // guards tracker and the balancer's node set
	tracker  map[string]*track

	dirty     chan struct{} // wakes the KV writer
	resyncNow chan struct{} // asks the writer to re-read the bucket

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

// NewRouter returns a Router on nc; it does nothing until Start.
func NewRouter(nc *nats.Conn, cfg Config) (*Router, error) {
	if nc == nil {
		return nil, errors.New("bus: NewRouter needs a NATS connection")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	b, err := resourceaware.New(cfg.Balancer)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "router")
	f, err := newRingFollower(cfg.VirtualNodes, log)
	if err != nil {
		return nil, err
	}
	r := &Router{
		nc: nc, cfg: cfg, log: log, balancer: b, ring: f, tracker: map[string]*track{},
		dirty: make(chan struct{}, 1), resyncNow: make(chan struct{}, 1),
	}
	f.onApply = r.syncBalancer
	f.onReject = func(uint64, error) { r.stats.docRejected.Add(1) }
	r.ch, r.ra = consistentHash{r}, resourceAware{r, b}
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
	kv, err := openBucket(ctx, js, r.cfg.Bucket, r.cfg.KVReplicas, r.log)
	if err != nil {
		return err
	}
	r.ring.setKV(kv)
	var d RingDocument
	var rev uint64
	if err := retryStartup(ctx, r.log, "load the ring", notInvalid, func(ctx context.Context) (err error) {
		d, rev, err = r.ring.resync(ctx)
		return err
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
	if r.healthSub, err = r.nc.Subscribe(SubjectHealthAll, r.onHealth); err != nil {
		return fmt.Errorf("bus: subscribe %s: %w", SubjectHealthAll, err)
	}
	if err := r.healthSub.SetPendingLimits(DefaultHealthPending, 256<<20); err != nil {
		return fmt.Errorf("bus: pending limits: %w", err)
	}
	r.wg.Go(func() { r.ring.followReconnects(r.ctx, r.nc, r.reconnected) })
	r.wg.Go(func() { r.ring.watch(r.ctx) })
	r.wg.Go(func() { r.write(r.ctx) })
	r.svc, err = micro.AddService(r.nc, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
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
		{"route", SubjectRequest, r.handleRoute},
		{"ring", SubjectRing, r.handleRing},
		{"nodes", SubjectNodes, r.handleNodes},
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
	r.log.Info("router started", "bucket", r.cfg.Bucket, "revision", rev, "members", len(d.Nodes), "queue_group", r.cfg.QueueGroup)
	return nil
}

// reconnected counts a reconnect and has the writer re-read the ring.
func (r *Router) reconnected() {
	r.stats.reconnects.Add(1)
	r.log.Info("reconnected to NATS; re-reading the ring")
	select {
	case r.resyncNow <- struct{}{}:
	default:
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
	node, _ := nodeFromSubject(m.Subject)
	h, err := DecodeHealth(node, m.Data, m.Header)
	if err == nil {
		for _, s := range r.Strategies() { // ConsistentHash first: it refuses stale seqs
			if err = s.Report(node, h); err != nil {
				break
			}
		}
	}
	if err != nil {
		reason := rejectReason(err)
		r.stats.rejected[reason].Add(1)
		r.stats.limitedLog(r.log, reason, "health report rejected", "node", clip(node), "reason", reasonNames[reason], "err", err)
		return
	}
	r.stats.accepted.Add(1)
}

// handleRoute answers route.request.
func (r *Router) handleRoute(req micro.Request) {
	start := time.Now()
	r.inflight.Add(1)
	r.lastReq.Store(start.UnixNano())
	defer r.inflight.Add(-1)
	data := req.Data()
	enc := DetectEncoding(data, nats.Header(req.Headers()))
	strategy := "unknown"
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("panic answering a request", "panic", p, "stack", string(debug.Stack()))
			r.respondError(req, enc, fmt.Errorf("%w: %v", ErrInternal, p))
			r.stats.request(strategy, CodeInternal, time.Since(start), r.cfg)
		}
	}()
	reply, err := r.route(data, enc, &strategy)
	code := 200
	if err == nil {
		var out []byte
		if out, err = enc.Marshal(&reply); err == nil {
			if err = req.Respond(out); err != nil {
				r.log.Debug("respond failed", "err", err)
			}
		} else {
			err = fmt.Errorf("%w: encode reply: %w", ErrInternal, err)
		}
	}
	if err != nil {
		code = codeOf(err)
		r.respondError(req, enc, err)
	}
	r.stats.request(strategy, code, time.Since(start), r.cfg)
}

// route decodes, validates and answers a request.
func (r *Router) route(data []byte, enc Encoding, strategy *string) (Reply, error) {
	var q Request
	if err := enc.Unmarshal(data, &q); err != nil {
		return Reply{}, badRequest("%v", err)
	}
	s, err := r.validate(&q)
	if err != nil {
		return Reply{}, err
	}
	*strategy = s.Name()
	return s.Select(r.ctx, q)
}

// validate checks q against the contract and the limits, fills in
// defaults, and returns the strategy to answer it.
func (r *Router) validate(q *Request) (Strategy, error) {
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
		if err := ValidateNodeID(c); err != nil {
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
	switch q.Strategy {
	case "":
		if q.Key != "" || q.Keys != nil {
			return r.ch, nil
		}
		return r.ra, nil
	case StrategyConsistentHash:
		if q.Key == "" && q.Keys == nil {
			return nil, badRequest("%s needs a key (or keys)", StrategyConsistentHash)
		}
		return r.ch, nil
	case StrategyResourceAware:
		return r.ra, nil
	}
	return nil, badRequest("unknown strategy %q: use %s or %s", clip(q.Strategy), StrategyConsistentHash, StrategyResourceAware)
}

// respondError sends an error reply in the request's encoding.
func (r *Router) respondError(req micro.Request, enc Encoding, err error) {
	code := codeOf(err)
	msg := err.Error()
	body, mErr := enc.Marshal(&errorBody{Error: msg, Code: code})
	if mErr != nil {
		body = nil
	}
	if err := req.Error(fmt.Sprint(code), msg, body); err != nil {
		r.log.Debug("error reply failed", "err", err)
	}
}

// RingState is the reply of route.ring.
type RingState struct {
	Revision uint64       `json:"revision" msgpack:"revision"`
	Ring     RingDocument `json:"ring" msgpack:"ring"`
}

func (r *Router) handleRing(req micro.Request) {
	v := r.ring.current()
	r.respond(req, RingState{Revision: v.rev, Ring: v.doc})
}

func (r *Router) handleNodes(req micro.Request) {
	r.respond(req, r.Nodes())
}

func (r *Router) respond(req micro.Request, v any) {
	enc := DetectEncoding(req.Data(), nats.Header(req.Headers()))
	out, err := enc.Marshal(v)
	if err != nil {
		r.respondError(req, enc, fmt.Errorf("%w: %w", ErrInternal, err))
		return
	}
	_ = req.Respond(out)
}

// Revision returns the KV revision of the ring the router answers from.
func (r *Router) Revision() uint64 { return r.ring.current().rev }

// Ring returns the ring document the router answers from and its revision.
func (r *Router) Ring() (RingDocument, uint64) {
	v := r.ring.current()
	return v.doc, v.rev
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
		return ErrClosed
	case !r.nc.IsConnected():
		return fmt.Errorf("not connected to NATS (%s)", r.nc.Status())
	}
	return nil
}
