package resourceaware

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// The simulation: routers that each pick by their own Balancer, nodes that
// report their load every reportEvery, Poisson request arrivals, and load
// that follows the picks (closed loop). No NATS, no real time: one simulated
// clock shared by every Balancer, one seeded random source.
//
// Load model. A node serves mu requests a second at 100 % CPU; a request
// keeps it busy serviceTime. At each report it states the load it carried
// over the last interval (util = requests received / (mu × interval)):
//
//	cpu  = 5 + 85·util + noise(σ 1)     mem = 5 + 80·util
//	conn = 3000·util                    latency = 10 ms + 600 ms·util²
//
// With the average node at util 0.6 an idle newcomer scores ≈ 0.97 against
// ≈ 0.59 for its loaded peers (the herding of issue 14), and a node is
// excluded above util 1.0, 1.67× its share. (At util 0.7, 1.43× its share,
// the fleet falls, under the seed's rules or these, into a two-interval
// cycle once noise excludes a few nodes at once: the excluded report idle,
// take the others' load, are excluded in turn. That is a finding of its
// own; here the background is kept stable so the newcomer and the hovering
// node can be measured against it.)
//
// The hovering node carries someone else's work too: cpu = 88 +
// 2·util/targetUtil + noise(σ 1), about 90 % when it takes its share, about
// 88 % when it takes none.
const (
	simNodes     = 20
	simRouters   = 4
	targetUtil   = 0.6 // load of the average node
	reportEvery  = 5 * time.Second
	serviceTime  = 400 * time.Millisecond
	simJoin      = 45 * time.Second // when the newcomer starts
	simSteady    = 60 * time.Second // after the join, when its steady share is measured (until the end)
	simHover     = 7                // the hovering node
	simNewcomer  = simNodes - 1     // the joining node
	simDelayStep = 10 * time.Millisecond
)

// simSize is how much to simulate: the request rate (all routers together)
// and how long.
type simSize struct {
	rate float64
	end  time.Duration
}

var (
	simLight = simSize{rate: 150, end: 4 * time.Minute}  // TestSimulation, a few seconds under -race
	simFull  = simSize{rate: 500, end: 10 * time.Minute} // BenchmarkSimulation
)

type simResult struct {
	// The newcomer's share in its first 4 report intervals, over its steady
	// share: expected (the probability each pick had to take it, summed, so
	// that the dice of the picks do not blur it) and as picked.
	share, picked [4]float64
	steadyShare   float64
	flipsPerMin   float64 // eligibility changes of the hovering node, in router 0's view
	inflight      float64 // mean over time of max/mean in-flight requests per node, once the newcomer is steady
}

type simEvent struct {
	at   time.Duration
	kind int // evArrival, evReport, evDeliver, evSample
	node int
	rt   int
	r    Report
}

const (
	evArrival = iota
	evReport
	evDeliver
	evSample
)

