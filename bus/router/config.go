package router

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/natsroute/natsroute/bus"

	"github.com/natsroute/natsroute/resourceaware"
	"github.com/natsroute/natsroute/ring"
)

// Defaults of Config.
const (
	DefaultMemberTTL     = 60 * time.Second
	DefaultCoalesce      = 5 * time.Millisecond
	DefaultResync        = 5 * time.Second
	DefaultDrainTimeout  = 5 * time.Second
	DefaultMaxKeyBytes   = 1024
	DefaultMaxCandidates = 1000
	DefaultMaxBatch      = 1000
	DefaultMaxCount      = 32
	DefaultKVReplicas    = 1
	DefaultHealthPending = 1 << 20 // messages buffered for health.* before drops
	DefaultMaxPools      = 1000
	DefaultShedInterval  = time.Second
	// Liveness (DESIGN.md): a probing node silent for 1.45 × its interval
	// is probed (so that one killed right after a report is out within 1.5
	// intervals, its probe's round trip included; 1.5 measured 1.502 s at
	// 1 s reports); a probe waits 500 ms (a round trip here is ~0.2 ms, a loaded
	// server's a few ms: 500 ms is a hung process, not a busy one); two
	// timeouts in a row are down (one lost message is not); at most 1,000
	// probes a second, so 10,000 members late together (a blip) are probed
	// over 10 s rather than at once; feedback past 1,000 messages a second
	// is dropped.
	DefaultProbeMissFactor = 1.45
	DefaultProbeTimeout    = 500 * time.Millisecond
	DefaultProbeTimeouts   = 2
	DefaultProbeRate       = 1000.0
	DefaultFeedbackRate    = 1000.0

	// Ejection (gray failure; Envoy's outlier detection is the anchor).
	DefaultEjectFailures   = 5
	DefaultEjectCallers    = 2
	DefaultEjectWindow     = 10 * time.Second
	DefaultEjectTime       = 30 * time.Second
	DefaultEjectMaxTime    = 5 * time.Minute
	DefaultEjectMaxPercent = 10.0
	maxPools               = 100_000
	maxKVReplicas          = 5
	maxLimit               = 1 << 20
)

// Limits bound what one request may ask for. Zero fields mean the default.
type Limits struct {
	MaxKeyBytes   int // longest key, in bytes (default 1024)
	MaxCandidates int // most candidates in a request (default 1000)
	MaxBatch      int // most keys in a batch (default 1000)
	MaxCount      int // largest count (default 32)
}

