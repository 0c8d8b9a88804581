package ring

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// The closed loop of ShedPolicy and the format-2 ring: 50 members of
// weight 1 (150 points each) serve a fixed Zipf workload; every tick each
// member reports the requests its keys send it, the policy computes new
// sheds from those reports, and the ring is rebuilt with them. The loop is
// deterministic (the keys' names are the only seed), so the goals are
// asserted, not sampled.
//
// Size. The full workloads are 1,000,000 keys (W1) and 100,000 keys (W2).
// By default the test keeps the top of each distribution exactly (the
// 20,000 and 10,000 most popular keys, one simulated key each) and folds the
// tail into simulated keys of 20 and 10 consecutive ranks, carrying their
// summed popularity and counting as that many keys. The hot keys, which
// decide everything here, are exact; a folded tail key carries at most
// 0.005 of a fair share. That keeps every Zipf share and the 50 members,
// and every max/mean comes within 0.02, every share of moved keys within a
// point, of the full run's. NATSROUTE_SIM=full runs the full size (about
// 10 s without -race); NATSROUTE_SIM_KEYS=prefix renames the keys, which
// reshuffles where they land (the default names are key-<rank>).

const (
	simMembers = 50
	simSteady  = 100 // the last ticks: no key may move, no shed may turn
)

// simWorkload is a Zipf popularity over keys ranks: rank r has popularity
// r^-s. The first exact ranks are simulated keys of their own; the rest are
// folded into simulated keys of fold ranks each.
type simWorkload struct {
	name  string
	s     float64
	keys  int
	exact int
	fold  int
}

// simKeys is a workload's simulated keys, placed on the plain ring.
type simKeys struct {
	name  []string
	pop   []float64 // requests per tick
	count []int     // the keys of the workload it stands for
	total float64
	keys  int

	// Every key hashed once: its plain owner, and u, its shed draw there
	// (Sheds(key, owner, f) iff u < f). A key moves only if its plain
	// owner sheds it, so each member's keys are listed in order of u: the
	// keys it sheds are a prefix.
	members []Member
	index   map[string]int32
	plain   []int32
	u       []float64
	byU     [][]int32 // by plain owner
}

func (w simWorkload) build(t *testing.T, prefix string) simKeys {
	t.Helper()
	k := simKeys{keys: w.keys, members: make([]Member, simMembers), index: make(map[string]int32, simMembers)}
	for r := 1; r <= w.keys; {
		n := 1
		if r > w.exact {
			n = min(w.fold, w.keys-r+1)
		}
		var p float64
		for i := r; i < r+n; i++ {
			p += math.Pow(float64(i), -w.s)
		}
		k.name = append(k.name, prefix+strconv.Itoa(r))
		k.pop = append(k.pop, p)
		k.count = append(k.count, n)
		k.total += p
		r += n
	}

	for i := range k.members {
		k.members[i] = Member{ID: fmt.Sprintf("m-%02d", i), Weight: 1}
		k.index[k.members[i].ID] = int32(i)
	}
	r, err := New(Config{}, k.members...)
	if err != nil {
		t.Fatal(err)
	}
	k.plain = make([]int32, len(k.name))
	k.u = make([]float64, len(k.name))
	k.byU = make([][]int32, simMembers)
	for i, name := range k.name {
		id, err := r.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		k.plain[i] = k.index[id]
		k.u[i] = float64(xxhash.Sum64String(name+"\x00"+id)>>11) / (1 << 53)
		k.byU[k.plain[i]] = append(k.byU[k.plain[i]], int32(i))
	}
	for _, keys := range k.byU {
		slices.SortFunc(keys, func(a, b int32) int { return cmp.Compare(k.u[a], k.u[b]) })
	}
	return k
}

// simSpread says which keys a client sends with spread, and how wide.
type simSpread int

const (
	spreadNone simSpread = iota
	// spreadOverCapacity: the keys whose share exceeds a member's capacity
	// c·fair, each over ⌈share / ((c−1)·fair)⌉ owners (at most 32, the
	// router's default max_count), so that every owner's part fits in the
	// headroom above a fair share.
	spreadOverCapacity
	// spreadOverHeadroom: the same, for every key whose share exceeds the
	// headroom (c−1)·fair. Such a key cannot sit on any member beside a fair
	// share of other keys, and shedding only moves it whole.
	spreadOverHeadroom
)

