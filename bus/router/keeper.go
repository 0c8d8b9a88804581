package router

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"github.com/natsroute/natsroute/ring"
)

// keeper follows the KV bucket for the router: it loads every pool's
// document at start, hands watched entries to their pools, re-reads after
// a reconnect, and creates the bucket again when it is lost.
type keeper struct {
	r         *Router
	js        jetstream.JetStream
	kick      chan struct{} // restarts the bucket watch (after a reconnect, or for a new bucket)
	suspect   chan struct{} // asks keepBucket to check the bucket
	bucketGen time.Time     // when the bucket's stream was created; keepBucket's own
	touched   []*pool       // pools the watch's batch touched; the watch's own
}

// watchedKeys are the keys the router follows: the pools' member keys
// (pools.<pool>, members.<pool>.<node>), their documents and ejections. A
// consumer's filters must not overlap (the server refuses them), and these
// do not: "ring" is not matched by "ring.>".
func (k *keeper) watchedKeys() []string {
	return append(slices.Clone(ringFilters), bus.EjectedPrefix+">")
}

// ringFilters are the watch filters of every pool's ring: its member keys
// and its document.
var ringFilters = []string{bus.PoolsKeyPrefix + ">", bus.MembersKeyPrefix + ">", bus.RingKey, bus.RingKey + ".>"}

// loadPools reads every pool's ring in the bucket (one watch, up to the end
// of its initial values), so a restarted router serves every pool at once,
// and the ejections, before any writer runs.
func (k *keeper) loadPools(ctx context.Context, kv jetstream.KeyValue) error {
	r := k.r
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()                                              // stops the watch
	w, err := kv.WatchFiltered(wctx, slices.Clone(ringFilters)) // it prefixes them in place
	if err != nil {
		return fmt.Errorf("router: watch the rings: %w", err)
	}
	b := k.batch()
	b.Begin()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return fmt.Errorf("router: read the rings: %w", ctx.Err())
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errors.New("router: read the rings: the watch stopped")
			case e == nil:
				done = true
			default:
				b.Apply(e)
			}
		}
	}
	b.Flush()
	for _, p := range r.sortedPools() {
		p.ring.SetKV(kv)
	}
	return k.loadEjections(ctx, kv)
}

// probeBucket checks that JetStream answers before a watch is created:
// one small read.
func (k *keeper) probeBucket(ctx context.Context) error {
	kv := k.r.ring().Bucket()
	if kv == nil {
		return jetstream.ErrBucketNotFound
	}
	_, err := kv.Get(ctx, bus.PoolKeyV3(bus.DefaultPool))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		k.suspectBucket() // gone, or JetStream not back yet: keepBucket tells
	}
	return err
}

// batch is how the bucket watch hands entries to the pools: member keys go
// to the pool's PoolView, documents wait for the end of the batch, and each
// pool touched publishes once per batch (flushBatch).
func (k *keeper) batch() follow.Batch {
	return follow.Batch{Begin: k.beginBatch, Apply: k.applyEntry, Flush: k.flushBatch}
}

// beginBatch starts every pool's view afresh: a new watch delivers the
// bucket's current values again.
func (k *keeper) beginBatch() {
	for _, p := range *k.r.pools.Load() {
		p.view, p.docEntry = nil, nil
	}
}

// flushBatch publishes the pools the batch touched.
func (k *keeper) flushBatch() {
	for _, p := range k.touched {
		p.touched = false
		p.publish()
	}
	k.touched = k.touched[:0]
}

// loadEjections reads the ejections in the bucket before the writers run,
// so a router that starts while a node is ejected does not put it back.
func (k *keeper) loadEjections(ctx context.Context, kv jetstream.KeyValue) error {
	keys, err := kv.ListKeysFiltered(ctx, bus.EjectedPrefix+">")
	if err != nil {
		return fmt.Errorf("router: list ejections: %w", err)
	}
	var names []string
	for key := range keys.Keys() {
		names = append(names, key)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("router: list ejections: %w", err)
	}
	var entries []jetstream.KeyValueEntry
	for _, key := range names {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // over since it was listed
		}
		if err != nil {
			return fmt.Errorf("router: read %s: %w", key, err)
		}
		entries = append(entries, e)
	}
	// In stream order, as the watch gives them and every replica applied
	// them: the pool's share leaves out the same ones everywhere.
	slices.SortFunc(entries, func(a, b jetstream.KeyValueEntry) int { return cmp.Compare(a.Revision(), b.Revision()) })
	for _, e := range entries {
		k.r.ej.applyEntry(e)
	}
	return nil
}

