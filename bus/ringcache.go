package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"github.com/natsroute/natsroute/ring"
)

// RingCache keeps a local copy of the ring published in a KV bucket, so a
// service can route by key with no round trip. It answers exactly as the
// routers do for the same revision. It is safe for concurrent use; lookups
// read an immutable snapshot and allocate nothing (with AppendN).
//
// Two layouts (subjects.md). A pool whose key "pools.<pool>" holds a value
// is published one key per member (v3): the cache applies each member
// entry as it comes and answers from a ring patched per change; its
// revision is the pool's v3 revision (the highest revision among the
// pool's keys, delete markers included). Otherwise it follows the
// format-1/2 document ("ring" or "ring.<pool>") as before. The cache
// always watches the v3 keys, and watches the document only while the
// pool is not v3: when "pools.<pool>" appears (routers upgraded) it
// switches to v3 at once, and back to the document if that key is
// deleted. Across a switch Revision may step back once (the two layouts'
// last writes are different revisions of the bucket); WaitRevision(R)
// waits until the layout that answers is at R or later. A v3 cache never
// answers before the initial values of its watch are all applied; a
// watch that breaks is established again from the bucket's current
// values while the last snapshot keeps answering.
type RingCache struct {
	f      *follow.Follower[RingDocument]
	v3     *poolFollower
	js     jetstream.JetStream
	bucket string
	pool   string

	errMu   sync.Mutex // guards lastErr
	lastErr error

	suspect chan struct{} // the bucket may have been created anew (see follow.Follower.OnBehind)
	gen     time.Time     // when the bucket's stream was created; run's own

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// RingCacheOption configures WatchRing.
type RingCacheOption func(*RingCache) error

// WithRingCacheLogger sets where the cache logs refused documents and watch
// failures (default slog.Default()).
func WithRingCacheLogger(l *slog.Logger) RingCacheOption {
	return func(c *RingCache) error {
		if l == nil {
			return errors.New("bus: WithRingCacheLogger(nil)")
		}
		c.f.SetLog(l)
		return nil
	}
}

// WithPool makes the cache follow a pool's ring (KV key "ring.<pool>")
// instead of the default pool's.
func WithPool(pool string) RingCacheOption {
	return func(c *RingCache) error {
		if err := ValidatePoolName(pool); err != nil {
			return fmt.Errorf("bus: WithPool: %w", err)
		}
		c.pool = pool
		c.f.SetKey(PoolKey(pool))
		return nil
	}
}

// WatchRing loads the ring document from bucket ("" means natsroute) and
// keeps it current from a KV watch until Close; for a pool published one
// key per member (v3) it returns once the watch's initial values are all
// applied, and follows those keys instead (see RingCache). If the bucket does not
// exist yet, WatchRing returns an empty cache that fills in once a router
// creates it. It survives NATS reconnects. A document of an unknown format
// or hash is refused: the cache keeps its last good ring and Err says why.
// While JetStream is still forming or failing over (timeouts, no
// responders), WatchRing retries until ctx ends; other errors return at once.
func WatchRing(ctx context.Context, js jetstream.JetStream, bucket string, opts ...RingCacheOption) (*RingCache, error) {
	if js == nil {
		return nil, errors.New("bus: WatchRing needs a JetStream context")
	}
	if bucket == "" {
		bucket = DefaultBucket
	}
	if !bucketRE.MatchString(bucket) {
		return nil, fmt.Errorf("bus: WatchRing: bucket %q is not a valid bucket name", bucket)
	}
	f, err := follow.New(ringCodec, ring.DefaultVirtualNodes, RingKey, slog.Default())
	if err != nil {
		return nil, err
	}
	c := &RingCache{f: f, js: js, bucket: bucket, pool: DefaultPool, done: make(chan struct{}), suspect: make(chan struct{}, 1)}
	f.OnBehind = func() {
		select {
		case c.suspect <- struct{}{}:
		default:
		}
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	c.v3 = newPoolFollower(c.pool, f.Bucket, f.Log())
	f.OnReject = func(rev uint64, err error) {
		c.errMu.Lock()
		c.lastErr = fmt.Errorf("revision %d: %w", rev, err)
		c.errMu.Unlock()
	}
	f.OnApply = func(_, _ *follow.View[RingDocument]) {
		c.errMu.Lock()
		c.lastErr = nil
		c.errMu.Unlock()
	}
	// A refused document leaves the cache empty with Err set; a missing
	// bucket leaves it empty until a router creates it.
	err = follow.RetryStartup(ctx, f.Log(), fmt.Sprintf("WatchRing: bucket %q", bucket), follow.Transient, func(ctx context.Context) error {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			return err
		}
		f.SetKV(kv)
		_, _, err = f.Resync(ctx)
		return err
	})
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, ErrInvalidDocument) {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.run(runCtx)
	if f.Bucket() != nil {
		// Not before the v3 keys' initial values are applied: the pool may
		// be v3, and its document (if any) out of date.
		select {
		case <-c.v3.ready:
		case <-ctx.Done():
			_ = c.Close()
			return nil, fmt.Errorf("bus: WatchRing: bucket %q: waiting for the initial values of pool %q's keys: %w", bucket, c.pool, ctx.Err())
		}
	}
	return c, nil
}

// v3Current returns the v3 snapshot that answers, or nil while the pool is
// not v3 (then the document answers).
func (c *RingCache) v3Current() *PoolSnapshot {
	if s := c.v3.Current(); s != nil && s.V3 {
		return s
	}
	return nil
}

// run waits for the bucket if needed, then follows the key, re-reading it
// now and then in case the watch missed an update.
func (c *RingCache) run(ctx context.Context) {
	defer close(c.done)
	for c.f.Bucket() == nil {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		kv, err := c.js.KeyValue(attempt, c.bucket)
		cancel()
		if err == nil {
			c.f.SetKV(kv)
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	if gen, err := follow.Generation(ctx, c.f.Bucket()); err == nil {
		c.gen = gen
	}
	// A bucket deleted and created anew is announced by JetStream; the
	// subscription costs nothing while nothing happens. Without permission
	// for it, the periodic check below finds the new bucket.
	suspect := func(*nats.Msg) {
		select {
		case c.suspect <- struct{}{}:
		default:
		}
	}
	if sub, err := c.js.Conn().Subscribe(streamCreatedAdvisory+"KV_"+c.bucket, suspect); err == nil {
		defer func() { _ = sub.Unsubscribe() }()
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.v3.Watch(ctx) })
	wg.Go(func() { c.followDocument(ctx) })
	wg.Go(func() { follow.FollowReconnects(ctx, c.js.Conn(), c.f.Kick, c.v3.Kick) })
	t := time.NewTicker(cacheResync)
	defer t.Stop()
	checked := time.Now()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
			if c.v3Current() != nil {
				// No document to re-read, but a bucket created anew must be
				// noticed (its revisions start again from 1, and a watch
				// resumed by sequence would skip them). The advisory above
				// says so at once; in case it is not allowed, one stream
				// info (about 1 KB) a minute.
				if time.Since(checked) < cacheBucketCheck {
					continue
				}
				checked = time.Now()
				attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
				c.checkBucket(attempt)
				cancel()
				continue
			}
			attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, _, _ = c.f.Resync(attempt)
			cancel()
		case <-c.suspect:
			attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
			c.checkBucket(attempt)
			cancel()
		}
	}
}

