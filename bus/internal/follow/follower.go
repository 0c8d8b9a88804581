// Package follow holds the KV machinery that the Router and the RingCache
// share: a Follower that keeps the ring of one key of the bucket, the watch
// that feeds it, and the retries JetStream needs while it forms or fails
// over. It is internal: applications use bus.RingCache, and the router
// package embeds one Follower per pool.
package follow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/ring"
)

// Codec tells a Follower how to read the documents of its key.
type Codec[D any] struct {
	Decode  func(data []byte) (D, error) // a refused document is an error
	Empty   func(vnodes int) D           // the document of a key with no value
	Members func(D) []ring.Member
	VNodes  func(D) int
}

// View is the ring as last seen in the bucket: immutable, swapped
// atomically.
type View[D any] struct {
	Doc  D
	Rev  uint64 // KV revision of Doc; 0 before the key exists
	Snap *ring.Snapshot
}

// Follower holds the ring of the bucket's document and follows the key:
// the Router and the RingCache both answer from one.
type Follower[D any] struct {
	codec  Codec[D]
	vnodes int // of the empty document
	key    string
	log    *slog.Logger

	// Hooks, set before the follower is used.
	OnReject func(rev uint64, err error) // a document in the bucket was refused
	OnApply  func(old, cur *View[D])     // a new view was stored; called under mu
	// OnBehind is called when the bucket holds an older revision of the key
	// than the view: the bucket was deleted and created anew (revisions
	// start again from 1), so the caller checks it (see Generation).
	OnBehind func()

	kvMu sync.Mutex // guards kv
	kv   jetstream.KeyValue

	// Kick restarts the watch (after a reconnect, or for a new bucket).
	Kick chan struct{}

	mu      sync.Mutex    // serializes apply; guards ring and changed
	ring    *ring.Ring    // reused across documents so unchanged members keep their points
	changed chan struct{} // closed and replaced whenever the view changes
	view    atomic.Pointer[View[D]]

	// published: the view comes from Publish (a pool that follows its
	// member keys), and documents are not applied. Guarded by mu; read
	// with Published.
	published atomic.Bool
}

// New returns a Follower of key with an empty ring of vnodes virtual nodes.
func New[D any](codec Codec[D], vnodes int, key string, log *slog.Logger) (*Follower[D], error) {
	rg, err := ring.New(ring.Config{VirtualNodes: vnodes})
	if err != nil {
		return nil, err
	}
	f := &Follower[D]{codec: codec, vnodes: vnodes, key: key, log: log, ring: rg, changed: make(chan struct{}), Kick: make(chan struct{}, 1)}
	f.view.Store(&View[D]{Doc: codec.Empty(vnodes), Snap: rg.Snapshot()})
	return f, nil
}

// Key returns the KV key it follows.
func (f *Follower[D]) Key() string { return f.key }

// SetKey changes the key, before the follower is used.
func (f *Follower[D]) SetKey(key string) { f.key = key }

// Log returns its logger.
func (f *Follower[D]) Log() *slog.Logger { return f.log }

// SetLog changes its logger, before the follower is used.
func (f *Follower[D]) SetLog(l *slog.Logger) { f.log = l }

// Current returns the view that answers now.
func (f *Follower[D]) Current() *View[D] { return f.view.Load() }

// SetKV binds the follower to a bucket.
func (f *Follower[D]) SetKV(kv jetstream.KeyValue) {
	f.kvMu.Lock()
	f.kv = kv
	f.kvMu.Unlock()
}

// Bucket returns the bucket it is bound to, or nil.
func (f *Follower[D]) Bucket() jetstream.KeyValue {
	f.kvMu.Lock()
	defer f.kvMu.Unlock()
	return f.kv
}

// Apply makes doc at rev the ring that answers, unless the view is already
// at that revision or newer, or comes from Publish. It reports whether the
// view changed.
func (f *Follower[D]) Apply(doc D, rev uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.view.Load()
	if f.published.Load() || rev < old.Rev || (rev == old.Rev && rev != 0) {
		return false
	}
	var err error
	if vn := f.codec.VNodes(doc); f.ring.Snapshot().VirtualNodes() != vn {
		var rg *ring.Ring
		if rg, err = ring.New(ring.Config{VirtualNodes: vn}); err == nil {
			if err = rg.Set(f.codec.Members(doc)); err == nil {
				f.ring = rg
			}
		}
	} else {
		err = f.ring.Set(f.codec.Members(doc))
	}
	if err != nil {
		f.reject(rev, err)
		return false
	}
	f.store(old, &View[D]{Doc: doc, Rev: rev, Snap: f.ring.Snapshot()})
	return true
}