// applyEntry hands a watched KV entry to its pool, adding pools that other
// routers created.
func (k *keeper) applyEntry(e jetstream.KeyValueEntry) {
	r := k.r
	key := e.Key()
	if strings.HasPrefix(key, bus.EjectedPrefix) {
		r.ej.applyEntry(e)
		return
	}
	name, doc := bus.PoolFromKey(key)
	ok := doc
	if !ok {
		if name, ok = bus.ParsePoolKeyV3(key); !ok {
			name, _, ok = bus.ParseMemberKey(key)
		}
	}
	if !ok {
		return
	}
	p, err := r.ensurePool(name)
	if err != nil {
		r.stats.limitedLog(r.log, rejectTooManyPools, "pool in the bucket not served", "pool", name, "err", err)
		return
	}
	if !p.touched {
		p.touched = true
		k.touched = append(k.touched, p)
	}
	if doc {
		p.legacy.observe(e.Revision(), e.Value(), e.Operation() == jetstream.KeyValuePut)
		p.docEntry = e
		return
	}
	_, node, member := bus.ParseMemberKey(key)
	if p.v3.observe(key, e.Revision(), e.Operation() == jetstream.KeyValuePut, e.Value(), e.Created()) {
		if member {
			p.newsOf = append(p.newsOf, node)
		} else {
			p.news = true
		}
	}
	if p.view == nil {
		p.view, _ = bus.NewPoolView(name) // the name was validated by ensurePool
	}
	var before ring.Member
	if member {
		before, _ = p.view.Member(node)
	}
	if err := p.view.Apply(e); err != nil {
		r.stats.docRejected.Add(1)
		r.stats.limitedLog(r.log, rejectEntry, "ring entry refused", "pool", name, "err", err)
	}
	if !member || !p.view.V3() {
		return
	}
	// Shed history is noted per member entry, so replicas that applied the
	// same entries agree on it however their watches batched them (a batch
	// may hold a fall and the rise that undid it). A watch started again
	// replays entries the pool has already applied: they are not news.
	if after, _ := p.view.Member(node); after.Shed != before.Shed && (!p.ring.Published() || e.Revision() > p.ring.Current().Rev) {
		r.healthMu.Lock()
		p.noteShed(node, before.Shed, after.Shed, r.cfg.Now())
		r.healthMu.Unlock()
	}
}

// suspectBucket asks keepBucket to check that the bucket is still there: a
// write or read failed, or the bucket holds an older revision than a view.
func (k *keeper) suspectBucket() {
	r := k.r
	select {
	case r.suspect <- struct{}{}:
	default:
	}
}

// keepBucket checks the bucket whenever something suggests it is gone (an
// operator deleted it; the server restarted on an empty store) or was
// created anew, at most four times a second, until ctx ends. Without it a
// router retried its writes against a missing bucket for ever.
func (k *keeper) keepBucket(ctx context.Context) {
	r := k.r
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
func (k *keeper) checkBucket(ctx context.Context) {
	r := k.r
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
		p.ring.Unpublish() // the keys are gone: every one is written again
		p.ring.Reset()
		p.v3.reset()
		p.legacy.reset()
		p.wake()
	}
	select { // the watch of the old bucket delivers nothing more
	case r.kick <- struct{}{}:
	default:
	}
}

// reconnected counts a reconnect and has every writer re-read its ring.
func (k *keeper) reconnected() {
	r := k.r
	r.stats.reconnects.Add(1)
	r.log.Info("reconnected to NATS; re-reading the rings")
	for _, p := range *r.pools.Load() {
		select {
		case p.resyncNow <- struct{}{}:
		default:
		}
	}
}

// allowKeyTTL makes sure the bucket takes per-key TTLs, which ejections
// need to end by themselves; a bucket of an earlier release is updated.
// Without them (no permission to update the stream) ejections still work
// but each router keeps its own, and it says so.
func (k *keeper) allowKeyTTL(ctx context.Context, kv jetstream.KeyValue) {
	r := k.r
	updated, err := follow.AllowKeyTTL(ctx, r.js, kv)
	switch {
	case err != nil:
		r.log.Warn("the bucket does not take per-key TTLs and could not be updated to: ejections will not be shared between replicas",
			"bucket", r.cfg.Bucket, "err", err)
	case updated:
		r.log.Info("updated the bucket to take per-key TTLs (for shared ejections)", "bucket", r.cfg.Bucket)
	}
}
