package ring

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// smoothPool is a pool of many small keys: member i has demand[i] (its load
// with no shed), sheds f of it, and what it sheds spreads evenly over the
// others. It is the model ShedPolicy assumes; the lumpy case is
// TestShedSimulation's.
type smoothPool struct{ demand []float64 }

func (p smoothPool) reports(shed []float64) []MemberLoad {
	out := make([]MemberLoad, len(p.demand))
	for i, d := range p.demand {
		out[i] = MemberLoad{Load: d * (1 - shed[i]), Fresh: true, Shed: shed[i]}
	}
	for i, d := range p.demand {
		for j := range out {
			if j != i {
				out[j].Load += d * shed[i] / float64(len(p.demand)-1)
			}
		}
	}
	return out
}

// run feeds the policy its own output for rounds rounds and returns member
// 0's shed after each.
func (p smoothPool) run(t *testing.T, policy ShedPolicy, shed []float64, rounds int) []float64 {
	t.Helper()
	var trace []float64
	for range rounds {
		next := policy.Next(p.reports(shed))
		for i := 1; i < len(next); i++ {
			if next[i] != 0 {
				t.Fatalf("member %d, not overloaded, got shed %v", i, next[i])
			}
		}
		shed = next
		trace = append(trace, shed[0])
	}
	return trace
}

func hotPool(hot float64) smoothPool {
	d := []float64{hot}
	for range 9 {
		d = append(d, 100)
	}
	return smoothPool{d}
}

func TestShedPolicyOff(t *testing.T) {
	ms := []MemberLoad{{Load: 10_000, Fresh: true, Shed: 0.3}, {Load: 1, Fresh: true}, {Load: 1, Fresh: true}}
	for _, f := range (ShedPolicy{}).Next(ms) {
		if f != 0 {
			t.Fatalf("Factor 0 gave shed %v, want none (and the old shed cleared)", f)
		}
	}
	if got := len((ShedPolicy{Factor: 1.25}).Next(nil)); got != 0 {
		t.Fatalf("Next(nil) has %d entries", got)
	}
}

// TestShedPolicyRisesGradually: a member at 2.6× the mean climbs to the shed
// that brings it to Aim × capacity, by at most Rise per report, and then
// stays put.
func TestShedPolicyRisesGradually(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	pool := hotPool(310) // mean 121, capacity 151.25
	trace := pool.run(t, p, make([]float64, 10), 30)
	prev := 0.0
	for i, f := range trace {
		if f < prev || f-prev > DefaultShedRise+1e-9 {
			t.Fatalf("round %d: shed went %v → %v, want a rise of at most %v", i, prev, f, DefaultShedRise)
		}
		prev = f
	}
	if trace[0] != DefaultShedRise {
		t.Errorf("first step %v, want %v", trace[0], DefaultShedRise)
	}
	// 1 − 0.95 × 151.25/310 = 0.5365, rounded up: 0.537, the 11th step.
	final := trace[len(trace)-1]
	if final != 0.537 {
		t.Fatalf("settled at shed %v, want 0.537; trace %v", final, trace)
	}
	if load := 310 * (1 - final); load > 151.25 {
		t.Errorf("settled with load %v, above capacity 151.25", load)
	}
	if steps := slices.Index(trace, final) + 1; steps != 11 {
		t.Errorf("settled after %d steps, want 11: trace %v", steps, trace)
	}
}

// TestShedPolicyFallsGradually: a member whose load collapses gives its shed
// back by at most Fall per report, down to none.
func TestShedPolicyFallsGradually(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	shed := make([]float64, 10)
	shed[0] = 0.5
	trace := hotPool(10).run(t, p, shed, 20) // its own keys: 0.11 of a fair share
	want := []float64{0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05}
	want = append(want, make([]float64, 11)...)
	if !slices.Equal(trace, want) {
		t.Fatalf("want %v, then no shed: %v", want[:9], trace)
	}
}