// store makes cur the view that answers, with f.mu held: it wakes whoever
// waits for a change and calls OnApply.
func (f *Follower[D]) store(old, cur *View[D]) {
	f.view.Store(cur)
	close(f.changed)
	f.changed = make(chan struct{})
	if f.OnApply != nil {
		f.OnApply(old, cur)
	}
}

// Publish makes a view built elsewhere the one that answers: a router's
// pool that follows its member keys builds its ring incrementally
// (bus.PoolView) and publishes doc, its revision and that snapshot here.
// From the first Publish on, documents are no longer applied (Apply,
// ApplyEntry and Resync leave the view alone) until Unpublish. The first
// Publish takes any revision: the member keys' revisions are not the
// document's, and may be lower. After it, Publish refuses a revision lower
// than the view's. It reports whether the view changed.
func (f *Follower[D]) Publish(doc D, rev uint64, snap *ring.Snapshot) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.view.Load()
	if f.published.Load() && (rev < old.Rev || (rev == old.Rev && snap == old.Snap)) {
		return false
	}
	f.published.Store(true)
	f.store(old, &View[D]{Doc: doc, Rev: rev, Snap: snap})
	return true
}

// Published reports whether the view comes from Publish.
func (f *Follower[D]) Published() bool { return f.published.Load() }

// Unpublish goes back to following the document: the pool's member keys
// are gone. The view keeps its members at revision 0, so the next document
// applied is taken whatever its revision.
func (f *Follower[D]) Unpublish() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.published.Swap(false) {
		return
	}
	old := f.view.Load()
	f.view.Store(&View[D]{Doc: old.Doc, Snap: old.Snap})
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *Follower[D]) reject(rev uint64, err error) {
	f.log.Error("ring document refused; still answering from the last good ring", "key", f.key, "revision", rev, "err", err)
	if f.OnReject != nil {
		f.OnReject(rev, err)
	}
}

// Read returns the document in the bucket and its revision (an empty
// document and revision 0 if there is none).
func (f *Follower[D]) Read(ctx context.Context) (D, uint64, error) {
	var zero D
	kv := f.Bucket()
	if kv == nil {
		return zero, 0, jetstream.ErrBucketNotFound
	}
	e, err := kv.Get(ctx, f.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return f.codec.Empty(f.vnodes), 0, nil
	}
	if err != nil {
		return zero, 0, fmt.Errorf("kv get %q: %w", f.key, err)
	}
	d, err := f.codec.Decode(e.Value())
	if err != nil {
		f.reject(e.Revision(), err)
		return zero, 0, fmt.Errorf("ring document at revision %d: %w", e.Revision(), err)
	}
	return d, e.Revision(), nil
}

// Resync reads the document and applies it.
func (f *Follower[D]) Resync(ctx context.Context) (D, uint64, error) {
	d, rev, err := f.Read(ctx)
	if err == nil {
		if rev < f.Current().Rev && f.OnBehind != nil {
			f.OnBehind()
		}
		f.Apply(d, rev)
	}
	return d, rev, err
}

// Reset forgets the view's revision and keeps its members: in a bucket
// created anew revisions start again from 1, and the next document read
// or watched there must be taken (and a router republishes the members).
func (f *Follower[D]) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.view.Load()
	if old.Rev == 0 {
		return
	}
	f.view.Store(&View[D]{Doc: old.Doc, Snap: old.Snap})
	close(f.changed)
	f.changed = make(chan struct{})
}

// Generation returns when the bucket's stream was created: a bucket
// deleted and created again under the same name has a new one.
func Generation(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
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

// ApplyEntry applies a watched entry of the key.
func (f *Follower[D]) ApplyEntry(e jetstream.KeyValueEntry) {
	if e.Revision() <= f.Current().Rev {
		return // already applied: a resync got there first
	}
	if e.Operation() != jetstream.KeyValuePut {
		f.Apply(f.codec.Empty(f.vnodes), e.Revision())
		return
	}
	d, err := f.codec.Decode(e.Value())
	if err != nil {
		f.reject(e.Revision(), err)
		return
	}
	f.Apply(d, e.Revision())
}

// Watch follows the key until ctx ends; see WatchKeys.
func (f *Follower[D]) Watch(ctx context.Context) {
	probe := func(ctx context.Context) error { _, _, err := f.Resync(ctx); return err }
	WatchKeys(ctx, f.Bucket, []string{f.key}, probe, f.ApplyEntry, f.Kick, f.log)
}

// Changed returns a channel that is closed at the next change of the view.
func (f *Follower[D]) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// WaitRevision blocks until the view's revision is at least rev.
func (f *Follower[D]) WaitRevision(ctx context.Context, rev uint64) error {
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		if f.Current().Rev >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsroute: waiting for ring revision %d (at %d): %w", rev, f.Current().Rev, ctx.Err())
		case <-ch:
		}
	}
}