// simRun is how one run of the loop goes. A tick is a second: the policy
// runs every tick, as the router's every ShedInterval.
type simRun struct {
	spread simSpread
	// every is how many ticks apart each member reports (staggered); 0
	// means every tick. The policy runs every tick regardless, with the
	// latest reports, marking Pending the members whose shed changed since
	// their report, as the router does between heartbeats.
	every int
	// length is the run's ticks; 0 means long enough to settle, then
	// simSteady ticks more.
	length int
	// spot is a transient hot spot, if any.
	spot *simSpot
}

// simSpot adds extra fair shares of load to the keys whose plain owner is
// member, in proportion to their popularity, from tick start to tick end.
type simSpot struct {
	member     int32
	start, end int
	extra      float64
}

func (r simRun) String() string {
	s := [...]string{"shed", "shed+spread>cap", "shed+spread>room"}[r.spread]
	if r.every > 1 {
		s += fmt.Sprintf(", reports/%d", r.every)
	}
	if r.spot != nil {
		s += fmt.Sprintf(", spot %d–%d s", r.spot.start, r.spot.end)
	} else if r.length > 0 {
		s += fmt.Sprintf(", %s", time.Duration(r.length)*time.Second)
	}
	return s
}

// ticks is how long the run lasts.
func (r simRun) ticks() int {
	if r.length > 0 {
		return r.length
	}
	return simSteady + 150*max(1, r.every)
}

// simResult is one run of the loop; loads are in units of the mean.
type simResult struct {
	plainMax    float64 // max/mean on the plain ring
	max         float64 // max/mean at the end
	moved       float64 // share of keys whose owner differs from the plain ring's
	steadyMoves int     // keys that moved during the last simSteady ticks
	flips       int     // most times one member's shed turned, over the last simSteady ticks
	flipsAll    int     // the same over the whole run
	flipsHour   int     // the same over the worst hour (the whole run if shorter)
	shedding    int     // members with a shed at the end
	maxShed     float64
	settled     int // the tick of the last shed change
	over        int // ticks with max/mean above c + 0.05, from simSettle on

	// With a spot: the worst max/mean from simSpotRamp ticks into the spot
	// to its end, and the tick (from the spot's start) after which max/mean
	// stayed within c + 0.05 to its end (-1: never).
	spotMax  float64
	spotRamp int

	changes []simChange // every change of a shed, in order
}

// simChange is a change of one member's shed.
type simChange struct {
	tick, member int
	shed         float64
}

// shedsAt is every member's shed after tick.
func (r simResult) shedsAt(tick int) []float64 {
	v := make([]float64, simMembers)
	for _, ch := range r.changes {
		if ch.tick > tick {
			break
		}
		v[ch.member] = ch.shed
	}
	return v
}

const (
	// simSpotRamp is how long a spot's shed may take to ramp before the
	// spot's max/mean counts.
	simSpotRamp = 120
	// simSettle is how long the ring may take to settle before a
	// max/mean above c + 0.05 counts in simResult.over.
	simSettle = 300
)

// simHot is a key sent with spread: its traffic is split evenly among the
// first spread owners.
type simHot struct {
	key    int
	spread int
	owners []int32
}

