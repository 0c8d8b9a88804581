package bus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/ring"
)

// view is the ring as last seen in the bucket: immutable, swapped atomically.
type view struct {
	doc  RingDocument
	rev  uint64 // KV revision of doc; 0 before the key exists
	snap *ring.Snapshot
}

// ringFollower holds the ring of the bucket's document and follows the key:
// the Router and the RingCache both answer from one.
type ringFollower struct {
	vnodes   int    // of the empty document
	key      string // KV key of the document
	log      *slog.Logger
	onReject func(rev uint64, err error) // a document in the bucket was refused
	onApply  func(old, cur *view)        // a new view was stored; called under mu
	// onBehind is called when the bucket holds an older revision of the key
	// than the view: the bucket was deleted and created anew (revisions
	// start again from 1), so the caller checks it (see bucketGeneration).
	onBehind func()

	kvMu sync.Mutex // guards kv
	kv   jetstream.KeyValue

	kick chan struct{} // restarts the watch (after a reconnect)

	mu      sync.Mutex    // serializes apply; guards ring and changed
	ring    *ring.Ring    // reused across documents so unchanged members keep their points
	changed chan struct{} // closed and replaced whenever the view changes
	view    atomic.Pointer[view]

	own atomic.Pointer[ownWrite] // the document this process is writing
}

// ownWrite is a document a router is writing, kept so that when the watch
// brings it back (often before the write's acknowledgement) it is applied
// without decoding it again: 12 % of a router's CPU in a burst of 10,000
// joins went to decoding its own 310 KB documents.
type ownWrite struct {
	data []byte
	doc  RingDocument
}

// expect notes a document about to be written.
func (f *ringFollower) expect(data []byte, doc RingDocument) {
	f.own.Store(&ownWrite{data: data, doc: doc})
}

func newRingFollower(vnodes int, key string, log *slog.Logger) (*ringFollower, error) {
	rg, err := ring.New(ring.Config{VirtualNodes: vnodes})
	if err != nil {
		return nil, err
	}
	f := &ringFollower{vnodes: vnodes, key: key, log: log, ring: rg, changed: make(chan struct{}), kick: make(chan struct{}, 1)}
	f.view.Store(&view{doc: newDocument(vnodes), snap: rg.Snapshot()})
	return f, nil
}

func (f *ringFollower) current() *view { return f.view.Load() }

func (f *ringFollower) setKV(kv jetstream.KeyValue) {
	f.kvMu.Lock()
	f.kv = kv
	f.kvMu.Unlock()
}

func (f *ringFollower) bucket() jetstream.KeyValue {
	f.kvMu.Lock()
	defer f.kvMu.Unlock()
	return f.kv
}

// apply makes doc at rev the ring that answers, unless the view is already
// at that revision or newer. It reports whether the view changed.
func (f *ringFollower) apply(doc RingDocument, rev uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.view.Load()
	if rev < old.rev || (rev == old.rev && rev != 0) {
		return false
	}
	var err error
	if old.snap.VirtualNodes() != doc.VNodes {
		var rg *ring.Ring
		if rg, err = doc.Ring(); err == nil {
			f.ring = rg
		}
	} else {
		err = f.ring.Set(doc.Members())
	}
	if err != nil {
		f.reject(rev, err)
		return false
	}
	cur := &view{doc: doc, rev: rev, snap: f.ring.Snapshot()}
	f.view.Store(cur)
	close(f.changed)
	f.changed = make(chan struct{})
	if f.onApply != nil {
		f.onApply(old, cur)
	}
	return true
}

func (f *ringFollower) reject(rev uint64, err error) {
	f.log.Error("ring document refused; still answering from the last good ring", "key", f.key, "revision", rev, "err", err)
	if f.onReject != nil {
		f.onReject(rev, err)
	}
}

// read returns the document in the bucket and its revision (an empty
// document and revision 0 if there is none).
func (f *ringFollower) read(ctx context.Context) (RingDocument, uint64, error) {
	kv := f.bucket()
	if kv == nil {
		return RingDocument{}, 0, jetstream.ErrBucketNotFound
	}
	e, err := kv.Get(ctx, f.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return newDocument(f.vnodes), 0, nil
	}
	if err != nil {
		return RingDocument{}, 0, fmt.Errorf("kv get %q: %w", f.key, err)
	}
	d, err := DecodeRingDocument(e.Value())
	if err != nil {
		f.reject(e.Revision(), err)
		return RingDocument{}, 0, fmt.Errorf("ring document at revision %d: %w", e.Revision(), err)
	}
	return d, e.Revision(), nil
}