// followDocument watches the format-1/2 document while the pool is not v3:
// a v3 pool's routers may still write the document for older readers, and
// a cache that answers from v3 has no use for its every copy.
func (c *RingCache) followDocument(ctx context.Context) {
	// until waits until the pool's layout is v3 (or not), or ctx ends.
	until := func(v3 bool) bool {
		for ctx.Err() == nil {
			ch := c.v3.Changed()
			if (c.v3Current() != nil) == v3 {
				return true
			}
			select {
			case <-ctx.Done():
				return false
			case <-ch:
			}
		}
		return false
	}
	for until(false) {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); c.f.Watch(wctx) }()
		until(true)
		cancel()
		<-done
	}
}

// checkBucket follows a bucket that was deleted and created again (its
// revisions start again from 1): it takes the new bucket's document and
// watches it, instead of waiting for a revision it will never reach.
func (c *RingCache) checkBucket(ctx context.Context) {
	gen, err := follow.Generation(ctx, c.f.Bucket())
	if err != nil || gen.Equal(c.gen) {
		return
	}
	if !c.gen.IsZero() {
		c.f.Log().Warn("the ring bucket was created anew; following the new one", "bucket", c.bucket, "key", c.f.Key())
	}
	c.gen = gen
	c.v3.Kick()
	c.f.Reset()
	_, _, _ = c.f.Resync(ctx)
	select {
	case c.f.Kick <- struct{}{}:
	default:
	}
}

