package ring

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults and bounds of ShedPolicy. Release, Fall, MaxShed and the
// backoff come from TestShedSimulation run with reports every 5 s under
// nine namings of its keys, which reshuffle where the hot keys land (the
// prefixes key-, user:, session/, item_, k, doc-, tenant., obj# and id=;
// NATSROUTE_SIM_KEYS sets one). ShedPolicy's comment gives the measured
// reason for each.
const (
	DefaultShedAim     = 0.95  // a rising shed aims at 95 % of capacity
	DefaultShedRelease = 0.9   // a shed falls while the load is under 90 % of capacity
	DefaultShedRise    = 0.05  // per step
	DefaultShedFall    = 0.05  // per step
	DefaultMaxShed     = 0.7   // a member keeps at least 30 % of its keys
	DefaultShedQuantum = 0.001 // sheds are multiples of 0.001

	DefaultShedBackoff    = 10 * time.Minute // the hold after a fall is undone, doubled for each in a row
	DefaultShedMaxBackoff = 40 * time.Minute // the longest hold
	DefaultShedQuiet      = time.Hour        // a rise this soon after a fall undoes it; each quiet hour forgives one

	// MaxBalanceFactor bounds ShedPolicy.Factor.
	MaxBalanceFactor = 10.0
)

// ShedPolicy computes shed fractions for bounded-load consistent hashing
// (DESIGN.md, "Load-aware ConsistentHash"): from the load each member of a
// pool reports, the shed the ring document publishes for it. The zero value
// is valid and sheds nothing; a Factor turns it on, and every other zero
// field means its default.
//
// Next is a pure function of its input (no clock, no state, no goroutines),
// so router replicas that see the same reports and the same ring document
// compute the same sheds. What it needs to know of the past (whether a
// member's falls were undone lately, MemberLoad.Hold) is an input too, from
// a ShedBackoff per member that the caller derives from the documents it
// applied (see ShedBackoff). The controller, and why it looks the way it
// does:
//
//   - Capacity. A member's fair share is the mean load per unit weight of
//     the pool's fresh members that are not draining, times its weight; its
//     capacity is Factor × fair share.
//
//   - Feedback. A member's reported load already reflects its shed. The shed
//     rule applies to every key that reaches the member, its own and those
//     its neighbours shed onto it alike, so shedding f removes about f of
//     its load, and the load it would carry with no shed is estimated as
//     load/(1−f). A rising shed aims at 1 − Aim·capacity/estimate, the shed
//     that would bring it to Aim (95 %) of its capacity, a little under it so
//     that noise does not cross the line again. An integral controller
//     (f += gain·(load − capacity)) would need a gain tuned to the pool;
//     the estimate needs none.
//
//   - One step per report. A report taken before the member's latest shed
//     change says nothing about that change; read with the new shed it
//     looks like a larger load, and every call would add another step (wind
//     up). So the caller marks such a member Pending, and Next keeps its
//     shed until a report shows the effect. Measured in TestShedSimulation
//     with reports every 5 calls: without Pending, W1 at c = 1.1 ends with
//     every member at the cap, 70 % of the keys moved and max/mean 1.57,
//     worse than no shedding at all; with it, the same result as reports on
//     every call.
//
//   - Giving back, with hysteresis. A shed rises only while the load is
//     above capacity and falls only while it is below Release × capacity;
//     in between it stays exactly as it is, so a load hovering near
//     capacity, and any small change of load, rewrites nothing. A falling
//     shed aims, by the same estimate, at the shed that would bring the
//     load up to Release × capacity: a member gives back all it does not
//     need, and all of it, down to 0, once its load with no shed is
//     estimated under the line. A pool whose hot spot has passed returns to
//     format 1. Release is 0.9: far enough under Aim that the ±3 % of noise
//     TestShedPolicyStaysPut adds to a settled member never reaches it (at
//     0.95 it would, and the shed would creep down a step at a time), and a
//     member that fell to the line needs 11 % more load to rise again.
//     Measured in W3 (one fair share more on one member's keys for ten
//     minutes): at 0.9, under all nine namings at c = 1.25 and 1.5, every
//     shed the spot raised was back at or below where it was within 45 s of
//     its end; at 0.85 one naming, and at 0.8 five, left one in the wider
//     band. The line is a fraction of capacity, not of a fair share as it
//     was (a quarter of one): with that low mark a member that cooled from
//     overloaded to ordinary kept its whole shed for ever.
//
//   - Gradual. A shed rises by at most Rise and falls by at most Fall per
//     step (each rounded to the Quantum), so every step moves few keys and
//     the loads show its effect before the next one. Fall is 0.05, as Rise:
//     in W3 at c = 1.25 the spot's member gave its shed of 0.35–0.45 back
//     within 45 s under every naming; with 0.02 it took up to 111 s, with
//     0.01 up to 221 s (and falls still ran in W1's last 100 ticks); 0.1
//     took 25 s but moves twice the keys per step, and its falls overshoot:
//     the spot's peak at c = 1.1 rose from 1.18 to 1.23 × the mean.
//
//   - Backoff against hot keys. Shedding moves whole keys, and a popular key
//     can carry a large part of a member's load: the hottest key of a
//     Zipf(0.8) workload over 1,000,000 keys brings 0.67 of a fair share on
//     a pool of 50. A member that hands on such a key drops well below
//     capacity and, from its reports, looks exactly like one whose load
//     really fell; its shed falls, the key comes back, the member crosses
//     capacity for a report or two and its shed rises again: two turns, and
//     without a limit the same again at once. So the caller keeps a
//     ShedBackoff per member, and Observe counts a fallback whenever a shed
//     rises less than Quiet after it fell; the member's next fall is then
//     held (MemberLoad.Hold) for Backoff, doubled for each fallback in a
//     row, up to MaxBackoff, and each Quiet period with none forgives one.
//     A member holding a hot key tries to give back about 0, 10, 30, 70 and
//     110 minutes after it first shed: 6 turns in its worst hour, then 3 an
//     hour; each try brings the key back for a report or two (held for 2
//     hours, W1 spent at most 76 s above c + 0.05 under any naming and c).
//     A member whose hot spot really ended has nothing to undo and gives
//     everything back on its first try (or its next, if it fell back
//     lately). So no shed flaps: a load between the two lines changes
//     nothing, and every fall that takes the load back over capacity
//     doubles the wait before the next, to 2 turns per MaxBackoff at most.
//     Measured held for 2 hours, W1 and W2 (Zipf 1.1, hot keys, with or
//     without spread), under every naming and c: the busiest member turned
//     6 times in its worst hour and 10 times in all. With a 5-minute window
//     in place of Quiet, members pushed back over capacity some minutes
//     after a fall (by a neighbour's fall) went uncounted, and W2 turned 8
//     or 9 times in an hour; with a Backoff of 5 minutes, 8 to 10. A
//     MaxBackoff of 30 minutes also gave 6, but turns 4 times an hour once
//     at the cap; one of 60 minutes (with Quiet 90) gave 6 and 8 in all,
//     but a hot key that really ended would wait up to an hour.
//
//   - Bounded. No member sheds more than MaxShed. A key larger than a
//     member's capacity cannot be placed by shedding (it moves whole): every
//     member it reaches raises its shed until the key moves on, and the cap
//     ends that walk at the first member that keeps it, after 1/(1−MaxShed)
//     members on average. Such keys need spread, not shed. MaxShed is 0.7:
//     with 0.5, W1 at c = 1.1 stayed above 1.15 × the mean under five
//     namings (the member holding the hottest key must hand on more than
//     half of its other keys).
//
//   - Quantised. A new shed is a multiple of Quantum, rounded up when it
//     rises and down when it falls, with at most 4 digits after the decimal
//     point as the document requires.
//
// Members with a stale report and draining members never shed (Next gives
// them 0, so a member that stops reporting loses its shed at the next call),
// and neither does anyone in a pool with fewer than two fresh members that
// are not draining, or with no load at all.
type ShedPolicy struct {
	// Factor is the balance factor c: a member's capacity is c × its fair
	// share. 0 means off (the default: Next returns 0 for every member);
	// otherwise in (1, MaxBalanceFactor].
	Factor float64

	// Aim is the fraction of capacity a rising shed aims for. 0 means
	// DefaultShedAim (0.95); otherwise in [0.5, 1].
	Aim float64

	// Release is the give-back line: a shed falls while the member's load
	// is below Release × its capacity, toward the shed that would bring it
	// there (0 once the load with no shed, estimated, is below it). 0 means
	// DefaultShedRelease (0.9); otherwise in (0, 1).
	Release float64

	// Rise is the most a shed rises per step (a call of Next for a member
	// that is not Pending). 0 means DefaultShedRise (0.05); otherwise in
	// [Quantum, 1].
	Rise float64

	// Fall is the most a shed falls per step. 0 means DefaultShedFall
	// (0.01); otherwise in [Quantum, 1].
	Fall float64

	// MaxShed is the largest shed. 0 means DefaultMaxShed (0.7); otherwise
	// in (0, 1] with at most 4 digits after the decimal point.
	MaxShed float64

	// Quantum is the step of the shed values. 0 means DefaultShedQuantum
	// (0.001); otherwise a multiple of 0.0001 in [0.0001, 0.1].
	Quantum float64

	// Backoff is how long a member's next fall is held after a fall was
	// undone, doubled for each fallback in a row before it, up to
	// MaxBackoff. 0 means DefaultShedBackoff (10 min).
	Backoff time.Duration

	// MaxBackoff is the longest hold. 0 means DefaultShedMaxBackoff
	// (40 min); otherwise at least Backoff.
	MaxBackoff time.Duration

	// Quiet is how soon after a fall a rise undoes it, and how long with no
	// fallback forgives one. 0 means DefaultShedQuiet (1 h); otherwise
	// more than MaxBackoff, or a member at MaxBackoff would be forgiven
	// before its next try.
	Quiet time.Duration
}

