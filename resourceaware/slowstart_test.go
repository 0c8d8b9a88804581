package resourceaware

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// exactRamp is the slow start multiplier t after a node joined.
func exactRamp(cfg Config, t time.Duration) float64 {
	if t >= cfg.SlowStartWindow {
		return 1
	}
	return math.Max(cfg.SlowStartMinShare, math.Pow(float64(t)/float64(cfg.SlowStartWindow), 1/cfg.SlowStartAggression))
}

// TestSlowStart follows the multiplier of one node over its window, for
// joins by report and by Add, returns after going stale and after leaving,
// with an injected clock: at every step the multiplier a selection uses is
// at most the exact ramp and at most rampStep below it.
func TestSlowStart(t *testing.T) {
	const window = 30 * time.Second
	type step struct {
		at     time.Duration // on the clock, since the test began
		action string        // "report", "add", "forget" or "" (just look)
		ramp   time.Duration // how long the node has ramped, −1 if it does not
	}
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"report joins, linear", Config{}, []step{
			{0, "report", 0},                               // window start: the floor, 0.1
			{time.Second, "", time.Second},                 // still the floor (1/30 < 0.1)
			{15 * time.Second, "report", 15 * time.Second}, // the middle: 0.5
			{29 * time.Second, "", 29 * time.Second},
			{30 * time.Second, "", -1}, // the end: full share
			{40 * time.Second, "report", -1},
		}},
		{"aggression 2 rises early", Config{SlowStartAggression: 2}, []step{
			{0, "report", 0},
			{7500 * time.Millisecond, "", 7500 * time.Millisecond}, // √¼ = 0.5
			{window, "", -1},
		}},
		{"aggression 0.5 rises late, floor 0.3", Config{SlowStartAggression: 0.5, SlowStartMinShare: 0.3}, []step{
			{0, "report", 0},
			{15 * time.Second, "", 15 * time.Second}, // max(0.3, ¼)
			{25 * time.Second, "", 25 * time.Second},
			{window, "", -1},
		}},
		{"Add joins; the first report does not restart", Config{}, []step{
			{0, "add", 0},
			{5 * time.Second, "report", 5 * time.Second},
			{20 * time.Second, "report", 20 * time.Second},
			{window, "", -1},
		}},
		{"first report long after Add restarts", Config{}, []step{
			{0, "add", 0},
			{window, "", -1},
			{100 * time.Second, "report", 0},
			{110 * time.Second, "", 10 * time.Second},
		}},
		{"return after stale", Config{}, []step{
			{0, "report", 0},
			{window, "report", -1},
			{window + 30*time.Second, "", -1},      // exactly Staleness old: fresh
			{window + 30*time.Second + 1, "", -1},  // stale: neutral, full share
			{window + 40*time.Second, "report", 0}, // back: ramps again
			{window + 55*time.Second, "report", 15 * time.Second},
		}},
		{"return after leaving", Config{}, []step{
			{0, "report", 0},
			{window, "report", -1},
			{window + time.Second, "forget", -1},
			{window + 2*time.Second, "report", 0},
			{window + 12*time.Second, "", 10 * time.Second},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.SlowStartWindow = window
			b, clk := newTest(t, cfg)
			full := b.cfg // with defaults
			start := clk.Now()
			report(t, b, "peer", healthy)
			for i, s := range tt.steps {
				clk.Advance(start.Add(s.at).Sub(clk.Now()))
				report(t, b, "peer", healthy) // the peer stays fresh; its own ramp is over after the first window
				switch s.action {
				case "report":
					report(t, b, "x", healthy)
				case "add":
					if err := b.Add("x"); err != nil {
						t.Fatal(err)
					}
				case "forget":
					b.Forget("x")
				}
				var st NodeState
				for _, n := range b.Nodes() {
					if n.ID == "x" {
						st = n
					}
				}
				if s.action == "forget" {
					if st.ID != "" {
						t.Fatalf("step %d: x still known after Forget", i)
					}
					continue
				}
				want := 1.0
				if s.ramp >= 0 {
					want = exactRamp(full, s.ramp)
				}
				if st.SlowStart > want || st.SlowStart < want-rampStep-1e-12 {
					t.Fatalf("step %d (%v): multiplier %v, want in (%v, %v]", i, s.at, st.SlowStart, want-rampStep, want)
				}
				base := full.NeutralScore
				if st.HasReport && !st.Stale {
					base = full.score(healthy)
				}
				if math.Abs(st.Score-base*st.SlowStart) > 1e-12 {
					t.Fatalf("step %d: score %v, want %v × %v", i, st.Score, base, st.SlowStart)
				}
				if wantNote := st.SlowStart < 1; (st.Note != "") != wantNote {
					t.Fatalf("step %d: note %q with multiplier %v", i, st.Note, st.SlowStart)
				}
				if !st.Eligible {
					t.Fatalf("step %d: a ramping node is eligible, got %+v", i, st)
				}
			}
		})
	}
}

// TestSlowStartNote: the note says how much of its share a node gets.
func TestSlowStartNote(t *testing.T) {
	b, clk := newTest(t, Config{SlowStartWindow: 10 * time.Second})
	report(t, b, "x", healthy)
	clk.Advance(4 * time.Second)
	st := b.Nodes()[0]
	if st.SlowStart > 0.4 || st.SlowStart < 0.4-rampStep-1e-12 || st.Note != fmt.Sprintf("slow start: %.0f%% of its share", 100*st.SlowStart) {
		t.Fatalf("note %q, multiplier %v, want about 40%%", st.Note, st.SlowStart)
	}
	t.Logf("4 s into a 10 s window: %q", st.Note)
}

// TestRampSteps: the multiplier is recomputed at most 1/rampStep + 1 times
// a window, and between steps the exact ramp rises by at most rampStep
// (up to rounding), whatever the aggression.
func TestRampSteps(t *testing.T) {
	for _, a := range []float64{0.2, 0.5, 1, 2, 10} {
		cfg := Config{SlowStartWindow: time.Minute, SlowStartAggression: a}.withDefaults()
		steps, prev := 0, 0.0
		for t0 := time.Duration(0); ; steps++ {
			f, next, done := cfg.ramp(t0)
			if done {
				break
			}
			if f < prev || next <= t0 {
				t.Fatalf("aggression %v: at %v multiplier %v (before %v), next step %v", a, t0, f, prev, next)
			}
			if exact := exactRamp(cfg, next-1); exact-f > rampStep+1e-12 {
				t.Fatalf("aggression %v: from %v to %v the ramp rises from %v to %v, more than a step", a, t0, next, f, exact)
			}
			prev, t0 = f, next
		}
		if steps > int(1/rampStep)+1 {
			t.Fatalf("aggression %v: %d steps, want at most %d", a, steps, int(1/rampStep)+1)
		}
	}
}