// cacheResync is how often a RingCache re-reads its document (a pool not
// on member keys) in case the watch missed an update.
const cacheResync = 5 * time.Second

// cacheBucketCheck is how often a RingCache of a pool on member keys asks
// whether the bucket was created anew, besides JetStream's advisory.
const cacheBucketCheck = time.Minute

// streamCreatedAdvisory is the subject prefix of JetStream's advisory that
// a stream was created; the stream's name follows.
const streamCreatedAdvisory = "$JS.EVENT.ADVISORY.STREAM.CREATED."

// ringCodec reads ring documents for a follower.
var ringCodec = follow.Codec[RingDocument]{
	Decode:  DecodeRingDocument,
	Empty:   NewRingDocument,
	Members: RingDocument.Members,
	VNodes:  func(d RingDocument) int { return d.VNodes },
}

// Close stops following the bucket. It is safe to call more than once.
func (c *RingCache) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		<-c.done
	})
	return nil
}

// Pool returns the pool whose ring the cache follows.
func (c *RingCache) Pool() string { return c.pool }

// Revision returns the KV revision of the cached ring (0 if none yet): of
// the document, or the pool's v3 revision when the pool is v3.
func (c *RingCache) Revision() uint64 {
	if s := c.v3Current(); s != nil {
		return s.Revision
	}
	return c.f.Current().Rev
}

// Document returns the cached ring document. For a v3 pool it is the
// format-1/2 document of the same membership, built on first use per
// revision (O(members)).
func (c *RingCache) Document() RingDocument {
	d, _ := c.Ring()
	return d
}

// Ring returns the cached ring document and its revision, read together.
func (c *RingCache) Ring() (RingDocument, uint64) {
	if s := c.v3Current(); s != nil {
		return s.Document(), s.Revision
	}
	v := c.f.Current()
	return v.Doc, v.Rev
}

// Snapshot returns the cached ring, to answer many lookups against one
// revision.
func (c *RingCache) Snapshot() *ring.Snapshot {
	if s := c.v3Current(); s != nil {
		return s.Ring
	}
	return c.f.Current().Snap
}

// V3 reports whether the cache answers from the pool's one-key-per-member
// layout.
func (c *RingCache) V3() bool { return c.v3Current() != nil }

// WaitRevision blocks until the cache holds revision rev or newer (see
// RingCache for what the revision is). A cache that started late knows
// the revisions from its start on; any rev up to its current one returns
// at once.
func (c *RingCache) WaitRevision(ctx context.Context, rev uint64) error {
	for {
		docCh, v3Ch := c.f.Changed(), c.v3.Changed()
		cur := c.Revision()
		if cur >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsroute: waiting for ring revision %d (at %d): %w", rev, cur, ctx.Err())
		case <-docCh:
		case <-v3Ch:
		}
	}
}

// Err returns why the last document in the bucket was refused, or (for a
// v3 pool) why "pools.<pool>" or a member entry was refused; nil if the
// cache holds the bucket's latest ring.
func (c *RingCache) Err() error {
	if err := c.v3.Err(); err != nil || c.v3Current() != nil {
		return err
	}
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.lastErr
}

// Get returns the node that owns key; ErrNoNodes if the ring is empty.
func (c *RingCache) Get(key string) (string, error) {
	n, err := c.Snapshot().Get(key)
	return n, cacheErr(err)
}

// GetN returns up to n distinct nodes for key, primary first.
func (c *RingCache) GetN(key string, n int) ([]string, error) {
	ns, err := c.Snapshot().GetN(key, n)
	return ns, cacheErr(err)
}

// GetFrom is GetN restricted to candidates.
func (c *RingCache) GetFrom(key string, candidates []string, n int) ([]string, error) {
	ns, err := c.Snapshot().GetFrom(key, candidates, n)
	return ns, cacheErr(err)
}

func cacheErr(err error) error {
	if errors.Is(err, ring.ErrEmpty) {
		return fmt.Errorf("%w: %w", ErrNoNodes, err)
	}
	return err
}
