package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"github.com/natsroute/natsroute/ring"
)

// RingCache keeps a local copy of the ring published in a KV bucket, so a
// service can route by key with no round trip. It answers exactly as the
// routers do for the same revision. It is safe for concurrent use; lookups
// read an immutable snapshot and allocate nothing (with AppendN).
type RingCache struct {
	f      *follow.Follower[RingDocument]
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
// keeps it current from a KV watch until Close. If the bucket does not
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
	return c, nil
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
	var wg sync.WaitGroup
	wg.Go(func() { c.f.Watch(ctx) })
	wg.Go(func() { follow.FollowReconnects(ctx, c.js.Conn(), c.f.Kick, nil) })
	t := time.NewTicker(cacheResync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
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
	c.f.Reset()
	_, _, _ = c.f.Resync(ctx)
	select {
	case c.f.Kick <- struct{}{}:
	default:
	}
}

// cacheResync is how often a RingCache re-reads its key in case the watch
// missed an update.
const cacheResync = 5 * time.Second

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

// Revision returns the KV revision of the cached ring (0 if none yet).
func (c *RingCache) Revision() uint64 { return c.f.Current().Rev }

// Document returns the cached ring document.
func (c *RingCache) Document() RingDocument { return c.f.Current().Doc }

// Ring returns the cached ring document and its revision, read together.
func (c *RingCache) Ring() (RingDocument, uint64) {
	v := c.f.Current()
	return v.Doc, v.Rev
}

// Snapshot returns the cached ring, to answer many lookups against one
// revision.
func (c *RingCache) Snapshot() *ring.Snapshot { return c.f.Current().Snap }

// WaitRevision blocks until the cache holds revision rev or newer.
func (c *RingCache) WaitRevision(ctx context.Context, rev uint64) error {
	return c.f.WaitRevision(ctx, rev)
}

// Err returns why the last document in the bucket was refused, or nil if
// the cache holds the bucket's latest ring.
func (c *RingCache) Err() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.lastErr
}

// Get returns the node that owns key; ErrNoNodes if the ring is empty.
func (c *RingCache) Get(key string) (string, error) {
	n, err := c.f.Current().Snap.Get(key)
	return n, cacheErr(err)
}

// GetN returns up to n distinct nodes for key, primary first.
func (c *RingCache) GetN(key string, n int) ([]string, error) {
	ns, err := c.f.Current().Snap.GetN(key, n)
	return ns, cacheErr(err)
}

// GetFrom is GetN restricted to candidates.
func (c *RingCache) GetFrom(key string, candidates []string, n int) ([]string, error) {
	ns, err := c.f.Current().Snap.GetFrom(key, candidates, n)
	return ns, cacheErr(err)
}

func cacheErr(err error) error {
	if errors.Is(err, ring.ErrEmpty) {
		return fmt.Errorf("%w: %w", ErrNoNodes, err)
	}
	return err
}