// MemberLoad is what ShedPolicy.Next needs to know about one member.
type MemberLoad struct {
	// Weight is the member's ring weight; 0 means 1.
	Weight float64

	// Load is the member's reported load (active_connections). It counts
	// only if Fresh, and must then be a finite number >= 0; a member whose
	// load is not is treated as stale.
	Load float64

	// Fresh reports whether the member's latest report is within the
	// staleness limit.
	Fresh bool

	// Draining members take no new keys: they never shed and do not count
	// in the fair share.
	Draining bool

	// Shed is the member's shed now, as the ring document has it.
	Shed float64

	// Pending reports that Load was measured before the member's shed last
	// changed (or so soon after that its load cannot show it yet: active
	// connections follow a routing change only as connections turn over).
	// Next keeps a pending member's shed as it is. A caller that calls Next
	// more often than members report must set it, or sheds wind up.
	Pending bool

	// Hold reports that a fall of the member's shed was undone lately and
	// the next must wait: set it from ShedBackoff.Holds(now), with the
	// member's ShedBackoff. Next keeps a held member's shed from falling (it
	// may still rise).
	Hold bool
}

// DefaultShedPolicy returns the policy with every default filled in and
// shedding off (Factor 0).
func DefaultShedPolicy() ShedPolicy {
	return ShedPolicy{}.withDefaults()
}

