package resourceaware

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// touched returns how many tree nodes b has written so far by copying
// paths, and by copying whole trees since its last change of membership.
func touched(b *Balancer) (paths, trees int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.touched, b.copied
}

// TestHeartbeatIsNotLinear: a report for a known node copies one path of
// the tree (as many nodes as it has levels: 3 at 100 nodes, 5 at 10,000),
// plus at most 2 for copying the live tree into a new arena when one is full
// (amortised), and allocates one snapshot header, whatever the number of
// nodes; the first selection after k reports go stale re-weighs those k
// only.
func TestHeartbeatIsNotLinear(t *testing.T) {
	for _, tt := range []struct{ n, levels int }{{100, 3}, {10_000, 5}} {
		t.Run(fmt.Sprintf("nodes=%d", tt.n), func(t *testing.T) {
			b, clk := newTest(t, Config{})
			ids := benchIDs(tt.n)
			if err := b.Add(ids...); err != nil {
				t.Fatal(err)
			}
			for i, id := range ids {
				report(t, b, id, benchReport(i))
			}
			i := 0
			heartbeat := func() {
				// CPU 0..39: the node stays eligible, its weight changes.
				if err := b.Report(ids[i%tt.n], Report{CPUUsage: float64(i % 40), MemoryUsage: 30}); err != nil {
					t.Fatal(err)
				}
				i++
			}
			paths0, trees0 := touched(b)
			const beats = 2000
			for range beats {
				heartbeat()
			}
			paths, trees := touched(b)
			path, all := float64(paths-paths0)/beats, float64(paths+trees-paths0-trees0)/beats
			t.Logf("a heartbeat wrote %.2f tree nodes (%.2f on its path)", all, path)
			if path > float64(tt.levels) || all > float64(tt.levels+2) {
				t.Errorf("a heartbeat wrote %.2f tree nodes, %.2f on its path; want at most %d on its path (the levels of the tree), %d in all", all, path, tt.levels, tt.levels+2)
			}
			if a := testing.AllocsPerRun(1000, heartbeat); a > 1 {
				t.Errorf("a heartbeat allocated %v times, want at most 1 (the snapshot header)", a)
			}
			if a := testing.AllocsPerRun(100, func() { _, _ = b.Counts() }); a != 0 {
				t.Errorf("Counts allocated %v times, want 0", a)
			}

			// All but three report again 10 s later; 25 s after that the
			// three go stale and the first selection re-weighs only them.
			clk.Advance(10 * time.Second)
			for _, id := range ids[3:] {
				report(t, b, id, healthy)
			}
			clk.Advance(20*time.Second + 1)
			paths0, _ = touched(b)
			if _, err := b.Select(nil); err != nil {
				t.Fatal(err)
			}
			if paths, _ := touched(b); paths-paths0 < 1 || paths-paths0 > 3*tt.levels {
				t.Errorf("going stale copied %d tree nodes for 3 nodes, want 1 to %d", paths-paths0, 3*tt.levels)
			}
			if known, eligible := b.Counts(); known != tt.n || eligible != tt.n {
				t.Errorf("Counts() = %d, %d, want %d, %d", known, eligible, tt.n, tt.n)
			}
		})
	}
}

// seedPicker is the seed's selection, kept as an oracle: cumulative weights
// of the nodes of the lowest class present, in id order, and a binary
// search.
func seedPicker(states []NodeState) func(u uint64) string {
	classOf := func(s NodeState) class {
		switch {
		case s.Status == StatusDraining:
			return classDraining
		case !s.Eligible:
			return classOverloaded
		}
		return classEligible
	}
	lowest := classDraining
	for _, s := range states {
		lowest = min(lowest, classOf(s))
	}
	var ids []string
	var cum []float64
	total := 0.0
	for _, s := range states {
		if classOf(s) == lowest {
			total += s.Score
			ids, cum = append(ids, s.ID), append(cum, total)
		}
	}
	return func(u uint64) string {
		if total == 0 {
			return ids[(u>>32)*uint64(len(ids))>>32]
		}
		x := float64(u>>11) * 0x1p-53 * total
		i, _ := slices.BinarySearchFunc(cum, x, func(c, x float64) int {
			if c <= x {
				return -1
			}
			return 1
		})
		if i == len(cum) {
			for i--; i > 0 && cum[i] == cum[i-1]; i-- {
			}
		}
		return ids[i]
	}
}