type simQueue []simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].kind < q[j].kind
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// runSimulation runs the simulation with cfg in every router; p2c picks
// the better-scored of two weighted draws instead of one weighted draw.
func runSimulation(t testing.TB, size simSize, cfg Config, p2c bool, seed uint64) simResult {
	t.Helper()
	// A node's capacity, requests a second, such that the average of the
	// nodes that take work (all but the hovering one) runs at targetUtil.
	mu := size.rate / (targetUtil * (simNodes - 1))
	rnd := rand.New(rand.NewPCG(seed, 1))
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	start := clk.Now()
	routers := make([]*Balancer, simRouters)
	for i := range routers {
		c := cfg
		c.Now, c.Rand = clk.Now, rand.NewPCG(seed, uint64(100+i))
		b, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		routers[i] = b
	}
	ids := make([]string, simNodes)
	index := map[string]int{}
	for i := range ids {
		ids[i] = fmt.Sprintf("n%02d", i)
		index[ids[i]] = i
	}

	for _, b := range routers { // the ring's members, as a router loads them at start
		if err := b.Add(ids[:simNewcomer]...); err != nil {
			t.Fatal(err)
		}
	}
	q := &simQueue{}
	push := func(e simEvent) { heap.Push(q, e) }
	push(simEvent{at: time.Duration(rnd.ExpFloat64() / size.rate * float64(time.Second)), kind: evArrival})
	for i := range simNodes {
		at := time.Duration(i) * reportEvery / simNodes // staggered
		if i == simNewcomer {
			at = simJoin
		}
		push(simEvent{at: at, kind: evReport, node: i})
	}
	push(simEvent{at: simJoin + simSteady, kind: evSample})

	received := make([]int, simNodes)              // requests since the node's last report
	busyUntil := make([][]time.Duration, simNodes) // completion times of in-flight requests, in order
	var picks [simNodes]int
	var intervalPicks [4][2]int   // per interval after the join: newcomer's picks, all picks
	var intervalChance [4]float64 // per interval after the join: the newcomer's chances, summed
	steadyPicks, steadyAll, steadyChance := 0, 0, 0.0
	flips, lastEligible, seen := 0, false, false
	ratioSum, samples := 0.0, 0

	pick := func(b *Balancer) string {
		if !p2c {
			id, err := b.Select(nil)
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
		s := b.current()
		i, j := s.draw(b.rand()), s.draw(b.rand())
		if wj, _ := s.at(j); wj > func() float64 { wi, _ := s.at(i); return wi }() {
			i = j
		}
		return s.ids[i]
	}

	for q.Len() > 0 {
		e := heap.Pop(q).(simEvent)
		if e.at >= size.end {
			break
		}
		clk.Advance(start.Add(e.at).Sub(clk.Now()))
		switch e.kind {
		case evArrival:
			push(simEvent{at: e.at + time.Duration(rnd.ExpFloat64()/size.rate*float64(time.Second)), kind: evArrival})
			b := routers[rnd.IntN(simRouters)]
			if b.Len() == 0 {
				continue
			}
			p := chance(b, ids[simNewcomer], p2c)
			n := index[pick(b)]
			picks[n]++
			received[n]++
			busy := busyUntil[n]
			for len(busy) > 0 && busy[0] <= e.at {
				busy = busy[1:]
			}
			busyUntil[n] = append(busy, e.at+serviceTime)
			if since := e.at - simJoin; since >= 0 {
				if k := int(since / reportEvery); k < len(intervalPicks) {
					intervalPicks[k][1]++
					intervalChance[k] += p
					if n == simNewcomer {
						intervalPicks[k][0]++
					}
				}
				if since >= simSteady {
					steadyAll++
					steadyChance += p
					if n == simNewcomer {
						steadyPicks++
					}
				}
			}
		case evReport:
			util := float64(received[e.node]) / (mu * reportEvery.Seconds())
			received[e.node] = 0
			noise := rnd.NormFloat64()
			r := Report{
				CPUUsage:          clamp(5+85*util+noise, 0, 100),
				MemoryUsage:       clamp(5+80*util, 0, 100),
				ActiveConnections: int64(3000 * util),
				AvgLatency:        10*time.Millisecond + time.Duration(600*util*util*float64(time.Millisecond)),
			}
			if e.node == simHover {
				r.CPUUsage = clamp(88+2*util/targetUtil+noise, 0, 100)
			}
			for rt := range simRouters {
				push(simEvent{at: e.at + time.Duration(rt)*simDelayStep, kind: evDeliver, node: e.node, rt: rt, r: r})
			}
			push(simEvent{at: e.at + reportEvery, kind: evReport, node: e.node})
		case evDeliver:
			if err := routers[e.rt].Report(ids[e.node], e.r); err != nil {
				t.Fatal(err)
			}
			if e.rt == 0 && e.node == simHover {
				eligible := routers[0].Nodes()[simHover].Eligible
				if seen && eligible != lastEligible {
					flips++
				}
				lastEligible, seen = eligible, true
			}
		case evSample:
			push(simEvent{at: e.at + 100*time.Millisecond, kind: evSample})
			total, most := 0, 0
			for n := range simNodes {
				busy := busyUntil[n]
				for len(busy) > 0 && busy[0] <= e.at {
					busy = busy[1:]
				}
				busyUntil[n] = busy
				total += len(busy)
				most = max(most, len(busy))
			}
			if total > 0 {
				ratioSum += float64(most) / (float64(total) / simNodes)
				samples++
			}
		}
	}
	var res simResult
	res.steadyShare = steadyChance / float64(steadyAll)
	picked := float64(steadyPicks) / float64(steadyAll)
	for k, ip := range intervalPicks {
		res.share[k] = intervalChance[k] / float64(ip[1]) / res.steadyShare
		res.picked[k] = float64(ip[0]) / float64(ip[1]) / picked
	}
	res.flipsPerMin = float64(flips) / size.end.Minutes()
	res.inflight = ratioSum / float64(samples)
	return res
}

// chance returns the probability that a pick by b takes id: its weight over
// its class's when it is in the class picks come from (for p2c, that it is
// one of two draws and the better of them).
func chance(b *Balancer, id string, p2c bool) float64 {
	s := b.current()
	i, ok := s.pos(id)
	if !ok {
		return 0
	}
	w, c := s.at(int(i))
	if c != s.lowest {
		return 0
	}
	p := w / s.total[c]
	if s.total[c] == 0 {
		p = 1 / float64(s.count[c])
	}
	if !p2c {
		return p
	}
	// Taken if drawn twice, or drawn once with the other draw weighing less
	// (ties aside).
	lighter := 0.0
	for j := range s.ids {
		if wj, cj := s.at(j); cj == c && wj < w {
			lighter += wj / s.total[c]
		}
	}
	return p*p + 2*p*lighter
}

func clamp(v, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, v)) }