// TestShedPolicyGivesBack: a shed falls only while the load is under
// Release × capacity, and then toward the shed that would bring the load
// up to that line: all of it if the load with no shed is under the line.
func TestShedPolicyGivesBack(t *testing.T) {
	// The others carry what keeps the mean at 100: capacity 125, line 112.5.
	pool := func(load, shed float64) []MemberLoad {
		ms := []MemberLoad{{Load: load, Fresh: true, Shed: shed}}
		for range 9 {
			ms = append(ms, MemberLoad{Load: (1000 - load) / 9, Fresh: true})
		}
		return ms
	}
	tests := []struct {
		p                ShedPolicy
		load, shed, want float64
	}{
		{ShedPolicy{Factor: 1.25, Fall: 1}, 100, 0.5, 0.437},     // 200 with no shed: 1 − 112.5/200 = 0.4375, rounded down
		{ShedPolicy{Factor: 1.25, Fall: 1}, 60, 0.5, 0.062},      // 120 with no shed: 1 − 112.5/120 = 0.0625
		{ShedPolicy{Factor: 1.25, Fall: 1}, 50, 0.5, 0},          // 100 with no shed, under the line: all of it
		{ShedPolicy{Factor: 1.25, Fall: 1}, 112.4, 0.2, 0.199},   // 140.5 with no shed: 1 − 112.5/140.5 = 0.1993
		{ShedPolicy{Factor: 1.25, Fall: 1}, 112.5, 0.2, 0.2},     // on the line: stays
		{ShedPolicy{Factor: 1.25, Fall: 1}, 120, 0.2, 0.2},       // in the band: stays
		{ShedPolicy{Factor: 1.25, Fall: 1}, 124.9, 0.2, 0.2},     // just under capacity: stays
		{ShedPolicy{Factor: 1.25}, 50, 0.5, 0.45},                // by at most Fall
		{ShedPolicy{Factor: 1.25, Release: 0.5}, 60, 0.5, 0.479}, // line 62.5, 120 with no shed: 1 − 62.5/120 = 0.4792
		{ShedPolicy{Factor: 1.25, Release: 0.5}, 62.5, 0.5, 0.5},
	}
	for _, tt := range tests {
		if got := tt.p.Next(pool(tt.load, tt.shed))[0]; got != tt.want {
			t.Errorf("%+v, load %v under shed %v: shed %v, want %v", tt.p, tt.load, tt.shed, got, tt.want)
		}
	}
}

// TestShedPolicyHold: a held member's shed does not fall, however far its
// load drops, and still rises above capacity; Pending keeps it either way.
func TestShedPolicyHold(t *testing.T) {
	p := ShedPolicy{Factor: 1.1}
	ms := make([]MemberLoad, 10)
	for i := range ms {
		ms[i] = MemberLoad{Load: 100, Fresh: true}
	}
	// It handed on a hot key: 100 of its own keys left, 55 under its shed.
	ms[0] = MemberLoad{Load: 55, Fresh: true, Shed: 0.45}
	ms[1].Load = 145 // the key's new owner
	if got := p.Next(ms)[0]; got != 0.4 {
		t.Fatalf("not held: shed %v, want 0.4", got)
	}
	ms[0].Hold = true
	if got := p.Next(ms)[0]; got != 0.45 {
		t.Fatalf("held: shed %v, want 0.45 kept", got)
	}
	ms[0].Load = 1 // nearly nothing left
	if got := p.Next(ms)[0]; got != 0.45 {
		t.Fatalf("held, load 1: shed %v, want 0.45 kept", got)
	}
	ms[0].Load = 300 // over capacity: a held shed still rises
	if got := p.Next(ms)[0]; got != 0.5 {
		t.Fatalf("held, over capacity: shed %v, want 0.5", got)
	}
	ms[0].Pending = true
	if got := p.Next(ms)[0]; got != 0.45 {
		t.Fatalf("held and pending: shed %v, want 0.45 kept", got)
	}
}

