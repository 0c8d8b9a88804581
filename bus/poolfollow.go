package bus

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus/internal/follow"
)

// poolFollower keeps a RingCache's view of a pool's v3 keys: a PoolView fed
// by one watch of PoolWatchKeys, published once per batch of delivered
// entries, never before the watch's initial values are all applied.
type poolFollower struct {
	pool   string
	bucket func() jetstream.KeyValue
	log    *slog.Logger
	kick   chan struct{} // restarts the watch (a reconnect, a new bucket)

	view *PoolView // owned by the watch goroutine

	cur   atomic.Pointer[PoolSnapshot] // nil until the first initial values are applied
	ready chan struct{}                // closed when cur is first set
	once  sync.Once

	mu      sync.Mutex    // guards changed and err
	changed chan struct{} // closed and replaced whenever cur changes
	err     error         // why an entry was refused (PoolView.Err), or nil
}

func newPoolFollower(pool string, bucket func() jetstream.KeyValue, log *slog.Logger) *poolFollower {
	return &poolFollower{pool: pool, bucket: bucket, log: log, kick: make(chan struct{}, 1),
		ready: make(chan struct{}), changed: make(chan struct{})}
}

// Current returns the snapshot that answers, or nil before the initial
// values of the first watch are applied.
func (p *poolFollower) Current() *PoolSnapshot { return p.cur.Load() }

// Changed returns a channel closed at the next change of Current.
func (p *poolFollower) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Err returns why an entry of the pool was refused, or nil.
func (p *poolFollower) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Kick restarts the watch from the bucket's current values.
func (p *poolFollower) Kick() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Watch follows the pool's keys until ctx ends. A watch that breaks is
// established again from scratch: a fresh PoolView applies the new
// watcher's initial values while the last snapshot keeps answering.
func (p *poolFollower) Watch(ctx context.Context) {
	poolKey := PoolKeyV3(p.pool)
	probe := func(ctx context.Context) error {
		_, err := p.bucket().Get(ctx, poolKey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		return err
	}
	follow.WatchBatches(ctx, p.bucket, PoolWatchKeys(p.pool), probe, follow.Batch{
		Begin: func() { p.view, _ = NewPoolView(p.pool) }, // the pool name was validated
		Apply: func(e jetstream.KeyValueEntry) {
			if err := p.view.Apply(e); err != nil {
				p.log.Error("ring entry refused", "pool", p.pool, "err", err)
			}
		},
		Flush: p.flush,
	}, p.kick, p.log)
}

func (p *poolFollower) flush() {
	s, err := p.view.Publish()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.err = err // keep answering from the last good snapshot
		return
	}
	p.err = nil
	if p.view.V3() { // member keys of a pool that is not v3 are no one's concern yet
		p.err = p.view.Err()
	}
	if s == p.cur.Load() {
		return
	}
	p.cur.Store(s)
	close(p.changed)
	p.changed = make(chan struct{})
	p.once.Do(func() { close(p.ready) })
}
