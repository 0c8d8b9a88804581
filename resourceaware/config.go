package resourceaware

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Defaults from the original specification.
const (
	DefaultCPUThresholdPercent    = 90.0
	DefaultMemoryThresholdPercent = 90.0
	DefaultMaxActiveConnections   = 10_000
	DefaultLatencyCeiling         = time.Second
	DefaultStaleness              = 30 * time.Second
	DefaultNeutralScore           = 0.5

	DefaultSlowStartAggression = 1.0 // a linear ramp
	DefaultSlowStartMinShare   = 0.1 // Envoy's min_weight_percent of 10 %
)

// Weights are the coefficients of the composite health score. Unlike
// Config's fields, a zero weight is not a default: it leaves its term out
// of the score (Config.Weights nil means DefaultWeights).
type Weights struct {
	CPU         float64 // 0.3 in DefaultWeights
	Memory      float64 // 0.3 in DefaultWeights
	Connections float64 // 0.2 in DefaultWeights
	Latency     float64 // 0.2 in DefaultWeights
}

// DefaultWeights returns 0.3/0.3/0.2/0.2.
func DefaultWeights() Weights {
	return Weights{CPU: 0.3, Memory: 0.3, Connections: 0.2, Latency: 0.2}
}

// Config configures a Balancer. Zero fields mean their defaults.
type Config struct {
	// CPUThresholdPercent excludes nodes whose fresh report shows more CPU
	// usage. 0 means 90; otherwise in (0, 100].
	CPUThresholdPercent float64
	// MemoryThresholdPercent excludes nodes whose fresh report shows more
	// memory usage. 0 means 90; otherwise in (0, 100].
	MemoryThresholdPercent float64
	// MaxActiveConnections excludes nodes reporting more connections; the
	// connections term of the score reaches 0 there. 0 means 10,000.
	MaxActiveConnections int64
	// LatencyCeiling is the average latency at which the latency term of the
	// score reaches 0. 0 means 1 s.
	LatencyCeiling time.Duration
	// Staleness is how old (by receive time) a report may be before the node
	// counts as neutral. 0 means 30 s.
	Staleness time.Duration
	// NeutralScore is the score of a node with no fresh report. 0 means 0.5;
	// otherwise in (0, 1].
	NeutralScore float64
	// Weights of the score terms; nil means DefaultWeights(). Each must be
	// >= 0 and at least one > 0.
	Weights *Weights

	// Hysteresis. A node excluded for a fresh report above a threshold stays
	// excluded ("recovering") until a report shows that value at or below
	// the threshold minus its margin: with threshold 90 and margin 5, it is
	// excluded at 90.001, still at 88 and 85.001, readmitted at 85. (At or
	// below, so that margin 0 is exactly the seed's rule: readmitted as soon
	// as the value is at or below the threshold.) A node whose report goes
	// stale, or that is forgotten, starts again without it.

	// CPUMarginPercent is the CPU margin in percentage points. 0 means
	// none; otherwise in (0, CPUThresholdPercent).
	CPUMarginPercent float64
	// MemoryMarginPercent is the memory margin in percentage points. 0
	// means none; otherwise in (0, MemoryThresholdPercent).
	MemoryMarginPercent float64
	// ConnectionsMargin is the active-connections margin. 0 means none;
	// otherwise in (0, MaxActiveConnections).
	ConnectionsMargin int64

	// Slow start (Envoy's is the anchor). A node that joins (its first
	// report or the Add that makes it known), or that comes back (its first
	// report after Forget, or a report when its last sign of life is older
	// than Staleness) has its selection weight multiplied by
	//
	//	max(SlowStartMinShare, (t/SlowStartWindow)^(1/SlowStartAggression))
	//
	// t after it joined, until t reaches SlowStartWindow.
	//
	// How exact: the multiplier a selection uses is recomputed each time the
	// ramp has risen by 0.01 (at most 100 times a window, whatever the
	// aggression; each an O(log n) re-weighing of that node alone, done by
	// the first report or selection after it is due), so it is never above
	// the ramp at the time of the selection and at most 0.01 below it.

	// SlowStartWindow is how long a ramp lasts. 0 means no slow start, the
	// seed's behaviour; otherwise > 0.
	SlowStartWindow time.Duration
	// SlowStartAggression shapes the ramp: 1 is linear, above 1 rises
	// faster early, below 1 later. 0 means 1; otherwise a finite number > 0.
	SlowStartAggression float64
	// SlowStartMinShare is the smallest multiplier a ramp applies. 0 means
	// 0.1; otherwise in (0, 1].
	SlowStartMinShare float64

	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand is the random source; nil means ChaCha8 generators seeded from
	// crypto/rand. An injected source is used under a mutex.
	Rand rand.Source
}