// TestShedPolicyStaysPut: once settled, loads that wander by a few percent,
// around capacity or anywhere else, rewrite nothing and never turn a shed.
func TestShedPolicyStaysPut(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	pool := hotPool(310)
	shed := make([]float64, 10)
	for range 30 {
		shed = p.Next(pool.reports(shed))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 1000 {
		ms := pool.reports(shed)
		for i := range ms {
			ms[i].Load *= 1 + 0.03*(2*rng.Float64()-1)
		}
		next := p.Next(ms)
		for i := range next {
			if next[i] != shed[i] {
				t.Fatalf("round %d: member %d shed %v → %v for a load change within 3%%", round, i, shed[i], next[i])
			}
		}
	}

	// Hovering around capacity from the start (mean 103, capacity 128.75,
	// load 130 ± 3 %): the shed rises a little, then holds; it never turns.
	hover := hotPool(130)
	shed = make([]float64, 10)
	var rises, turns, dir int
	for range 1000 {
		ms := hover.reports(shed)
		ms[0].Load *= 1 + 0.03*(2*rng.Float64()-1)
		next := p.Next(ms)
		if d := cmpSign(next[0] - shed[0]); d != 0 {
			if dir != 0 && d != dir {
				turns++
			}
			if d > 0 {
				rises++
			}
			dir = d
		}
		shed = next
	}
	if turns != 0 || rises == 0 || rises > 3 {
		t.Fatalf("near capacity the shed rose %d times and turned %d times; want 1 to 3 rises and no turn", rises, turns)
	}
}

func cmpSign(x float64) int {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

// TestShedPolicyQuantised: every result is 0, the shed given, or a multiple
// of the quantum in (0, MaxShed], written with at most 4 decimals.
func TestShedPolicyQuantised(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, p := range []ShedPolicy{{Factor: 1.25}, {Factor: 1.1, Quantum: 0.005, Rise: 0.2}, {Factor: 2, Quantum: 0.0001, MaxShed: 0.3333}} {
		d := p.withDefaults()
		for range 1000 {
			ms := make([]MemberLoad, 2+rng.IntN(20))
			for i := range ms {
				ms[i] = MemberLoad{Load: rng.ExpFloat64() * 100, Fresh: true, Weight: []float64{0, 1, 2, 0.5}[rng.IntN(4)]}
				if rng.IntN(2) == 0 {
					ms[i].Shed = float64(rng.IntN(10_001)) / 10_000
				}
			}
			for i, f := range p.Next(ms) {
				if f == 0 || f == min(math.Round(ms[i].Shed*1e4)/1e4, d.MaxShed) {
					continue
				}
				if !(f > 0 && f <= d.MaxShed) {
					t.Fatalf("%+v: shed %v out of (0, %v]", p, f, d.MaxShed)
				}
				if s := strconv.FormatFloat(f, 'f', -1, 64); len(s) > len("0.1234") {
					t.Fatalf("%+v: shed %v is written %s, more than 4 decimals", p, f, s)
				}
				if q := f / d.Quantum; math.Abs(q-math.Round(q)) > 1e-6 && f != d.MaxShed {
					t.Fatalf("%+v: shed %v is not a multiple of %v", p, f, d.Quantum)
				}
			}
		}
	}
}

// TestShedPolicyAimsFromTheEstimate: the load is read with the shed it was
// measured under, and the same report always gives the same answer (no
// integral to wind up).
func TestShedPolicyAimsFromTheEstimate(t *testing.T) {
	p := ShedPolicy{Factor: 1.25, Rise: 1}
	ms := make([]MemberLoad, 10)
	for i := range ms {
		ms[i] = MemberLoad{Load: 100, Fresh: true}
	}
	// Mean 120, capacity 150; 240 under a shed of 0.2 is 300 with none,
	// and 1 − 0.95 × 150/300 = 0.525.
	ms[0] = MemberLoad{Load: 240, Fresh: true, Shed: 0.2}
	ms[1].Load = 160 // where the shed keys went
	for range 3 {
		if got := p.Next(ms)[0]; got != 0.525 {
			t.Fatalf("shed %v, want 0.525", got)
		}
	}
}

func TestShedPolicyWhoSheds(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	fresh := func(load, shed float64) MemberLoad { return MemberLoad{Load: load, Fresh: true, Shed: shed} }
	tests := []struct {
		name string
		ms   []MemberLoad
		want []bool // sheds
	}{
		{"stale and draining never shed", []MemberLoad{
			{Load: 900, Shed: 0.4}, {Load: 900, Fresh: true, Draining: true, Shed: 0.4}, fresh(100, 0), fresh(100, 0), fresh(100, 0),
		}, []bool{false, false, false, false, false}},
		{"stale and draining loads are not in the mean", []MemberLoad{
			{Load: 10_000}, {Load: 10_000, Fresh: true, Draining: true}, fresh(200, 0), fresh(100, 0),
		}, []bool{false, false, true, false}},
		{"a load that is not a number counts as stale", []MemberLoad{
			fresh(math.NaN(), 0.3), fresh(-1, 0.3), fresh(math.Inf(1), 0.3), fresh(200, 0), fresh(100, 0),
		}, []bool{false, false, false, true, false}},
		{"alone, nowhere to shed to", []MemberLoad{fresh(1000, 0.3), {Load: 5}}, []bool{false, false}},
		{"no load at all", []MemberLoad{fresh(0, 0.3), fresh(0, 0)}, []bool{false, false}},
		{"capacity scales with weight", []MemberLoad{
			{Weight: 2, Load: 200, Fresh: true}, fresh(100, 0), fresh(100, 0),
		}, []bool{false, false, false}},
		{"and so does the fair share", []MemberLoad{
			{Weight: 2, Load: 400, Fresh: true}, fresh(100, 0), fresh(100, 0),
		}, []bool{true, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := p.Next(tt.ms)
			for i := range got {
				if (got[i] > 0) != tt.want[i] {
					t.Errorf("member %d: shed %v, want shedding %v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestShedPolicyMaxShed(t *testing.T) {
	ms := []MemberLoad{{Load: 1e6, Fresh: true}, {Load: 1, Fresh: true}, {Load: 1, Fresh: true}}
	for _, p := range []ShedPolicy{{Factor: 1.25}, {Factor: 1.25, MaxShed: 0.3, Rise: 1}} {
		limit := p.withDefaults().MaxShed
		ms[0].Shed = 0
		for range 100 {
			ms[0].Shed = p.Next(ms)[0]
		}
		if ms[0].Shed != limit {
			t.Errorf("MaxShed %v: shed %v under any load, want the cap", limit, ms[0].Shed)
		}
		ms[0].Shed = 0.9 // from a policy with a higher cap
		if got := p.Next(ms)[0]; got != limit {
			t.Errorf("MaxShed %v: shed 0.9 became %v, want the cap", limit, got)
		}
	}
}

func TestShedPolicyValidate(t *testing.T) {
	for _, p := range []ShedPolicy{{}, DefaultShedPolicy(), {Factor: 1.25}, {Factor: MaxBalanceFactor, Quantum: 0.1, Rise: 0.1, Fall: 0.1, MaxShed: 1, Aim: 1, Release: 0.99},
		{Factor: 1.1, Aim: 0.5, Release: 0.6}, {Backoff: time.Minute, MaxBackoff: time.Minute, Quiet: time.Minute + 1}} {
		if err := p.Validate(); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	nan := math.NaN()
	tests := []struct {
		p    ShedPolicy
		want []string // each a line of the error
	}{
		{ShedPolicy{Factor: 1}, []string{"ShedPolicy.Factor = 1, want 0 (off) or a number in (1, 10]"}},
		{ShedPolicy{Factor: -1.25}, []string{"Factor = -1.25"}},
		{ShedPolicy{Factor: 11}, []string{"Factor = 11"}},
		{ShedPolicy{Factor: nan}, []string{"Factor = NaN"}},
		{ShedPolicy{Factor: math.Inf(1)}, []string{"Factor = +Inf"}},
		{ShedPolicy{Aim: 0.4}, []string{"Aim = 0.4, want 0 (default 0.95) or a number in [0.5, 1]"}},
		{ShedPolicy{Release: 1}, []string{"Release = 1, want 0 (default 0.9) or a number in (0, 1)"}},
		{ShedPolicy{Rise: 1.5}, []string{"Rise = 1.5, want 0 (default 0.05) or a number in [Quantum (0.001), 1]"}},
		{ShedPolicy{Fall: 0.0005}, []string{"Fall = 0.0005, want 0 (default 0.05) or a number in [Quantum (0.001), 1]"}},
		{ShedPolicy{MaxShed: 0.12345}, []string{"MaxShed = 0.12345, want 0 (default 0.7) or a number in (0, 1] with at most 4 decimals"}},
		{ShedPolicy{Quantum: 0.00015}, []string{"Quantum = 0.00015, want 0 (default 0.001) or a multiple of 0.0001 in [0.0001, 0.1]"}},
		{ShedPolicy{Backoff: -time.Second}, []string{"Backoff = -1s, want 0 (default 10m0s) or more"}},
		{ShedPolicy{MaxBackoff: 5 * time.Minute}, []string{"MaxBackoff = 5m0s, want 0 (default 40m0s) or at least Backoff (10m0s)"}},
		{ShedPolicy{Quiet: 30 * time.Minute}, []string{"Quiet = 30m0s, want 0 (default 1h0m0s) or more than MaxBackoff (40m0s)"}},
		{ShedPolicy{MaxBackoff: 2 * time.Hour}, []string{"Quiet = 0s, want 0 (default 1h0m0s) or more than MaxBackoff (2h0m0s)"}},
		{ShedPolicy{Factor: 0.5, Aim: 2, MaxShed: -1}, []string{"Factor = 0.5", "Aim = 2", "MaxShed = -1"}},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		if err == nil {
			t.Errorf("%+v: no error, want %q", tt.p, tt.want)
			continue
		}
		lines := strings.Split(err.Error(), "\n")
		if len(lines) != len(tt.want) {
			t.Errorf("%+v: %d problems reported, want %d: %v", tt.p, len(lines), len(tt.want), err)
			continue
		}
		for i, w := range tt.want {
			if !strings.HasPrefix(lines[i], "ring: ") || !strings.Contains(lines[i], w) {
				t.Errorf("%+v: %q, want it to contain %q", tt.p, lines[i], w)
			}
		}
	}
}
