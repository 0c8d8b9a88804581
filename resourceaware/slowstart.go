package resourceaware

import (
	"math"
	"time"
)

// rampStep is how far the exact ramp may run ahead of the multiplier that
// selections use: a ramping node is re-weighted each time its ramp has risen
// by this much (at most 1/rampStep = 100 times a window), so a pick uses a
// multiplier m with f(now) − rampStep < m ≤ f(now), whatever the aggression.
// Steps are spaced by value, not time: with a time step of window/100 an
// aggression of 10 would jump from the floor to 0.63 in the first step.
const rampStep = 0.01

// ramp returns the slow start multiplier t after a node joined, when the
// multiplier must next be recomputed (as time since it joined) and whether
// the ramp is over (t >= SlowStartWindow: multiplier 1, nothing to
// recompute).
func (c *Config) ramp(t time.Duration) (f float64, next time.Duration, done bool) {
	w := c.SlowStartWindow
	if t >= w {
		return 1, 0, true
	}
	t = max(t, 0)
	a := c.SlowStartAggression
	f = max(c.SlowStartMinShare, math.Pow(float64(t)/float64(w), 1/a))
	if g := f + rampStep; g >= 1 {
		next = w
	} else {
		next = time.Duration(math.Ceil(float64(w) * math.Pow(g, a))) // f(next) = g
	}
	return f, max(next, t+1), false
}