// TestSameAsSeed: fed the same random bits, Select picks what the seed's
// cumulative search picks from the same selection weights and classes (as
// Nodes reports them; up to rounding at interval edges), through membership
// changes, heartbeats, staleness, every class, and slow start and hysteresis
// when they are on.
func TestSameAsSeed(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
	}{
		{"defaults", Config{}},
		{"slow start and hysteresis", Config{SlowStartWindow: 20 * time.Second, SlowStartAggression: 1.5, CPUMarginPercent: 5, MemoryMarginPercent: 3, ConnectionsMargin: 500}},
	} {
		t.Run(tt.name, func(t *testing.T) { testSameAsSeed(t, tt.cfg) })
	}
}

func testSameAsSeed(t *testing.T, cfg Config) {
	const seed = 7
	cfg.Rand = rand.NewPCG(seed, 0)
	b, clk := newTest(t, cfg)
	oracle := rand.NewPCG(seed, 0)
	rnd := rand.New(rand.NewPCG(1, 1))
	randomReport := func() Report {
		r := Report{CPUUsage: rnd.Float64() * 100, MemoryUsage: rnd.Float64() * 95, ActiveConnections: rnd.Int64N(12_000), AvgLatency: time.Duration(rnd.IntN(1500)) * time.Millisecond}
		if rnd.IntN(10) == 0 {
			r.Weight = 0.1 + rnd.Float64()*5
		}
		if rnd.IntN(50) == 0 {
			r.Status = StatusDraining
		}
		return r
	}
	ids := benchIDs(700)
	if err := b.Add(ids[:500]...); err != nil {
		t.Fatal(err)
	}
	picks, mismatches, ramping, recovering := 0, 0, 0, 0
	for round := range 40 {
		for range 300 {
			report(t, b, ids[rnd.IntN(len(ids))], randomReport()) // some of them new nodes
		}
		switch round % 8 {
		case 3:
			b.Forget(ids[rnd.IntN(len(ids))], ids[rnd.IntN(len(ids))])
		case 5:
			clk.Advance(31 * time.Second) // everything goes stale
		default:
			clk.Advance(time.Second)
		}
		states := b.Nodes()
		for _, st := range states {
			if st.SlowStart < 1 {
				ramping++
			}
			if st.Recovering {
				recovering++
			}
		}
		seedPick := seedPicker(states)
		for range 500 {
			got, err := b.Select(nil)
			if err != nil {
				t.Fatal(err)
			}
			picks++
			if want := seedPick(oracle.Uint64()); got != want {
				mismatches++
			}
		}
	}
	t.Logf("%d picks, %d differ from the seed's; %d ramping and %d recovering node states seen", picks, mismatches, ramping, recovering)
	if cfg.SlowStartWindow > 0 && (ramping == 0 || recovering == 0) {
		t.Fatal("slow start and hysteresis are on but no node ramped or recovered")
	}
	if mismatches > picks/10_000 {
		t.Fatalf("%d of %d picks differ from the seed's, want (almost) none", mismatches, picks)
	}
}