// simulate runs the loop for one workload and policy.
func simulate(t *testing.T, k simKeys, p ShedPolicy, run simRun) simResult {
	t.Helper()
	ms, index, plain, u := slices.Clone(k.members), k.index, k.plain, k.u
	pop := slices.Clone(k.pop)
	if run.spot != nil && run.spread != spreadNone {
		t.Fatal("a spot with spread is not simulated")
	}
	r, err := New(Config{}, ms...)
	if err != nil {
		t.Fatal(err)
	}
	snap := r.Snapshot()
	fair := k.total / simMembers
	headroom := (p.Factor - 1) * fair
	hotAbove := math.Inf(1)
	switch run.spread {
	case spreadOverCapacity:
		hotAbove = p.Factor * fair
	case spreadOverHeadroom:
		hotAbove = headroom
	}

	owner := slices.Clone(plain)
	load := make([]float64, simMembers)
	own := make([][]int32, simMembers) // k.byU less the keys sent with spread
	var hots []simHot
	for i := range owner {
		load[owner[i]] += pop[i]
		if pop[i] > hotAbove {
			n := min(32, int(math.Ceil(pop[i]/headroom)))
			hots = append(hots, simHot{key: i, spread: n, owners: []int32{owner[i]}})
		}
	}
	for m, keys := range k.byU {
		own[m] = slices.DeleteFunc(slices.Clone(keys), func(i int32) bool { return pop[i] > hotAbove })
	}
	res := simResult{plainMax: slices.Max(load) / fair}

	var buf []string
	placeHot := func() (moved int) {
		for h := range hots {
			hk := &hots[h]
			var err error
			if buf, err = snap.AppendN(buf[:0], k.name[hk.key], hk.spread); err != nil {
				t.Fatal(err)
			}
			next := make([]int32, len(buf))
			for i, id := range buf {
				next[i] = index[id]
			}
			if slices.Equal(next, hk.owners) {
				continue
			}
			for _, o := range hk.owners {
				load[o] -= pop[hk.key] / float64(len(hk.owners))
			}
			for _, o := range next {
				load[o] += pop[hk.key] / float64(len(next))
			}
			hk.owners = next
			moved++
		}
		return moved
	}
	placeHot()

	// The spot's extra load, per key.
	var spotPop []float64
	total := k.total
	if sp := run.spot; sp != nil {
		spotPop = make([]float64, len(pop))
		var own float64
		for _, i := range k.byU[sp.member] {
			own += pop[i]
		}
		for _, i := range k.byU[sp.member] {
			spotPop[i] = pop[i] * sp.extra * fair / own
		}
		res.spotRamp = -1
	}
	// spotLoad adds (sign 1) or takes away (-1) the spot's load.
	spotLoad := func(sign float64) {
		for i, d := range spotPop {
			pop[i] += sign * d
			load[owner[i]] += sign * d
		}
		total += sign * run.spot.extra * fair
	}

	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	shed := make([]float64, simMembers)
	backoff := make([]ShedBackoff, simMembers)
	reports := make([]MemberLoad, simMembers)
	reported := make([]int, simMembers) // the tick of each member's latest report
	shedAt := make([]int, simMembers)   // the tick each member's shed last changed
	for m := range shedAt {
		shedAt[m] = -1
	}
	dir := make([]int, simMembers)     // the sign of each member's last change
	turns := make([][]int, simMembers) // the ticks at which each member's shed turned
	ticks := run.ticks()
	for tick := range ticks {
		now := epoch.Add(time.Duration(tick) * time.Second)
		if sp := run.spot; sp != nil {
			switch tick {
			case sp.start:
				spotLoad(1)
			case sp.end:
				spotLoad(-1)
			}
		}
		// The loads as the previous tick left them.
		mx := slices.Max(load) / (total / simMembers)
		if tick >= simSettle && mx > p.Factor+0.05 {
			res.over++
		}
		if sp := run.spot; sp != nil && tick >= sp.start && tick < sp.end {
			if tick >= sp.start+simSpotRamp {
				res.spotMax = max(res.spotMax, mx)
			}
			switch {
			case mx > p.Factor+0.05:
				res.spotRamp = -1
			case res.spotRamp < 0:
				res.spotRamp = tick - sp.start
			}
		}
		steady := tick >= ticks-simSteady
		for m := range reports {
			if run.every <= 1 || (tick+m)%run.every == 0 {
				reports[m] = MemberLoad{Weight: 1, Load: load[m], Fresh: true}
				reported[m] = tick
			}
			reports[m].Shed = shed[m]
			reports[m].Pending = shedAt[m] >= reported[m]
			reports[m].Hold = backoff[m].Holds(now)
		}
		next := p.Next(reports)
		changed := false
		for m := range next {
			if next[m] == shed[m] {
				continue
			}
			changed, res.settled, shedAt[m] = true, tick, tick
			res.changes = append(res.changes, simChange{tick, m, next[m]})
			backoff[m] = p.Observe(backoff[m], shed[m], next[m], now)
			d := 1
			if next[m] < shed[m] {
				d = -1
			}
			if dir[m] != 0 && dir[m] != d {
				turns[m] = append(turns[m], tick)
			}
			dir[m] = d
		}
		if !changed {
			continue
		}
		old := shed
		shed = next
		for m := range ms {
			ms[m].Shed = shed[m]
		}
		if err := r.Set(ms); err != nil {
			t.Fatal(err)
		}
		snap = r.Snapshot()
		moved := 0
		for m, keys := range own {
			shedNow := shed[m]
			limit := max(old[m], shedNow) // beyond it, the key stays with m
			for _, i := range keys {
				if u[i] >= limit {
					break
				}
				o := int32(m)
				if u[i] < shedNow { // shed: the walk decides, with every shed as it is now
					id, err := snap.Get(k.name[i])
					if err != nil {
						t.Fatal(err)
					}
					o = index[id]
				}
				if o != owner[i] {
					load[owner[i]] -= pop[i]
					load[o] += pop[i]
					owner[i] = o
					moved++
				}
			}
		}
		moved += placeHot()
		if steady {
			res.steadyMoves += moved
		}
	}

	// Check the bookkeeping against the ring itself on a sample of keys.
	for i := 0; i < len(k.name); i += 97 {
		if k.pop[i] > hotAbove {
			continue
		}
		if id, _ := snap.Get(k.name[i]); index[id] != owner[i] {
			t.Fatalf("%s: the simulation has it on %s, the ring on %s", k.name[i], ms[owner[i]].ID, id)
		}
		if got, want := Sheds(k.name[i], ms[plain[i]].ID, shed[plain[i]]), u[i] < shed[plain[i]]; got != want {
			t.Fatalf("%s: Sheds = %v, the simulation's draw says %v", k.name[i], got, want)
		}
	}

	hot := make(map[int]int, len(hots))
	for h := range hots {
		hot[hots[h].key] = h
	}
	moved := 0
	for i := range owner {
		first := owner[i]
		if h, ok := hot[i]; ok {
			first = hots[h].owners[0]
		}
		if first != plain[i] {
			moved += k.count[i]
		}
	}
	res.moved = float64(moved) / float64(k.keys)
	res.max = slices.Max(load) / fair
	hour := min(3600, ticks)
	for _, ts := range turns {
		res.flipsAll = max(res.flipsAll, len(ts))
		res.flips = max(res.flips, len(ts)-sort.SearchInts(ts, ticks-simSteady))
		for i := range ts { // the turns in the hour from ts[i]
			res.flipsHour = max(res.flipsHour, sort.SearchInts(ts, ts[i]+hour)-i)
		}
	}
	for _, f := range shed {
		if f > 0 {
			res.shedding++
		}
	}
	res.maxShed = slices.Max(shed)
	return res
}

