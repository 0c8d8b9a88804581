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
}

// watchedKeys are the keys the router follows: the pools' documents,
// ejections and, with WriteV3, the v3 keys (pools.<pool>,
// members.<pool>.<node>). A consumer's filters must not overlap (the server
// refuses them), and these do not: "ring" is not matched by "ring.>".
func (k *keeper) watchedKeys() []string {
	keys := []string{bus.RingKey, bus.RingKey + ".>", bus.EjectedPrefix + ">"}
	if k.r.cfg.WriteV3 {
		keys = append(keys, v3Filters...)
	}
	return keys
}

// v3Filters are the watch filters of every pool's v3 keys.
var v3Filters = []string{bus.PoolsKeyPrefix + ">", bus.MembersKeyPrefix + ">"}

// loadPools reads the ring document of every pool with a key in the bucket,
// so a restarted router serves every pool at once.
func (k *keeper) loadPools(ctx context.Context, kv jetstream.KeyValue) error {
	r := k.r
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
	if r.cfg.WriteV3 {
		if err := k.loadV3(ctx, kv); err != nil {
			return err
		}
	}
	return k.loadEjections(ctx, kv)
}

// loadV3 reads the v3 keys in the bucket (with one watch, up to the end of
// its initial values) before the writers run, so each pool's first sync
// knows the keys' revisions and which members to delete.
func (k *keeper) loadV3(ctx context.Context, kv jetstream.KeyValue) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()                                            // stops the watch
	w, err := kv.WatchFiltered(wctx, slices.Clone(v3Filters)) // it prefixes them in place
	if err != nil {
		return fmt.Errorf("bus: watch v3 keys: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("bus: read v3 keys: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("bus: read v3 keys: the watch stopped")
			}
			if e == nil {
				return nil
			}
			k.applyEntry(e)
		}
	}
}

// loadEjections reads the ejections in the bucket before the writers run,
// so a router that starts while a node is ejected does not put it back.
func (k *keeper) loadEjections(ctx context.Context, kv jetstream.KeyValue) error {
	keys, err := kv.ListKeysFiltered(ctx, bus.EjectedPrefix+">")
	if err != nil {
		return fmt.Errorf("bus: list ejections: %w", err)
	}
	var names []string
	for key := range keys.Keys() {
		names = append(names, key)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bus: list ejections: %w", err)
	}
	var entries []jetstream.KeyValueEntry
	for _, key := range names {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // over since it was listed
		}
		if err != nil {
			return fmt.Errorf("bus: read %s: %w", key, err)
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
	if strings.HasPrefix(e.Key(), bus.EjectedPrefix) {
		r.ej.applyEntry(e)
		return
	}
	name, ok := bus.PoolFromKey(e.Key())
	v3 := false
	if !ok && r.cfg.WriteV3 { // a v3 key: pools.<pool> or members.<pool>.<node>
		if name, ok = bus.ParsePoolKeyV3(e.Key()); !ok {
			name, _, ok = bus.ParseMemberKey(e.Key())
		}
		v3 = ok
	}
	if !ok {
		return
	}
	p, err := r.ensurePool(name)
	if err != nil {
		r.stats.limitedLog(r.log, rejectTooManyPools, "pool in the bucket not served", "pool", name, "err", err)
		return
	}
	if v3 {
		p.observeV3(e)
		return
	}
	p.ring.ApplyEntry(e)
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
		p.ring.Reset()
		p.v3.reset()
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