// resync reads the document and applies it.
func (f *ringFollower) resync(ctx context.Context) (RingDocument, uint64, error) {
	d, rev, err := f.read(ctx)
	if err == nil {
		if rev < f.current().rev && f.onBehind != nil {
			f.onBehind()
		}
		f.apply(d, rev)
	}
	return d, rev, err
}

// reset forgets the view's revision and keeps its members: in a bucket
// created anew revisions start again from 1, and the next document read
// or watched there must be taken (and a router republishes the members).
func (f *ringFollower) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.view.Load()
	if old.rev == 0 {
		return
	}
	f.view.Store(&view{doc: old.doc, snap: old.snap})
	f.own.Store(nil)
	close(f.changed)
	f.changed = make(chan struct{})
}

// bucketGeneration returns when the bucket's stream was created: a bucket
// deleted and created again under the same name has a new one.
func bucketGeneration(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return time.Time{}, fmt.Errorf("bus: bucket status of type %T", st)
	}
	return bs.StreamInfo().Created, nil
}

func (f *ringFollower) applyEntry(e jetstream.KeyValueEntry) {
	if e.Revision() <= f.current().rev {
		return // already applied: a router's own write, or a resync got there first
	}
	if e.Operation() != jetstream.KeyValuePut {
		f.apply(newDocument(f.vnodes), e.Revision())
		return
	}
	if w := f.own.Load(); w != nil && bytes.Equal(w.data, e.Value()) {
		f.apply(w.doc, e.Revision())
		return
	}
	d, err := DecodeRingDocument(e.Value())
	if err != nil {
		f.reject(e.Revision(), err)
		return
	}
	f.apply(d, e.Revision())
}

// watch follows the ring key until ctx ends; see watchKeys.
func (f *ringFollower) watch(ctx context.Context) {
	watchKeys(ctx, f.bucket, []string{f.key}, f.resync, f.applyEntry, f.kick, f.log)
}

// watchKeys follows keys of the bucket until ctx ends, passing every entry
// to apply. It re-creates the watcher when it stops (the server restarted,
// the bucket was recreated) or when kicked. Before each watch it calls
// probe, with a short timeout: right after a reconnect JetStream may not
// answer yet, and creating a watch would wait out the JetStream context's
// whole default timeout.
func watchKeys(ctx context.Context, bucket func() jetstream.KeyValue, keys []string,
	probe func(context.Context) (RingDocument, uint64, error), apply func(jetstream.KeyValueEntry),
	kick <-chan struct{}, log *slog.Logger) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		if kv := bucket(); kv != nil {
			attempt, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, _, err = probe(attempt)
			cancel()
			var w jetstream.KeyWatcher
			if err == nil {
				w, err = kv.WatchFiltered(ctx, keys)
			}
			if err == nil {
				backoff = 50 * time.Millisecond
				follow(ctx, w, apply, kick)
				// On shutdown nats.go unsubscribes the watch itself (it holds
				// ctx); stopping it here too would wait out a 5 s JetStream
				// timeout to delete the consumer when the server is gone.
				if ctx.Err() == nil {
					_ = w.Stop()
				}
			}
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("ring watch failed; retrying", "keys", keys, "err", err, "in", backoff)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// follow passes the watcher's entries to apply until it stops, ctx ends or
// kick fires.
func follow(ctx context.Context, w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry), kick <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				apply(e)
			}
		}
	}
}

// followReconnects kicks the watch after each reconnect (a restarted
// server has lost the watch's consumer) and calls hook, until ctx ends.
func followReconnects(ctx context.Context, nc *nats.Conn, kick chan<- struct{}, hook func()) {
	ch := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			select {
			case kick <- struct{}{}:
			default:
			}
			if hook != nil {
				hook()
			}
		}
	}
}

// waitRevision blocks until the view's revision is at least rev.
func (f *ringFollower) waitRevision(ctx context.Context, rev uint64) error {
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		if f.current().rev >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsroute: waiting for ring revision %d (at %d): %w", rev, f.current().rev, ctx.Err())
		case <-ch:
		}
	}
}
