package resourceaware

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTest(t testing.TB, cfg Config) (*Balancer, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg.Now = clk.Now
	if cfg.Rand == nil {
		cfg.Rand = rand.NewPCG(1, 2)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b, clk
}

func report(t testing.TB, b *Balancer, id string, r Report) {
	t.Helper()
	if err := b.Report(id, r); err != nil {
		t.Fatal(err)
	}
}

// picked returns the set of nodes chosen over many selections.
func picked(t testing.TB, b *Balancer, candidates []string) []string {
	t.Helper()
	seen := map[string]bool{}
	for range 2000 {
		id, err := b.Select(candidates)
		if err != nil {
			t.Fatal(err)
		}
		seen[id] = true
	}
	var out []string
	for id := range seen {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

var healthy = Report{CPUUsage: 10, MemoryUsage: 10, ActiveConnections: 10, AvgLatency: time.Millisecond}

func TestThresholds(t *testing.T) {
	tests := []struct {
		name     string
		r        Report
		eligible bool
		reason   string
	}{
		{"cpu at limit", Report{CPUUsage: 90}, true, ""},
		{"cpu just below", Report{CPUUsage: 89.999}, true, ""},
		{"cpu just above", Report{CPUUsage: 90.001}, false, "cpu 90.0% > 90.0%"},
		{"memory at limit", Report{MemoryUsage: 90}, true, ""},
		{"memory just above", Report{MemoryUsage: 90.5}, false, "memory 90.5% > 90.0%"},
		{"connections at limit", Report{ActiveConnections: 10_000}, true, ""},
		{"connections just below", Report{ActiveConnections: 9_999}, true, ""},
		{"connections just above", Report{ActiveConnections: 10_001}, false, "connections 10001 > 10000"},
		{"latency is never a threshold", Report{AvgLatency: time.Hour}, true, ""},
		{"draining", Report{Status: StatusDraining}, false, "draining"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := newTest(t, Config{})
			report(t, b, "x", tt.r)
			report(t, b, "ok", healthy)
			st := b.Nodes()[1]
			if st.ID != "x" || st.Eligible != tt.eligible || st.Reason != tt.reason {
				t.Fatalf("state %+v, want eligible=%v reason=%q", st, tt.eligible, tt.reason)
			}
			want := []string{"ok", "x"}
			if !tt.eligible {
				want = []string{"ok"}
			}
			if got := picked(t, b, nil); !slices.Equal(got, want) {
				t.Fatalf("picked %v, want %v", got, want)
			}
		})
	}
}

func TestScore(t *testing.T) {
	b, _ := newTest(t, Config{})
	report(t, b, "a", Report{CPUUsage: 20, MemoryUsage: 30, ActiveConnections: 5000, AvgLatency: 100 * time.Millisecond})
	report(t, b, "b", Report{CPUUsage: 20, MemoryUsage: 30, ActiveConnections: 5000, AvgLatency: 100 * time.Millisecond, Weight: 2})
	report(t, b, "c", Report{CPUUsage: 0, MemoryUsage: 0, ActiveConnections: 20_000, AvgLatency: 5 * time.Second, Status: StatusUp})
	// 0.3·0.8 + 0.3·0.7 + 0.2·0.5 + 0.2·0.9 = 0.73
	want := map[string]float64{"a": 0.73, "b": 1.46, "c": 0.6}
	for _, st := range b.Nodes() {
		if math.Abs(st.Score-want[st.ID]) > 1e-12 {
			t.Errorf("%s: score %v, want %v", st.ID, st.Score, want[st.ID])
		}
	}
}

func TestStaleness(t *testing.T) {
	b, clk := newTest(t, Config{})
	report(t, b, "hot", Report{CPUUsage: 99})
	report(t, b, "ok", healthy)
	if got := picked(t, b, nil); !slices.Equal(got, []string{"ok"}) {
		t.Fatalf("fresh overloaded node picked: %v", got)
	}
	clk.Advance(30 * time.Second) // exactly at the limit: still fresh
	if got := picked(t, b, nil); !slices.Equal(got, []string{"ok"}) {
		t.Fatalf("at 30 s: picked %v, want [ok]", got)
	}
	clk.Advance(time.Nanosecond) // older than 30 s: neutral, eligible
	if got := picked(t, b, nil); !slices.Equal(got, []string{"hot", "ok"}) {
		t.Fatalf("after staleness: picked %v, want both", got)
	}
	st := b.Nodes()
	if !st[0].Stale || st[0].Score != 0.5 || !st[0].Eligible || st[0].Age != 30*time.Second+1 {
		t.Fatalf("stale node state %+v", st[0])
	}
	report(t, b, "hot", Report{CPUUsage: 99}) // fresh again
	if got := picked(t, b, nil); !slices.Equal(got, []string{"ok"}) {
		t.Fatalf("after a fresh report: picked %v, want [ok]", got)
	}
}

func TestFallback(t *testing.T) {
	b, _ := newTest(t, Config{})
	report(t, b, "cpu", Report{CPUUsage: 95})
	report(t, b, "mem", Report{MemoryUsage: 95})
	report(t, b, "drain", Report{Status: StatusDraining})
	if got := picked(t, b, nil); !slices.Equal(got, []string{"cpu", "mem"}) {
		t.Fatalf("all excluded: picked %v, want the overloaded nodes (not the draining one)", got)
	}
	b.Forget("cpu", "mem")
	if got := picked(t, b, nil); !slices.Equal(got, []string{"drain"}) {
		t.Fatalf("only a draining node: picked %v", got)
	}
	b.Forget("drain")
	if _, err := b.Select(nil); !errors.Is(err, ErrNoNodes) {
		t.Fatalf("empty: %v, want ErrNoNodes", err)
	}
	if _, err := b.SelectN(nil, 2); !errors.Is(err, ErrNoNodes) {
		t.Fatalf("empty SelectN: %v, want ErrNoNodes", err)
	}
}

func TestAllZeroIsUniform(t *testing.T) {
	b, _ := newTest(t, Config{Weights: &Weights{CPU: 1}, CPUThresholdPercent: 100})
	report(t, b, "a", Report{CPUUsage: 100})
	report(t, b, "b", Report{CPUUsage: 100})
	report(t, b, "c", Report{CPUUsage: 100})
	count := map[string]int{}
	for range 30_000 {
		id, _ := b.Select(nil)
		count[id]++
	}
	for id, c := range count {
		if c < 9_000 || c > 11_000 {
			t.Fatalf("all-zero scores: %s picked %d of 30000, want ~10000 (%v)", id, c, count)
		}
	}
	if len(count) != 3 {
		t.Fatalf("picked %v", count)
	}
}

func TestCandidates(t *testing.T) {
	b, _ := newTest(t, Config{})
	report(t, b, "a", healthy)
	report(t, b, "b", healthy)
	report(t, b, "hot", Report{CPUUsage: 99})
	if got := picked(t, b, []string{"b", "hot", "new", "b"}); !slices.Equal(got, []string{"b", "new"}) {
		t.Fatalf("candidates: picked %v, want [b new]", got)
	}
	if got := picked(t, b, []string{"hot"}); !slices.Equal(got, []string{"hot"}) {
		t.Fatalf("only an excluded candidate: picked %v, want [hot]", got)
	}
	if _, err := b.Select([]string{}); !errors.Is(err, ErrNoNodes) {
		t.Fatalf("empty candidate list: %v, want ErrNoNodes", err)
	}
	// More candidates than the stack buffer holds.
	var many []string
	for i := range 100 {
		many = append(many, fmt.Sprintf("n%d", i))
	}
	many = append(many, "hot", "a")
	got := picked(t, b, many)
	if slices.Contains(got, "hot") || len(got) < 90 {
		t.Fatalf("100 unknown candidates: picked %d distinct, hot picked: %v", len(got), slices.Contains(got, "hot"))
	}
}

func TestSelectN(t *testing.T) {
	b, _ := newTest(t, Config{})
	for _, id := range []string{"a", "b", "c", "d"} {
		report(t, b, id, healthy)
	}
	report(t, b, "hot", Report{CPUUsage: 99})
	for range 1000 {
		got, err := b.SelectN(nil, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || slices.Contains(got, "hot") || len(slices.Compact(slices.Sorted(slices.Values(got)))) != 3 {
			t.Fatalf("SelectN(3) = %v, want 3 distinct eligible nodes", got)
		}
	}
	if got, _ := b.SelectN(nil, 10); len(got) != 4 {
		t.Fatalf("SelectN(10) = %v, want the 4 eligible nodes", got)
	}
	if got, _ := b.SelectN([]string{"a", "x", "a"}, 5); len(got) != 2 {
		t.Fatalf("SelectN over candidates = %v, want 2 distinct", got)
	}
	if _, err := b.SelectN(nil, 0); !errors.Is(err, ErrInvalidCount) {
		t.Fatalf("SelectN(0): %v", err)
	}
}

// chiSquare returns the statistic for observed counts against probabilities.
func chiSquare(obs []int, p []float64, total int) float64 {
	x := 0.0
	for i := range obs {
		e := p[i] * float64(total)
		x += (float64(obs[i]) - e) * (float64(obs[i]) - e) / e
	}
	return x
}

// selectChiSquare makes picks selections from b and fails unless their
// counts fit the shares p of ids: chi-square at most critical.
func selectChiSquare(t *testing.T, b *Balancer, ids []string, p []float64, picks int, critical float64) {
	t.Helper()
	obs := make([]int, len(ids))
	for range picks {
		id, err := b.Select(nil)
		if err != nil {
			t.Fatal(err)
		}
		obs[slices.Index(ids, id)]++
	}
	if x := chiSquare(obs, p, picks); x > critical {
		t.Fatalf("chi-square %.2f > %v: observed %v, expected shares %v", x, critical, obs, p)
	} else {
		t.Logf("chi-square %.2f (critical %v), observed %v", x, critical, obs)
	}
}

// TestDistribution: over 200,000 picks with a fixed seed, frequencies match
// score shares (chi-square, p = 0.001).
func TestDistribution(t *testing.T) {
	b, _ := newTest(t, Config{Rand: rand.NewPCG(42, 1)})
	reports := map[string]Report{
		"a": {CPUUsage: 10, MemoryUsage: 20, ActiveConnections: 100, AvgLatency: 5 * time.Millisecond},
		"b": {CPUUsage: 60, MemoryUsage: 70, ActiveConnections: 5000, AvgLatency: 200 * time.Millisecond},
		"c": {CPUUsage: 85, MemoryUsage: 85, ActiveConnections: 9000, AvgLatency: 900 * time.Millisecond},
		"d": {CPUUsage: 30, MemoryUsage: 30, Weight: 2.5},
		"e": {CPUUsage: 5, MemoryUsage: 5, Weight: 0.3},
	}
	ids := []string{"a", "b", "c", "d", "e", "z"} // z: no report, neutral
	for id, r := range reports {
		report(t, b, id, r)
	}
	if err := b.Add("z"); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	w := make([]float64, len(ids))
	total := 0.0
	for i, id := range ids {
		w[i] = 0.5
		if r, ok := reports[id]; ok {
			w[i] = cfg.score(r) * r.weight()
		}
		total += w[i]
	}
	p := make([]float64, len(ids))
	for i := range w {
		p[i] = w[i] / total
	}
	// Critical value of chi-square with 5 degrees of freedom at p = 0.001.
	selectChiSquare(t, b, ids, p, 200_000, 20.515)

	// SelectN(2): ordered pairs follow sampling without replacement,
	// P(i, j) = w_i/W · w_j/(W − w_i).
	var pp []float64
	var pairs []string
	for i := range ids {
		for j := range ids {
			if i != j {
				pairs = append(pairs, ids[i]+ids[j])
				pp = append(pp, w[i]/total*w[j]/(total-w[i]))
			}
		}
	}
	const draws = 100_000
	po := make([]int, len(pairs))
	for range draws {
		got, err := b.SelectN(nil, 2)
		if err != nil || len(got) != 2 {
			t.Fatalf("SelectN: %v %v", got, err)
		}
		po[slices.Index(pairs, got[0]+got[1])]++
	}
	// 29 degrees of freedom at p = 0.001.
	if x := chiSquare(po, pp, draws); x > 58.301 {
		t.Fatalf("SelectN pairs: chi-square %.2f > 58.301", x)
	} else {
		t.Logf("SelectN pairs: chi-square %.2f (critical 58.301)", x)
	}
}

func TestInvalidReports(t *testing.T) {
	b, _ := newTest(t, Config{})
	report(t, b, "a", healthy)
	bad := []Report{
		{CPUUsage: math.NaN()},
		{CPUUsage: math.Inf(1)},
		{CPUUsage: -1},
		{CPUUsage: 100.01},
		{MemoryUsage: math.NaN()},
		{MemoryUsage: 101},
		{MemoryUsage: math.Inf(-1)},
		{ActiveConnections: -1},
		{AvgLatency: -time.Millisecond},
		{Weight: -1},
		{Weight: math.NaN()},
		{Weight: math.Inf(1)},
		{Weight: MaxWeight + 1},
		{Status: "leaving"},
		{Status: "UP"},
	}
	for _, r := range bad {
		if err := b.Report("a", r); !errors.Is(err, ErrInvalidReport) {
			t.Errorf("Report(%+v): %v, want ErrInvalidReport", r, err)
		}
	}
	for _, id := range []string{"", strings.Repeat("x", MaxIDLength+1), "\xff"} {
		if err := b.Report(id, healthy); !errors.Is(err, ErrInvalidReport) {
			t.Errorf("Report(id %q): %v, want ErrInvalidReport", id, err)
		}
	}
	if st := b.Nodes(); len(st) != 1 || st[0].Report != healthy {
		t.Fatalf("rejected reports changed state: %+v", st)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Config{
		CPUThresholdPercent:    101,
		MemoryThresholdPercent: -5,
		MaxActiveConnections:   -1,
		LatencyCeiling:         -1,
		Staleness:              -time.Second,
		NeutralScore:           2,
		Weights:                &Weights{CPU: -1, Memory: math.NaN()},
	}
	err := bad.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"CPUThresholdPercent = 101", "MemoryThresholdPercent = -5", "MaxActiveConnections = -1", "LatencyCeiling", "Staleness = -1s", "NeutralScore = 2", "Weights.CPU = -1", "Weights.Memory = NaN", "all score weights are zero"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := New(bad); err == nil {
		t.Fatal("New accepted a bad config")
	}
}

func TestNoAllocs(t *testing.T) {
	b, _ := newTest(t, Config{Rand: nil})
	b.rand = cryptoSeeded()
	for i := range 100 {
		report(t, b, fmt.Sprintf("n%d", i), healthy)
	}
	cands := []string{"n1", "n2", "n3", "unknown"}
	for name, f := range map[string]func(){
		"Select(nil)":        func() { _, _ = b.Select(nil) },
		"Select(candidates)": func() { _, _ = b.Select(cands) },
	} {
		if a := testing.AllocsPerRun(500, f); a != 0 {
			t.Errorf("%s: %v allocations, want 0", name, a)
		}
	}
}

func TestConcurrent(t *testing.T) {
	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := b.Select(nil); err != nil && !errors.Is(err, ErrNoNodes) {
					t.Error(err)
				}
				if _, err := b.SelectN([]string{"n1", "n2", "x"}, 2); err != nil {
					t.Error(err)
				}
				_ = b.Nodes()
			}
		})
	}
	for i := range 2000 {
		id := fmt.Sprintf("n%d", i%20)
		if i%50 == 49 {
			b.Forget(id)
			continue
		}
		if err := b.Report(id, Report{CPUUsage: float64(i % 100), MemoryUsage: 50}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

// FuzzBalancer: no panic, and a pick is always an eligible node or, when
// none is eligible, one of the fallback class.
func FuzzBalancer(f *testing.F) {
	f.Add(50.0, 50.0, int64(10), int64(5), 1.0, uint8(0), 90.0, 0.3, uint8(3))
	f.Add(95.0, 10.0, int64(20000), int64(-1), 0.0, uint8(1), 50.0, 0.0, uint8(1))
	f.Add(math.NaN(), 1.0, int64(0), int64(0), math.Inf(1), uint8(2), 0.0, 1.0, uint8(7))
	f.Fuzz(func(t *testing.T, cpu, mem float64, conns, latMS int64, weight float64, status uint8, thr, cpuW float64, n uint8) {
		cfg := Config{CPUThresholdPercent: thr, Weights: &Weights{CPU: cpuW, Memory: 0.1}, Rand: rand.NewPCG(uint64(n), 9)}
		b, err := New(cfg)
		if err != nil {
			if cfg.Validate() == nil {
				t.Fatalf("New failed on a valid config: %v", err)
			}
			return
		}
		st := []string{"", StatusUp, StatusDraining, "bogus"}[status%4]
		eligible := map[string]bool{}
		for i := range int(n%8) + 1 {
			id := fmt.Sprintf("n%d", i)
			r := Report{CPUUsage: cpu * float64(i) / 4, MemoryUsage: mem, ActiveConnections: conns * int64(i), AvgLatency: time.Duration(latMS) * time.Millisecond, Weight: weight}
			if i%2 == 1 {
				r.Status = st
			}
			if err := b.Report(id, r); err != nil {
				if r.Validate() == nil {
					t.Fatalf("valid report rejected: %v", err)
				}
				continue
			}
		}
		states := b.Nodes()
		for _, s := range states {
			eligible[s.ID] = s.Eligible
		}
		anyEligible := slices.ContainsFunc(states, func(s NodeState) bool { return s.Eligible })
		for range 20 {
			id, err := b.Select(nil)
			if len(states) == 0 {
				if !errors.Is(err, ErrNoNodes) {
					t.Fatalf("no nodes: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if anyEligible && !eligible[id] {
				t.Fatalf("picked %s, not eligible, though an eligible node exists: %+v", id, states)
			}
			ids, err := b.SelectN(nil, int(n%4)+1)
			if err != nil || len(ids) == 0 || len(ids) > int(n%4)+1 {
				t.Fatalf("SelectN: %v %v", ids, err)
			}
		}
	})
}