// TestTreesMatchNodes: after random reports, additions, removals, staleness
// and arena compactions, every position of the published trees holds its
// node's weight and class, and every slot the sum of what it covers.
func TestTreesMatchNodes(t *testing.T) {
	b, clk := newTest(t, Config{SlowStartWindow: 10 * time.Second, CPUMarginPercent: 5})
	rnd := rand.New(rand.NewPCG(3, 3))
	ids := benchIDs(300)
	for step := range 20_000 {
		id := ids[rnd.IntN(len(ids))]
		switch k := rnd.IntN(1000); {
		case k < 3:
			b.Forget(id)
		case k < 5:
			_ = b.Add(ids[rnd.IntN(len(ids)):]...)
		case k < 10:
			clk.Advance(time.Duration(rnd.IntN(40)) * time.Second)
		default:
			report(t, b, id, Report{CPUUsage: rnd.Float64() * 100, MemoryUsage: 50, Status: []string{"", StatusDraining}[rnd.IntN(20)/19]})
		}
		if step%500 != 0 {
			continue
		}
		s := b.current()
		b.mu.Lock()
		if len(s.ids) != len(b.byPos) {
			t.Fatalf("step %d: %d ids, %d nodes", step, len(s.ids), len(b.byPos))
		}
		for i, n := range b.byPos {
			if w, c := s.at(i); w != n.w || c != n.c || s.ids[i] != n.id {
				t.Fatalf("step %d: position %d holds %v/%v, node %s has %v/%v", step, i, w, c, n.id, n.w, n.c)
			}
		}
		for c, root := range s.roots {
			sum, cnt := checkSums(t, &s.trees, root, 0, s.span, b.byPos, class(c))
			if cnt != s.count[c] || math.Abs(sum-s.total[c]) > 1e-9*sum {
				t.Fatalf("step %d: class %d totals %v/%d, members %v/%d", step, c, s.total[c], s.count[c], sum, cnt)
			}
		}
		b.mu.Unlock()
	}
}

// checkSums verifies each slot of the subtree at ti against its members'
// weights and returns their total and count.
func checkSums(t *testing.T, tr *trees, ti uint32, lo, span int, byPos []*node, c class) (float64, int32) {
	t.Helper()
	nd := &tr.nodes[ti]
	sum, cnt := 0.0, int32(0)
	for j := range fanout {
		var s float64
		var k int32
		switch from := lo + j*span; {
		case from >= len(byPos):
		case span == 1:
			if byPos[from].c == c {
				s, k = byPos[from].w, 1
			}
		default:
			s, k = checkSums(t, tr, nd.kid[j], from, span/fanout, byPos, c)
		}
		if k != nd.cnt[j] || math.Abs(s-nd.sum[j]) > 1e-9*s {
			t.Fatalf("class %d, slot %d of the node over [%d, %d): %v/%d, members %v/%d", c, j, lo, lo+span*fanout, nd.sum[j], nd.cnt[j], s, k)
		}
		sum, cnt = sum+s, cnt+k
	}
	return sum, cnt
}

// TestConcurrentRamps: selections that bring the snapshot up to date (ramp
// steps, reports going stale) race with reports, additions and removals;
// every pick is a node that was known, and Counts never exceeds the nodes.
func TestConcurrentRamps(t *testing.T) {
	b, clk := newTest(t, Config{SlowStartWindow: time.Second, CPUMarginPercent: 5, Rand: rand.NewPCG(5, 5)})
	ids := benchIDs(50)
	known := map[string]bool{}
	for _, id := range ids {
		known[id] = true
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if id, err := b.Select(nil); err == nil && !known[id] {
					t.Errorf("picked %q, never reported", id)
				}
				if n, e := b.Counts(); n > len(ids) || e > n {
					t.Errorf("Counts() = %d, %d with %d nodes", n, e, len(ids))
				}
			}
		})
	}
	for i := range 3000 {
		id := ids[i%len(ids)]
		switch i % 97 {
		case 13:
			b.Forget(id)
		case 29:
			_ = b.Add(ids[:10]...)
		default:
			if err := b.Report(id, Report{CPUUsage: float64(i % 100), MemoryUsage: 40}); err != nil {
				t.Error(err)
			}
		}
		clk.Advance(time.Duration(i%7) * 3 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
}