// Config configures a Router. Zero fields mean their defaults.
type Config struct {
	// Bucket is the JetStream KV bucket of the ring (default "natsroute").
	Bucket string
	// KVReplicas is the bucket's replica count when the router creates it
	// (default 1; 3 on a JetStream cluster).
	KVReplicas int
	// QueueGroup is shared by router replicas on route.* (default "natsroute").
	QueueGroup string
	// VirtualNodes is the points per unit weight of a new ring document
	// (default 150). An existing document keeps its own.
	VirtualNodes int
	// MemberTTL is how long a member stays on the ring without reporting
	// (default 60 s).
	MemberTTL time.Duration
	// Coalesce is the ring write window: a lone change is written at once,
	// and the rest of a burst waits at most Coalesce and gathers into the
	// next write (default 5 ms). Writes are at least Coalesce less 1 ms
	// apart: the writer rounds its sleep down to whole milliseconds, since
	// Go's timers fire up to 1 ms late in an idle process.
	Coalesce time.Duration
	// Resync is how often the router re-reads the ring from the bucket in
	// case its watch missed an update (default 5 s).
	Resync time.Duration
	// DrainTimeout bounds how long Close waits for in-flight requests
	// (default 5 s).
	DrainTimeout time.Duration
	// MaxPools bounds the pools one router serves (default 1,000); a report
	// naming a new pool past it is rejected (reason too_many_pools).
	MaxPools int
	// BalanceFactor turns on load-aware ConsistentHash: a member whose
	// reported active_connections per unit weight exceed BalanceFactor × the
	// pool's mean sheds part of its keys to the next members (ring document
	// format 2). 0 (the default) is off; otherwise above 1, at most 10.
	BalanceFactor float64
	// ShedInterval is how often shed fractions are recomputed and, if they
	// changed, written (default 1 s).
	ShedInterval time.Duration
	// ProbeMissFactor: a node whose reports say probe and interval_ms is
	// probed after ProbeMissFactor × interval without a report (default
	// 1.45; 1.1 to 10).
	ProbeMissFactor float64
	// ProbeTimeout is how long a probe waits for its answer (default 500
	// ms; 10 ms to 10 s).
	ProbeTimeout time.Duration
	// ProbeTimeouts is how many probes in a row must time out for a node to
	// be down (default 2; 1 to 10). No responders is down at once.
	ProbeTimeouts int
	// ProbeRate bounds the probes this router sends, per second (default
	// 1,000; up to 100,000).
	ProbeRate float64
	// FeedbackRate bounds the route.feedback messages this router handles,
	// per second (default 1,000; up to 100,000); the rest are counted and
	// dropped.
	FeedbackRate float64
	// EjectFailures failures from EjectCallers distinct callers within
	// EjectWindow, against a node that still answers probes (or does not
	// probe), eject it from the pool for EjectTime, twice as long on each
	// ejection in a row, up to EjectMaxTime (defaults 5, 2, 10 s, 30 s,
	// 5 min).
	EjectFailures int
	EjectCallers  int
	EjectWindow   time.Duration
	EjectTime     time.Duration
	EjectMaxTime  time.Duration
	// EjectMaxPercent caps the share of a pool that ejections hold at once
	// (default 10; at least one node may always be ejected, as in Envoy);
	// 0 turns ejection off.
	EjectMaxPercent float64
	// NoLegacyDocument stops writing each pool's whole format-1/2 document
	// (ring, ring.<pool>) beside its member keys. The router always writes
	// and answers from the member keys (pools.<pool>, members.<pool>.<node>;
	// DESIGN.md, "one key per member"); the document is a mirror for
	// routers and RingCaches of earlier releases, which read nothing else.
	// The zero value writes it (CLI --legacy-document, default on); turn
	// it off once every router and cache is of this release (README,
	// "Upgrading to one key per member").
	NoLegacyDocument bool
	// Balancer configures ResourceAware (thresholds, weights, staleness).
	Balancer resourceaware.Config
	// Limits bound requests.
	Limits Limits
	// Logger receives the router's logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
	// OnRequest, if set, is called after each route.request with the
	// strategy ("unknown" if none was chosen), the code (200, 400, 503,
	// 500) and the time taken; metrics hang here.
	OnRequest func(strategy string, code int, took time.Duration)
}

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{
		Bucket:       bus.DefaultBucket,
		KVReplicas:   DefaultKVReplicas,
		QueueGroup:   bus.DefaultQueueGroup,
		VirtualNodes: ring.DefaultVirtualNodes,
		MemberTTL:    DefaultMemberTTL,
		Coalesce:     DefaultCoalesce,
		Resync:       DefaultResync,
		DrainTimeout: DefaultDrainTimeout,
		MaxPools:     DefaultMaxPools,
		ShedInterval: DefaultShedInterval,

		ProbeMissFactor: DefaultProbeMissFactor,
		ProbeTimeout:    DefaultProbeTimeout,
		ProbeTimeouts:   DefaultProbeTimeouts,
		ProbeRate:       DefaultProbeRate,
		FeedbackRate:    DefaultFeedbackRate,
		EjectFailures:   DefaultEjectFailures,
		EjectCallers:    DefaultEjectCallers,
		EjectWindow:     DefaultEjectWindow,
		EjectTime:       DefaultEjectTime,
		EjectMaxTime:    DefaultEjectMaxTime,
		EjectMaxPercent: DefaultEjectMaxPercent,

		Balancer: resourceaware.DefaultConfig(),
		Limits: Limits{
			MaxKeyBytes:   DefaultMaxKeyBytes,
			MaxCandidates: DefaultMaxCandidates,
			MaxBatch:      DefaultMaxBatch,
			MaxCount:      DefaultMaxCount,
		},
	}
}

