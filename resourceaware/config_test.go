package resourceaware

import (
	"math"
	"strings"
	"testing"
	"time"
)

// TestConfigValidateNew: the hysteresis and slow start fields are checked
// against their ranges (margins against the thresholds they belong to),
// every problem reported at once with its number.
func TestConfigValidateNew(t *testing.T) {
	ok := []Config{
		{CPUMarginPercent: 5, MemoryMarginPercent: 89.9, ConnectionsMargin: 9_999},
		{CPUThresholdPercent: 50, CPUMarginPercent: 49},
		{SlowStartWindow: time.Minute, SlowStartAggression: 0.01, SlowStartMinShare: 1},
		{SlowStartAggression: 3, SlowStartMinShare: 0.5}, // without a window: unused, still valid
	}
	for _, c := range ok {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	bad := Config{
		CPUThresholdPercent:  50,
		CPUMarginPercent:     50,
		MemoryMarginPercent:  -1,
		MaxActiveConnections: 100,
		ConnectionsMargin:    100,
		SlowStartWindow:      -time.Second,
		SlowStartAggression:  math.Inf(1),
		SlowStartMinShare:    1.5,
	}
	err := bad.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{
		"CPUMarginPercent = 50, want 0 (none) or a margin in (0, 50) (CPUThresholdPercent)",
		"MemoryMarginPercent = -1, want 0 (none) or a margin in (0, 90)",
		"ConnectionsMargin = 100, want 0 (none) or a margin in (0, 100)",
		"SlowStartWindow = -1s",
		"SlowStartAggression = +Inf",
		"SlowStartMinShare = 1.5, want (0, 1]",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	for _, c := range []Config{{CPUMarginPercent: math.NaN()}, {SlowStartAggression: math.NaN()}, {SlowStartMinShare: math.NaN()}, {SlowStartAggression: -1}} {
		if c.Validate() == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	d := DefaultConfig()
	if d.SlowStartWindow != 0 || d.SlowStartAggression != 1 || d.SlowStartMinShare != 0.1 || d.CPUMarginPercent != 0 || d.MemoryMarginPercent != 0 || d.ConnectionsMargin != 0 {
		t.Errorf("defaults %+v, want slow start and hysteresis off (aggression 1, min share 0.1)", d)
	}
}

// TestDefaultsUnchanged: with the new options at their defaults, a node that
// was excluded is readmitted as soon as it is back under its threshold and a
// node that just joined gets its full share, and picks follow the seed's
// score shares (chi-square, p = 0.001).
func TestDefaultsUnchanged(t *testing.T) {
	b, clk := newTest(t, DefaultConfig())
	report(t, b, "a", Report{CPUUsage: 10, MemoryUsage: 20, ActiveConnections: 100})
	report(t, b, "b", Report{CPUUsage: 95}) // excluded...
	clk.Advance(time.Second)
	report(t, b, "b", Report{CPUUsage: 89.5, MemoryUsage: 50}) // ...and readmitted at once
	report(t, b, "c", Report{CPUUsage: 40, MemoryUsage: 40, Weight: 2})
	if err := b.Add("d"); err != nil { // neutral, full share at once
		t.Fatal(err)
	}
	ids := []string{"a", "b", "c", "d"}
	cfg := DefaultConfig()
	w := []float64{
		cfg.score(Report{CPUUsage: 10, MemoryUsage: 20, ActiveConnections: 100}),
		cfg.score(Report{CPUUsage: 89.5, MemoryUsage: 50}),
		2 * cfg.score(Report{CPUUsage: 40, MemoryUsage: 40}),
		cfg.NeutralScore,
	}
	total := w[0] + w[1] + w[2] + w[3]
	p := make([]float64, len(w))
	for i := range w {
		p[i] = w[i] / total
	}
	for _, st := range b.Nodes() {
		if !st.Eligible || st.SlowStart != 1 || st.Note != "" || st.Recovering {
			t.Fatalf("%+v: want eligible at full share", st)
		}
	}
	// 3 degrees of freedom at p = 0.001.
	selectChiSquare(t, b, ids, p, 100_000, 16.266)
}