// Validate reports every problem with the policy.
func (p ShedPolicy) Validate() error {
	var errs []error
	bad := func(name string, v float64, want string) {
		errs = append(errs, fmt.Errorf("ring: ShedPolicy.%s = %v, want %s", name, v, want))
	}
	in := func(v, lo, hi float64) bool { return v >= lo && v <= hi } // false for NaN
	if p.Factor != 0 && !(p.Factor > 1 && p.Factor <= MaxBalanceFactor) {
		bad("Factor", p.Factor, fmt.Sprintf("0 (off) or a number in (1, %v]", MaxBalanceFactor))
	}
	if p.Aim != 0 && !in(p.Aim, 0.5, 1) {
		bad("Aim", p.Aim, fmt.Sprintf("0 (default %v) or a number in [0.5, 1]", DefaultShedAim))
	}
	if p.Release != 0 && !(p.Release > 0 && p.Release < 1) {
		bad("Release", p.Release, fmt.Sprintf("0 (default %v) or a number in (0, 1)", DefaultShedRelease))
	}
	if p.Quantum != 0 && !(in(p.Quantum, 0.0001, 0.1) && decimals4(p.Quantum)) {
		bad("Quantum", p.Quantum, fmt.Sprintf("0 (default %v) or a multiple of 0.0001 in [0.0001, 0.1]", DefaultShedQuantum))
	}
	d := p.withDefaults()
	if p.Rise != 0 && !in(p.Rise, d.Quantum, 1) {
		bad("Rise", p.Rise, fmt.Sprintf("0 (default %v) or a number in [Quantum (%v), 1]", DefaultShedRise, d.Quantum))
	}
	if p.Fall != 0 && !in(p.Fall, d.Quantum, 1) {
		bad("Fall", p.Fall, fmt.Sprintf("0 (default %v) or a number in [Quantum (%v), 1]", DefaultShedFall, d.Quantum))
	}
	if p.MaxShed != 0 && !(p.MaxShed > 0 && p.MaxShed <= 1 && decimals4(p.MaxShed)) {
		bad("MaxShed", p.MaxShed, fmt.Sprintf("0 (default %v) or a number in (0, 1] with at most 4 decimals", DefaultMaxShed))
	}
	badTime := func(name string, v time.Duration, want string) {
		errs = append(errs, fmt.Errorf("ring: ShedPolicy.%s = %v, want %s", name, v, want))
	}
	if p.Backoff < 0 {
		badTime("Backoff", p.Backoff, fmt.Sprintf("0 (default %v) or more", DefaultShedBackoff))
	}
	if p.MaxBackoff < 0 || (p.Backoff >= 0 && d.MaxBackoff < d.Backoff) {
		badTime("MaxBackoff", p.MaxBackoff, fmt.Sprintf("0 (default %v) or at least Backoff (%v)", DefaultShedMaxBackoff, d.Backoff))
	}
	if p.Quiet < 0 || (p.MaxBackoff >= 0 && d.Quiet <= d.MaxBackoff) {
		badTime("Quiet", p.Quiet, fmt.Sprintf("0 (default %v) or more than MaxBackoff (%v)", DefaultShedQuiet, d.MaxBackoff))
	}
	return errors.Join(errs...)
}