// TestSimulation: with the seed's rules an idle newcomer takes far more than
// its share in its first report interval and a node hovering at 90 % CPU
// flaps; with slow start over three report intervals and a 5-point CPU
// margin, the newcomer starts at no more than half its steady share, is back
// to at least 90 % of it by the end of the window, and the hovering node
// changes eligibility at most once a minute. These are properties of the
// deterministic simulation (fixed seed), not of timing.
func TestSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("simulation")
	}
	base := runSimulation(t, simLight, simSeedRules, false, 1)
	got := runSimulation(t, simLight, simTuned, false, 1)
	logSimulation(t, "seed rules", base)
	logSimulation(t, "slow start 15 s, cpu margin 5", got)
	if base.share[0] < 1.3 || base.flipsPerMin < 2 {
		t.Errorf("the seed's rules no longer show the problem (first interval %.2f× steady, %.2f flips/min): the model changed", base.share[0], base.flipsPerMin)
	}
	if got.share[0] > 0.5 {
		t.Errorf("with slow start the newcomer took %.2f× its steady share in its first interval, want ≤ 0.5×", got.share[0])
	}
	if got.share[2] < 0.9 {
		t.Errorf("with slow start the newcomer took %.2f× its steady share in the window's last interval, want ≥ 0.9×", got.share[2])
	}
	if got.flipsPerMin > 1 {
		t.Errorf("with a 5-point margin the hovering node flipped %.2f times a minute, want ≤ 1", got.flipsPerMin)
	}
}

var (
	simSeedRules = Config{}
	simTuned     = Config{SlowStartWindow: 3 * reportEvery, CPUMarginPercent: 5}
)

func logSimulation(t testing.TB, name string, r simResult) {
	t.Helper()
	t.Logf("%-32s newcomer's share by report interval after joining, over its steady share (%.3f): expected %.2f %.2f %.2f %.2f, picked %.2f %.2f %.2f %.2f; hovering node: %.2f eligibility flips/min; max/mean in-flight %.2f",
		name, r.steadyShare, r.share[0], r.share[1], r.share[2], r.share[3], r.picked[0], r.picked[1], r.picked[2], r.picked[3], r.flipsPerMin, r.inflight)
}

// BenchmarkSimulation runs the full-size simulation (500 requests a second
// for 10 minutes) and logs what TestSimulation asserts on a light one, plus
// power of two choices (the better-scored of two weighted draws) against
// weighted random. Run with -bench Simulation -benchtime 1x -v.
//
// Power of two choices is not offered as a mode because of what this
// measured: with reports 5 s apart every router sees the same scores, and
// taking the better of two sends the best-scored nodes more than their
// share until their next report, so it herds more, not less. Mean max/mean
// in-flight per node once steady: 1.72 with weighted random, 3.58 with p2c
// (slow start and margin on); 1.68 against 3.45 with the seed's rules.
func BenchmarkSimulation(b *testing.B) {
	for b.Loop() {
		logSimulation(b, "seed rules", runSimulation(b, simFull, simSeedRules, false, 1))
		logSimulation(b, "slow start 15 s, cpu margin 5", runSimulation(b, simFull, simTuned, false, 1))
		logSimulation(b, "the same, p2c", runSimulation(b, simFull, simTuned, true, 1))
		logSimulation(b, "seed rules, p2c", runSimulation(b, simFull, simSeedRules, true, 1))
	}
}
