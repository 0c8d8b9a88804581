package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
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
// Unless WithoutProbe is given, its reports say interval_ms and probe: true,
// and it answers probes on health.<node>.probe with a fresh report, so a
// router tells a dead node (no responders) from a late report at once.
type Reporter struct {
	nc       *nats.Conn
	node     string
	source   HealthSource
	interval time.Duration
	enc      Encoding
	log      *slog.Logger
	noProbe  bool
	probeSub *nats.Subscription // nil with WithoutProbe

	// probeMu orders probe answers before the leaving report: Close takes
	// it to set closed, so no answer (an older seq, status up) follows the
	// leave; a router would take such an answer as a rejoin.
	probeMu sync.RWMutex
	closed  bool

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

// WithoutProbe turns probing off: reports carry neither interval_ms nor
// probe, and nothing answers on health.<node>.probe, so routers never probe
// this node (it leaves on "leaving" or after the member TTL, as before).
func WithoutProbe() ReporterOption {
	return func(r *Reporter) error { r.noProbe = true; return nil }
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
	if !r.noProbe {
		sub, err := nc.Subscribe(ProbeSubject(node), func(m *nats.Msg) { r.answerProbe(ctx, m) })
		if err != nil {
			r.cancel()
			return nil, fmt.Errorf("bus: NewReporter: subscribe %s: %w", ProbeSubject(node), err)
		}
		r.probeSub = sub
	}
	go r.run(ctx)
	return r, nil
}

// reportedInterval is the interval_ms a report says: the interval, raised
// to MinInterval (the node reports more often than it says, which is safe);
// 0 (unsaid, so never probed) above MaxInterval.
func (r *Reporter) reportedInterval() time.Duration {
	iv := r.interval.Round(time.Millisecond)
	switch {
	case iv < MinInterval:
		return MinInterval
	case iv > MaxInterval:
		return 0
	}
	return iv
}

// answerProbe replies to a probe with a fresh report in the request's
// encoding, exactly as it would be published.
func (r *Reporter) answerProbe(ctx context.Context, m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	r.probeMu.RLock()
	defer r.probeMu.RUnlock()
	if r.closed {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.interval)
	defer cancel()
	data, err := r.encode(ctx, "", probeEncoding(m.Data, m.Header))
	if err != nil {
		r.failures.Add(1)
		r.log.Warn("probe answer failed", "node", r.node, "err", err)
		return
	}
	if err := m.Respond(data); err != nil {
		r.failures.Add(1)
		r.log.Warn("probe answer failed", "node", r.node, "err", err)
	}
}

// probeEncoding is the encoding of a probe's answer: JSON when the request
// says JSON (a body starting with '{' or Content-Type: application/json),
// otherwise msgpack. Unlike DetectEncoding, an empty body (a probe's usual
// body) means msgpack: routers probe with empty bodies and decode msgpack
// fastest; `nats req health.<node>.probe '{}'` gets JSON.
func probeEncoding(data []byte, h nats.Header) Encoding {
	if len(data) == 0 && (h == nil || !strings.HasPrefix(h.Get("Content-Type"), "application/json")) {
		return Msgpack
	}
	return DetectEncoding(data, h)
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
	data, err := r.encode(ctx, status, r.enc)
	if err != nil {
		return err
	}
	return r.nc.Publish(HealthSubject(r.node), data)
}

// encode takes a fresh sample and encodes it as a report in enc.
func (r *Reporter) encode(ctx context.Context, status string, enc Encoding) ([]byte, error) {
	h, err := r.source.Health(ctx)
	if err != nil {
		return nil, fmt.Errorf("health source: %w", err)
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
	if !r.noProbe {
		h.Interval = r.reportedInterval()
		h.Probe = h.Interval != 0
	}
	return EncodeHealth(r.node, h, enc)
}

// Close stops reporting and publishes status "leaving" (the node leaves the
// ring at once). It is safe to call more than once.
func (r *Reporter) Close() error {
	var err error
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
		r.probeMu.Lock()
		r.closed = true
		r.probeMu.Unlock()
		if r.probeSub != nil {
			_ = r.probeSub.Unsubscribe() // fails only on a closed connection
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err = r.publish(ctx, StatusLeaving); err == nil {
			err = r.nc.FlushWithContext(ctx)
		}
	})
	return err
}