func (p ShedPolicy) withDefaults() ShedPolicy {
	p.Aim = cmp.Or(p.Aim, DefaultShedAim)
	p.Release = cmp.Or(p.Release, DefaultShedRelease)
	p.Rise = cmp.Or(p.Rise, DefaultShedRise)
	p.Fall = cmp.Or(p.Fall, DefaultShedFall)
	p.MaxShed = cmp.Or(p.MaxShed, DefaultMaxShed)
	p.Quantum = cmp.Or(p.Quantum, DefaultShedQuantum)
	p.Backoff = cmp.Or(p.Backoff, DefaultShedBackoff)
	p.MaxBackoff = cmp.Or(p.MaxBackoff, DefaultShedMaxBackoff)
	p.Quiet = cmp.Or(p.Quiet, DefaultShedQuiet)
	return p
}

// Next returns the shed each member of one pool should have, in the order
// of ms: 0 (no shed) or a fraction in (0, 1] with at most 4 digits after
// the decimal point. A member whose shed should stay gets ms[i].Shed back
// (rounded to 4 digits and capped at MaxShed).
//
// The caller gives it every member of the pool with its latest report,
// calls it once per pool at most about once a second, marks Pending the
// members whose report predates their last shed change and Hold those whose
// ShedBackoff holds, and writes the ring document only when a result
// differs from the member's shed in it. The policy is assumed valid (see
// Validate); Next itself never fails.
func (p ShedPolicy) Next(ms []MemberLoad) []float64 {
	out := make([]float64, len(ms))
	if p.Factor == 0 {
		return out
	}
	p = p.withDefaults()
	var load, weight float64
	n := 0
	for _, m := range ms {
		if usable(m) {
			load += m.Load
			weight += weightOf(m)
			n++
		}
	}
	if n < 2 || !(load > 0) || math.IsInf(load, 0) {
		return out
	}
	mean := load / weight
	q := math.Round(p.Quantum * 1e4) // the quantum in units of 0.0001
	for i, m := range ms {
		if !usable(m) {
			continue
		}
		g := min(max(m.Shed, 0), 1) // NaN becomes 0
		capacity := p.Factor * mean * weightOf(m)
		f := math.Round(g*1e4) / 1e4 // stay, as written
		switch {
		case m.Pending:
		case m.Load > capacity && g < p.MaxShed:
			estimate := m.Load / (1 - g)
			aim := 1 - p.Aim*capacity/estimate
			f = math.Ceil(min(aim, g+p.Rise)*1e4/q-1e-9) * q / 1e4
		case !m.Hold && g > 0 && m.Load < p.Release*capacity:
			aim := math.Inf(-1) // no load, or every key shed: no estimate, a step
			if m.Load > 0 && g < 1 {
				aim = 1 - p.Release*capacity*(1-g)/m.Load
			}
			f = math.Floor(max(aim, g-p.Fall, 0)*1e4/q+1e-9) * q / 1e4
		}
		out[i] = min(f, p.MaxShed)
	}
	return out
}

// usable reports whether m counts in the fair share and may shed.
func usable(m MemberLoad) bool {
	w := weightOf(m)
	return m.Fresh && !m.Draining && m.Load >= 0 && !math.IsInf(m.Load, 0) && w > 0 && !math.IsInf(w, 0)
}

func weightOf(m MemberLoad) float64 {
	if m.Weight == 0 {
		return 1
	}
	return m.Weight
}

// decimals4 reports whether v has at most 4 digits after the decimal point.
func decimals4(v float64) bool {
	return math.Abs(v*1e4-math.Round(v*1e4)) < 1e-6
}
