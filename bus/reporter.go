package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// HealthSource produces a node's current health. Status, Seq and Weight
// are set by the Reporter.
type HealthSource interface {
	Health(ctx context.Context) (Health, error)
}

// HealthFunc adapts a function to HealthSource.
type HealthFunc func(ctx context.Context) (Health, error)

// Health calls f.
func (f HealthFunc) Health(ctx context.Context) (Health, error) { return f(ctx) }

// Reporter publishes a node's health on health.<node> every interval, and
// status "leaving" on Close, so a clean shutdown leaves the ring at once.
type Reporter struct {
	nc       *nats.Conn
	node     string
	source   HealthSource
	interval time.Duration
	enc      Encoding
	log      *slog.Logger

	seq      atomic.Uint64 // starts at the Unix time in ns, so it grows across restarts
	weight   atomic.Uint64 // math.Float64bits of the weight; 0 means 1
	draining atomic.Bool
	failures atomic.Uint64
	pools    atomic.Pointer[[]string] // nil: the default pool

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// ReporterOption configures a Reporter; invalid values make NewReporter fail.
type ReporterOption func(*Reporter) error

// WithWeight sets the node's weight (default 1).
func WithWeight(w float64) ReporterOption {
	return func(r *Reporter) error { return r.SetWeight(w) }
}

// WithPools makes the node a member of these pools (1 to 16 distinct
// names) instead of the default pool.
func WithPools(pools ...string) ReporterOption {
	return func(r *Reporter) error { return r.SetPools(pools...) }
}

// SetPools changes the pools the node reports for, from the next report on
// (no names: the default pool). Leaving a pool is a ring change there.
func (r *Reporter) SetPools(pools ...string) error {
	if len(pools) == 0 {
		r.pools.Store(nil)
		return nil
	}
	if err := validatePools(pools); err != nil {
		return fmt.Errorf("bus: SetPools: %w", err)
	}
	p := slices.Clone(pools)
	r.pools.Store(&p)
	return nil
}

// WithReporterEncoding sets the report encoding (default Msgpack).
func WithReporterEncoding(e Encoding) ReporterOption {
	return func(r *Reporter) error {
		if e != Msgpack && e != JSON {
			return fmt.Errorf("bus: WithReporterEncoding(%d): want Msgpack or JSON", e)
		}
		r.enc = e
		return nil
	}
}

// WithReporterLogger sets where publish and source failures are logged.
func WithReporterLogger(l *slog.Logger) ReporterOption {
	return func(r *Reporter) error { r.log = l; return nil }
}

// NewReporter validates its arguments and starts publishing: once at once,
// then every interval.
func NewReporter(nc *nats.Conn, node string, source HealthSource, interval time.Duration, opts ...ReporterOption) (*Reporter, error) {
	if nc == nil || source == nil {
		return nil, errors.New("bus: NewReporter needs a connection and a source")
	}
	if err := ValidateNodeID(node); err != nil {
		return nil, err
	}
	if interval <= 0 {
		return nil, fmt.Errorf("bus: NewReporter: interval %v, want > 0", interval)
	}
	r := &Reporter{nc: nc, node: node, source: source, interval: interval, log: slog.Default(), done: make(chan struct{})}
	r.seq.Store(uint64(time.Now().UnixNano()))
	for _, o := range opts {
		if err := o(r); err != nil {
			return nil, err
		}
	}
	var ctx context.Context
	ctx, r.cancel = context.WithCancel(context.Background())
	go r.run(ctx)
	return r, nil
}

// SetWeight changes the weight sent from the next report on.
func (r *Reporter) SetWeight(w float64) error {
	if !(w > 0 && w <= 1000) {
		return fmt.Errorf("bus: weight %v, want (0, 1000]", w)
	}
	r.weight.Store(math.Float64bits(w))
	return nil
}

// SetDraining marks the node draining (it keeps its ring points but gets no
// new picks) or up again, and reports at once.
func (r *Reporter) SetDraining(draining bool) error {
	r.draining.Store(draining)
	ctx, cancel := context.WithTimeout(context.Background(), r.interval)
	defer cancel()
	return r.publish(ctx, "")
}

// Failures counts reports that could not be made or sent.
func (r *Reporter) Failures() uint64 { return r.failures.Load() }

func (r *Reporter) run(ctx context.Context) {
	defer close(r.done)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		if err := r.publish(ctx, ""); err != nil && ctx.Err() == nil {
			r.failures.Add(1)
			r.log.Warn("health report failed", "node", r.node, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// publish reports once; status overrides the draining flag when set.
func (r *Reporter) publish(ctx context.Context, status string) error {
	h, err := r.source.Health(ctx)
	if err != nil {
		return fmt.Errorf("health source: %w", err)
	}
	if status == "" && r.draining.Load() {
		status = StatusDraining
	}
	h.Status = status
	h.Weight = math.Float64frombits(r.weight.Load())
	h.Seq = r.seq.Add(1)
	if p := r.pools.Load(); p != nil {
		h.Pools = *p
	}
	data, err := EncodeHealth(r.node, h, r.enc)
	if err != nil {
		return err
	}
	return r.nc.Publish(HealthSubject(r.node), data)
}

// Close stops reporting and publishes status "leaving" (the node leaves the
// ring at once). It is safe to call more than once.
func (r *Reporter) Close() error {
	var err error
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err = r.publish(ctx, StatusLeaving); err == nil {
			err = r.nc.FlushWithContext(ctx)
		}
	})
	return err
}