// DefaultConfig returns the configuration with every default filled in.
func DefaultConfig() Config {
	w := DefaultWeights()
	return Config{
		CPUThresholdPercent:    DefaultCPUThresholdPercent,
		MemoryThresholdPercent: DefaultMemoryThresholdPercent,
		MaxActiveConnections:   DefaultMaxActiveConnections,
		LatencyCeiling:         DefaultLatencyCeiling,
		Staleness:              DefaultStaleness,
		NeutralScore:           DefaultNeutralScore,
		Weights:                &w,
		SlowStartAggression:    DefaultSlowStartAggression, // used only with a SlowStartWindow
		SlowStartMinShare:      DefaultSlowStartMinShare,   // likewise
	}
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	percent := func(name string, v float64) {
		if v != 0 && !(v > 0 && v <= 100) {
			errs = append(errs, fmt.Errorf("resourceaware: %s = %v, want a percentage in (0, 100] (0 means 90)", name, v))
		}
	}
	percent("CPUThresholdPercent", c.CPUThresholdPercent)
	percent("MemoryThresholdPercent", c.MemoryThresholdPercent)
	if c.MaxActiveConnections < 0 {
		errs = append(errs, fmt.Errorf("resourceaware: MaxActiveConnections = %d, want > 0 (0 means %d)", c.MaxActiveConnections, DefaultMaxActiveConnections))
	}
	if c.LatencyCeiling < 0 {
		errs = append(errs, fmt.Errorf("resourceaware: LatencyCeiling = %v, want > 0 (0 means %v)", c.LatencyCeiling, DefaultLatencyCeiling))
	}
	if c.Staleness < 0 {
		errs = append(errs, fmt.Errorf("resourceaware: Staleness = %v, want > 0 (0 means %v)", c.Staleness, DefaultStaleness))
	}
	if c.NeutralScore != 0 && !(c.NeutralScore > 0 && c.NeutralScore <= 1) {
		errs = append(errs, fmt.Errorf("resourceaware: NeutralScore = %v, want (0, 1] (0 means %v)", c.NeutralScore, DefaultNeutralScore))
	}
	margin := func(name string, v, threshold float64, thresholdName string) {
		if v != 0 && !(v > 0 && v < threshold) {
			errs = append(errs, fmt.Errorf("resourceaware: %s = %v, want 0 (none) or a margin in (0, %v) (%s)", name, v, threshold, thresholdName))
		}
	}
	margin("CPUMarginPercent", c.CPUMarginPercent, cmp.Or(c.CPUThresholdPercent, DefaultCPUThresholdPercent), "CPUThresholdPercent")
	margin("MemoryMarginPercent", c.MemoryMarginPercent, cmp.Or(c.MemoryThresholdPercent, DefaultMemoryThresholdPercent), "MemoryThresholdPercent")
	if maxConns := cmp.Or(c.MaxActiveConnections, DefaultMaxActiveConnections); c.ConnectionsMargin < 0 || c.ConnectionsMargin > 0 && c.ConnectionsMargin >= maxConns {
		errs = append(errs, fmt.Errorf("resourceaware: ConnectionsMargin = %d, want 0 (none) or a margin in (0, %d) (MaxActiveConnections)", c.ConnectionsMargin, maxConns))
	}
	if c.SlowStartWindow < 0 {
		errs = append(errs, fmt.Errorf("resourceaware: SlowStartWindow = %v, want 0 (off) or > 0", c.SlowStartWindow))
	}
	if a := c.SlowStartAggression; a != 0 && !(a > 0 && !math.IsInf(a, 1)) {
		errs = append(errs, fmt.Errorf("resourceaware: SlowStartAggression = %v, want a finite number > 0 (0 means %v)", a, DefaultSlowStartAggression))
	}
	if m := c.SlowStartMinShare; m != 0 && !(m > 0 && m <= 1) {
		errs = append(errs, fmt.Errorf("resourceaware: SlowStartMinShare = %v, want (0, 1] (0 means %v)", m, DefaultSlowStartMinShare))
	}
	if w := c.Weights; w != nil {
		sum := 0.0
		for _, t := range []struct {
			name string
			v    float64
		}{{"CPU", w.CPU}, {"Memory", w.Memory}, {"Connections", w.Connections}, {"Latency", w.Latency}} {
			if math.IsNaN(t.v) || math.IsInf(t.v, 0) || t.v < 0 {
				errs = append(errs, fmt.Errorf("resourceaware: Weights.%s = %v, want a finite number >= 0", t.name, t.v))
			} else {
				sum += t.v
			}
		}
		if sum == 0 {
			errs = append(errs, errors.New("resourceaware: all score weights are zero; at least one must be > 0"))
		}
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	c.CPUThresholdPercent = cmp.Or(c.CPUThresholdPercent, d.CPUThresholdPercent)
	c.MemoryThresholdPercent = cmp.Or(c.MemoryThresholdPercent, d.MemoryThresholdPercent)
	c.MaxActiveConnections = cmp.Or(c.MaxActiveConnections, d.MaxActiveConnections)
	c.LatencyCeiling = cmp.Or(c.LatencyCeiling, d.LatencyCeiling)
	c.Staleness = cmp.Or(c.Staleness, d.Staleness)
	c.NeutralScore = cmp.Or(c.NeutralScore, d.NeutralScore)
	c.SlowStartAggression = cmp.Or(c.SlowStartAggression, d.SlowStartAggression)
	c.SlowStartMinShare = cmp.Or(c.SlowStartMinShare, d.SlowStartMinShare)
	if c.Weights == nil {
		c.Weights = d.Weights
	} else {
		w := *c.Weights // keep our own copy: the caller's may change
		c.Weights = &w
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