var (
	tokenRE = regexp.MustCompile(`^[^.*>\s]+$`)
)

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("router: "+format, args...)) }
	if c.Bucket != "" && bus.ValidateBucketName(c.Bucket) != nil {
		add("Bucket %q: a KV bucket name is [a-zA-Z0-9_-]+", c.Bucket)
	}
	if c.KVReplicas < 0 || c.KVReplicas > maxKVReplicas {
		add("KVReplicas = %d, want 1 to %d (0 means %d)", c.KVReplicas, maxKVReplicas, DefaultKVReplicas)
	}
	if c.QueueGroup != "" && !tokenRE.MatchString(c.QueueGroup) {
		add("QueueGroup %q: no dots, wildcards or spaces", c.QueueGroup)
	}
	if c.VirtualNodes < 0 || c.VirtualNodes > ring.MaxVirtualNodes {
		add("VirtualNodes = %d, want 1 to %d (0 means %d)", c.VirtualNodes, ring.MaxVirtualNodes, ring.DefaultVirtualNodes)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
		def  time.Duration
	}{
		{"MemberTTL", c.MemberTTL, DefaultMemberTTL},
		{"Coalesce", c.Coalesce, DefaultCoalesce},
		{"Resync", c.Resync, DefaultResync},
		{"DrainTimeout", c.DrainTimeout, DefaultDrainTimeout},
		{"ShedInterval", c.ShedInterval, DefaultShedInterval},
	} {
		if d.v < 0 {
			add("%s = %v, want > 0 (0 means %v)", d.name, d.v, d.def)
		}
	}
	if c.MaxPools < 0 || c.MaxPools > maxPools {
		add("MaxPools = %d, want 1 to %d (0 means %d)", c.MaxPools, maxPools, DefaultMaxPools)
	}
	if c.BalanceFactor != 0 && !(c.BalanceFactor > 1 && c.BalanceFactor <= ring.MaxBalanceFactor) {
		add("BalanceFactor = %v, want 0 (off) or above 1 and at most %v (e.g. 1.25: no member above 1.25 × the mean load)", c.BalanceFactor, ring.MaxBalanceFactor)
	}
	if c.ProbeMissFactor != 0 && !(c.ProbeMissFactor >= 1.1 && c.ProbeMissFactor <= 10) {
		add("ProbeMissFactor = %v, want 1.1 to 10 (0 means %v): a node is probed after this many report intervals of silence", c.ProbeMissFactor, DefaultProbeMissFactor)
	}
	if c.ProbeTimeout != 0 && !(c.ProbeTimeout >= 10*time.Millisecond && c.ProbeTimeout <= 10*time.Second) {
		add("ProbeTimeout = %v, want 10ms to 10s (0 means %v)", c.ProbeTimeout, DefaultProbeTimeout)
	}
	if c.ProbeTimeouts < 0 || c.ProbeTimeouts > 10 {
		add("ProbeTimeouts = %d, want 1 to 10 (0 means %d)", c.ProbeTimeouts, DefaultProbeTimeouts)
	}
	for _, f := range []struct {
		name string
		v    float64
		def  float64
	}{{"ProbeRate", c.ProbeRate, DefaultProbeRate}, {"FeedbackRate", c.FeedbackRate, DefaultFeedbackRate}} {
		if f.v != 0 && !(f.v >= 1 && f.v <= 100_000) {
			add("%s = %v, want 1 to 100000 a second (0 means %v)", f.name, f.v, f.def)
		}
	}
	if c.EjectFailures < 0 || c.EjectFailures > 1000 {
		add("EjectFailures = %d, want 1 to 1000 (0 means %d)", c.EjectFailures, DefaultEjectFailures)
	}
	if c.EjectCallers < 0 || c.EjectCallers > 100 {
		add("EjectCallers = %d, want 1 to 100 (0 means %d)", c.EjectCallers, DefaultEjectCallers)
	}
	if c.EjectCallers > cmp.Or(c.EjectFailures, DefaultEjectFailures) {
		add("EjectCallers = %d is more than the failures that eject (%d): no node could ever be ejected", c.EjectCallers, cmp.Or(c.EjectFailures, DefaultEjectFailures))
	}
	if c.EjectWindow != 0 && !(c.EjectWindow >= 100*time.Millisecond && c.EjectWindow <= 10*time.Minute) {
		add("EjectWindow = %v, want 100ms to 10m (0 means %v)", c.EjectWindow, DefaultEjectWindow)
	}
	if c.EjectTime != 0 && !(c.EjectTime >= time.Second && c.EjectTime <= time.Hour) {
		add("EjectTime = %v, want 1s to 1h (0 means %v)", c.EjectTime, DefaultEjectTime)
	}
	if c.EjectMaxTime != 0 && !(c.EjectMaxTime >= cmp.Or(c.EjectTime, DefaultEjectTime) && c.EjectMaxTime <= bus.MaxEjectionSeconds*time.Second) {
		add("EjectMaxTime = %v, want the first ejection's time (%v) to 24h (0 means %v)", c.EjectMaxTime, cmp.Or(c.EjectTime, DefaultEjectTime), DefaultEjectMaxTime)
	}
	if !(c.EjectMaxPercent >= 0 && c.EjectMaxPercent <= 100) {
		add("EjectMaxPercent = %v, want 0 (no ejection) to 100", c.EjectMaxPercent)
	}
	if c.Coalesce > time.Second {
		add("Coalesce = %v, want at most 1s: membership changes would wait that long", c.Coalesce)
	}
	for _, l := range []struct {
		name string
		v    int
	}{
		{"MaxKeyBytes", c.Limits.MaxKeyBytes},
		{"MaxCandidates", c.Limits.MaxCandidates},
		{"MaxBatch", c.Limits.MaxBatch},
		{"MaxCount", c.Limits.MaxCount},
	} {
		if l.v < 0 || l.v > maxLimit {
			add("Limits.%s = %d, want 1 to %d (0 means the default)", l.name, l.v, maxLimit)
		}
	}
	if err := c.Balancer.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	c.Bucket = cmp.Or(c.Bucket, d.Bucket)
	c.QueueGroup = cmp.Or(c.QueueGroup, d.QueueGroup)
	c.KVReplicas = cmp.Or(c.KVReplicas, d.KVReplicas)
	c.VirtualNodes = cmp.Or(c.VirtualNodes, d.VirtualNodes)
	c.MemberTTL = cmp.Or(c.MemberTTL, d.MemberTTL)
	c.Coalesce = cmp.Or(c.Coalesce, d.Coalesce)
	c.Resync = cmp.Or(c.Resync, d.Resync)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, d.DrainTimeout)
	c.MaxPools = cmp.Or(c.MaxPools, d.MaxPools)
	c.ShedInterval = cmp.Or(c.ShedInterval, d.ShedInterval)
	c.ProbeMissFactor = cmp.Or(c.ProbeMissFactor, d.ProbeMissFactor)
	c.ProbeTimeout = cmp.Or(c.ProbeTimeout, d.ProbeTimeout)
	c.ProbeTimeouts = cmp.Or(c.ProbeTimeouts, d.ProbeTimeouts)
	c.ProbeRate = cmp.Or(c.ProbeRate, d.ProbeRate)
	c.FeedbackRate = cmp.Or(c.FeedbackRate, d.FeedbackRate)
	c.EjectFailures = cmp.Or(c.EjectFailures, d.EjectFailures)
	c.EjectCallers = cmp.Or(c.EjectCallers, d.EjectCallers)
	c.EjectWindow = cmp.Or(c.EjectWindow, d.EjectWindow)
	c.EjectTime = cmp.Or(c.EjectTime, d.EjectTime)
	c.EjectMaxTime = cmp.Or(c.EjectMaxTime, d.EjectMaxTime)
	c.Limits.MaxKeyBytes = cmp.Or(c.Limits.MaxKeyBytes, d.Limits.MaxKeyBytes)
	c.Limits.MaxCandidates = cmp.Or(c.Limits.MaxCandidates, d.Limits.MaxCandidates)
	c.Limits.MaxBatch = cmp.Or(c.Limits.MaxBatch, d.Limits.MaxBatch)
	c.Limits.MaxCount = cmp.Or(c.Limits.MaxCount, d.Limits.MaxCount)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Balancer.Now == nil {
		c.Balancer.Now = c.Now
	}
	return c
}