func TestShedSimulation(t *testing.T) {
	w1 := simWorkload{name: "W1", s: 0.8, keys: 1_000_000, exact: 20_000, fold: 20}
	w2 := simWorkload{name: "W2", s: 1.1, keys: 100_000, exact: 10_000, fold: 10}
	size := "scaled"
	if os.Getenv("NATSROUTE_SIM") == "full" {
		w1.fold, w2.fold, size = 1, 1, "full"
	}
	prefix := cmp.Or(os.Getenv("NATSROUTE_SIM_KEYS"), "key-")

	var table strings.Builder
	fmt.Fprintf(&table, "%s size, keys %q, %d members × %d points, a tick is 1 s, the last %d ticks steady\n", size, prefix+"<rank>", simMembers, DefaultVirtualNodes, simSteady)
	fmt.Fprintf(&table, "%-4s %-5s %-36s %6s %8s %7s %9s %6s %9s %6s %8s %8s %7s %5s %8s %5s %5s\n",
		"load", "c", "run", "plain", "max/mean", "moved", "steady-mv", "turns", "turns-all", "/hour", "shedding", "max-shed", "settled", "over", "spot-max", "ramp", "back")
	row := func(w string, c float64, run simRun, r simResult, back ...int) {
		fmt.Fprintf(&table, "%-4s %-5.2f %-36s %6.2f %8.3f %6.2f%% %9d %6d %9d %6d %8d %8.3f %7d %5d",
			w, c, run, r.plainMax, r.max, 100*r.moved, r.steadyMoves, r.flips, r.flipsAll, r.flipsHour, r.shedding, r.maxShed, r.settled, r.over)
		if run.spot != nil {
			fmt.Fprintf(&table, " %8.3f %5d %5d", r.spotMax, r.spotRamp, back[0])
		}
		table.WriteString("\n")
	}
	// steady checks what every run must show once settled: no key moves, no
	// shed turns more than twice.
	steady := func(w string, c float64, run simRun, r simResult) {
		t.Helper()
		if r.steadyMoves != 0 || r.flips > 2 {
			t.Errorf("%s c=%v %v: over the last %d ticks %d keys moved and a shed turned %d times; want 0 and at most 2",
				w, c, run, simSteady, r.steadyMoves, r.flips)
		}
	}

	for _, w := range []simWorkload{w1, w2} {
		k := w.build(t, prefix)
		// The workload is what the issue describes: W1's hottest key brings
		// 0.67 of a fair share, W2's 6.7 fair shares.
		hottest := k.pop[0] / (k.total / simMembers)
		if want := map[string]float64{"W1": 0.668, "W2": 6.74}[w.name]; math.Abs(hottest-want) > 0.01 {
			t.Fatalf("%s: the hottest key brings %.3f of a fair share, want %.3f", w.name, hottest, want)
		}
		for _, c := range []float64{1.1, 1.25, 1.5} {
			p := ShedPolicy{Factor: c}
			sim := func(name string, run simRun) simResult {
				r := simulate(t, k, p, run)
				row(name, c, run, r)
				return r
			}
			if w.name == "W1" {
				for _, run := range []simRun{{}, {every: 5}, {every: 5, length: 2 * 3600}} {
					r := sim("W1", run)
					if run.length == 0 {
						steady("W1", c, run, r)
					}
					if r.flipsHour > 6 {
						t.Errorf("W1 c=%v %v: a member's shed turned %d times in an hour, want at most 6", c, run, r.flipsHour)
					}
					if r.max > c+0.05 {
						t.Errorf("W1 c=%v %v: max/mean %.3f, want at most %.2f", c, run, r.max, c+0.05)
					}
					if c == 1.25 && r.moved > 0.02 {
						t.Errorf("W1 c=%v %v: %.2f%% of the keys left their plain owner, want at most 2%%", c, run, 100*r.moved)
					}
				}
				simW3(t, k, p, row)
				continue
			}
			// W2: shedding moves whole keys and cannot split the hottest
			// one; spread can. Held for two hours, as W1 above, no shed may
			// turn more than 6 times in an hour.
			for _, spread := range []simSpread{spreadNone, spreadOverCapacity, spreadOverHeadroom} {
				run := simRun{spread: spread, every: 5, length: 2 * 3600}
				r := sim("W2", run)
				if r.flipsHour > 6 {
					t.Errorf("W2 c=%v %v: a member's shed turned %d times in an hour, want at most 6", c, run, r.flipsHour)
				}
				switch spread {
				case spreadNone:
					if r.max < hottest {
						t.Errorf("W2 c=%v %v: max/mean %.3f is below the hottest key's %.3f alone", c, run, r.max, hottest)
					}
				case spreadOverHeadroom:
					if r.max > c {
						t.Errorf("W2 c=%v %v: max/mean %.3f, want at most %.2f", c, run, r.max, c)
					}
				}
			}
		}
	}
	t.Logf("\n%s", table.String())
}

