package resourceaware

import (
	"fmt"
	"math"
	"time"
)

// Node statuses a report may carry.
const (
	StatusUp       = "up"       // the default: takes picks
	StatusDraining = "draining" // gets no pick while another node exists
)

// MaxWeight bounds a report's weight.
const MaxWeight = 1000.0

// MaxIDLength bounds a node id in bytes.
const MaxIDLength = 256

// Report is one health report of a node.
type Report struct {
	CPUUsage          float64       // percent, 0–100
	MemoryUsage       float64       // percent, 0–100
	ActiveConnections int64         // >= 0
	AvgLatency        time.Duration // >= 0
	Weight            float64       // selection multiplier; 0 means 1, else (0, MaxWeight]
	Status            string        // "" or StatusUp, or StatusDraining

	// Received is when the report arrived, on the Balancer's clock (Config.Now);
	// zero means when the Balancer takes it, and a time after that counts as
	// then. A report received before the one the node holds is ignored, so
	// the newest report wins whatever order reports are handed in.
	Received time.Time
}

// Validate returns an error wrapping ErrInvalidReport for NaN, infinite,
// negative or out-of-range values and unknown statuses.
func (r Report) Validate() error {
	switch {
	case !(r.CPUUsage >= 0 && r.CPUUsage <= 100):
		return fmt.Errorf("%w: cpu_usage %v is not a percentage in [0, 100]", ErrInvalidReport, r.CPUUsage)
	case !(r.MemoryUsage >= 0 && r.MemoryUsage <= 100):
		return fmt.Errorf("%w: memory_usage %v is not a percentage in [0, 100]", ErrInvalidReport, r.MemoryUsage)
	case r.ActiveConnections < 0:
		return fmt.Errorf("%w: active_connections %d is negative", ErrInvalidReport, r.ActiveConnections)
	case r.AvgLatency < 0:
		return fmt.Errorf("%w: avg_latency %v is negative", ErrInvalidReport, r.AvgLatency)
	case r.Weight != 0 && !(r.Weight > 0 && r.Weight <= MaxWeight):
		return fmt.Errorf("%w: weight %v is not in (0, %v]", ErrInvalidReport, r.Weight, MaxWeight)
	case r.Status != "" && r.Status != StatusUp && r.Status != StatusDraining:
		return fmt.Errorf("%w: status %q is not %q or %q", ErrInvalidReport, r.Status, StatusUp, StatusDraining)
	}
	return nil
}

func (r Report) weight() float64 {
	if r.Weight == 0 {
		return 1
	}
	return r.Weight
}

// score is the composite health score in [0, 1], before the node's weight.
func (c *Config) score(r Report) float64 {
	w := c.Weights
	return w.CPU*(100-r.CPUUsage)/100 +
		w.Memory*(100-r.MemoryUsage)/100 +
		w.Connections*math.Max(0, 1-float64(r.ActiveConnections)/float64(c.MaxActiveConnections)) +
		w.Latency*math.Max(0, 1-float64(r.AvgLatency)/float64(c.LatencyCeiling))
}

// overload says which threshold a fresh report is above.
type overload uint8

const (
	underLimits overload = iota
	overCPU
	overMemory
	overConnections
)

// exclusion returns which threshold a fresh report is above, if any.
func (c *Config) exclusion(r Report) overload {
	switch {
	case r.CPUUsage > c.CPUThresholdPercent:
		return overCPU
	case r.MemoryUsage > c.MemoryThresholdPercent:
		return overMemory
	case r.ActiveConnections > c.MaxActiveConnections:
		return overConnections
	}
	return underLimits
}

// overloads is a set of thresholds (bit 1<<overCPU and so on).
type overloads uint8

func (s overloads) has(o overload) bool { return s&(1<<o) != 0 }

// held returns the thresholds that exclude a node whose fresh report is r,
// given those that excluded it before (hysteresis): a value above its
// threshold excludes; a value that excluded before keeps excluding while it
// is above the threshold minus its margin. With every margin 0 this is
// exactly the seed's rule (exclusion).
func (c *Config) held(r Report, before overloads) overloads {
	var h overloads
	if r.CPUUsage > c.CPUThresholdPercent || before.has(overCPU) && r.CPUUsage > c.CPUThresholdPercent-c.CPUMarginPercent {
		h |= 1 << overCPU
	}
	if r.MemoryUsage > c.MemoryThresholdPercent || before.has(overMemory) && r.MemoryUsage > c.MemoryThresholdPercent-c.MemoryMarginPercent {
		h |= 1 << overMemory
	}
	if r.ActiveConnections > c.MaxActiveConnections || before.has(overConnections) && r.ActiveConnections > c.MaxActiveConnections-c.ConnectionsMargin {
		h |= 1 << overConnections
	}
	return h
}

// reason says why a node whose fresh report is r and that the thresholds h
// exclude is excluded: the seed's text for a value above its threshold, else
// "recovering: " and the value that hysteresis still holds against.
func (c *Config) reason(r Report, h overloads) string {
	if o := c.exclusion(r); o != underLimits {
		return c.describe(o, r)
	}
	switch {
	case h.has(overCPU):
		return fmt.Sprintf("recovering: cpu %.1f%% > %.1f%%", r.CPUUsage, c.CPUThresholdPercent-c.CPUMarginPercent)
	case h.has(overMemory):
		return fmt.Sprintf("recovering: memory %.1f%% > %.1f%%", r.MemoryUsage, c.MemoryThresholdPercent-c.MemoryMarginPercent)
	case h.has(overConnections):
		return fmt.Sprintf("recovering: connections %d > %d", r.ActiveConnections, c.MaxActiveConnections-c.ConnectionsMargin)
	}
	return ""
}

// describe says why a report is excluded, for status pages.
func (c *Config) describe(o overload, r Report) string {
	switch o {
	case overCPU:
		return fmt.Sprintf("cpu %.1f%% > %.1f%%", r.CPUUsage, c.CPUThresholdPercent)
	case overMemory:
		return fmt.Sprintf("memory %.1f%% > %.1f%%", r.MemoryUsage, c.MemoryThresholdPercent)
	case overConnections:
		return fmt.Sprintf("connections %d > %d", r.ActiveConnections, c.MaxActiveConnections)
	}
	return ""
}