// simW3 is W3: W1's keys and, for ten minutes, one fair share more on the
// keys of one member (the one with the median plain load), reports every
// 5 s. Once the spot's shed has ramped, max/mean stays within c + 0.05. Once
// the spot is over, every member whose shed it raised gives back at least as
// much within two minutes (back), and if nothing shed before the spot, the
// ring is format 1 again with every key on its plain owner.
//
// At c = 1.1 W1 alone sheds on 25 members and many others are loaded just
// under capacity: there the spot's members give back until their load
// reaches the give-back line (Release × capacity), and some stop above
// their shed from before the spot with a load inside the band, which
// hysteresis keeps. So the give-back is asserted at c = 1.25 and 1.5 only.
func simW3(t *testing.T, k simKeys, p ShedPolicy, row func(string, float64, simRun, simResult, ...int)) {
	t.Helper()
	c := p.Factor
	plain := make([]float64, simMembers)
	for i, m := range k.plain {
		plain[m] += k.pop[i]
	}
	byLoad := make([]int32, simMembers)
	for m := range byLoad {
		byLoad[m] = int32(m)
	}
	slices.SortFunc(byLoad, func(a, b int32) int { return cmp.Compare(plain[a], plain[b]) })
	spot := &simSpot{member: byLoad[simMembers/2], start: 600, end: 1200, extra: 1}
	run := simRun{every: 5, length: 1800, spot: spot}
	r := simulate(t, k, p, run)

	// back: the ticks from the spot's end until every member whose shed it
	// raised is at or below its shed from before (-1: never; 0: it raised
	// none).
	before, top := r.shedsAt(spot.start-1), r.shedsAt(spot.end-1)
	raised := func(now []float64) bool {
		for m := range now {
			if top[m] > before[m] && now[m] > before[m] {
				return true
			}
		}
		return false
	}
	back := -1
	for tick := spot.end - 1; tick < run.length && back < 0; tick++ {
		if !raised(r.shedsAt(tick)) {
			back = tick + 1 - spot.end
		}
	}
	row("W3", c, run, r, back)

	if c == 1.25 && r.spotMax > c+0.05 {
		t.Errorf("W3 c=%v: max/mean %.3f during the spot, from %d s in, want at most %.2f", c, r.spotMax, simSpotRamp, c+0.05)
	}
	if c == 1.1 {
		return
	}
	if back < 0 || back > 120 {
		t.Errorf("W3 c=%v: the sheds the spot raised were back %d s after it (-1: never), want within 120 s", c, back)
	}
	if slices.Max(before) == 0 && (r.shedding != 0 || r.moved != 0) {
		t.Errorf("W3 c=%v: nothing shed before the spot, and after it %d members shed and %.2f%% of the keys are off their plain owner, want format 1 and none", c, r.shedding, 100*r.moved)
	}
}
