package resourceaware

import (
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Balancer keeps the health of a set of nodes and picks among them.
type Balancer struct {
	cfg   Config
	rand  func() uint64
	epoch time.Time // times in queues and snapshots are nanoseconds since epoch

	mu       sync.Mutex          // guards the fields below and publishing snapshots
	nodes    map[string]*node    // every known node
	byPos    []*node             // byPos[i] is the node at snapshot position i
	stale    staleList           // nodes with a fresh report, by when it goes stale
	ramps    rampQueue           // ramping nodes, by their next step
	arena    arena               // the weight tree's nodes
	positive [numClasses]int32   // nodes of positive weight, per class
	dirty    [numClasses][]int32 // positions re-weighed since the last publish, by the classes they were in or are in now
	touched  int                 // tree nodes written by path copies (tests read it)
	copied   int                 // tree nodes written by builds and compactions, except relayout's

	snap atomic.Pointer[snapshot]
}

type node struct {
	id  string
	pos int32 // snapshot position

	report Report
	at     time.Time // when the report was received; zero if none yet
	seen   time.Time // last sign of life: at, or the Add that made it known

	// As last weighed (see weigh), so a change re-weighs only its node.
	w        float64   // selection weight: score × weight × ramp
	c        class     // eligible, overloaded or draining
	fresh    bool      // has a report no older than Staleness
	held     overloads // thresholds that exclude it, hysteresis included; none unless fresh
	ramp     float64   // slow start multiplier in use; 1 when not ramping
	rampFrom time.Time // when its ramp started; zero when not ramping

	staleAt              int64 // when its report goes stale, while in the stale list
	stalePrev, staleNext *node // neighbours in the stale list
	inStale              bool
	rampIdx              int32 // index in the ramp queue; −1 when absent
}

// snapshot is an immutable view that selections read without locking.
type snapshot struct {
	ids      []string // sorted, so an id's position is found by binary search; shared while the set of nodes is unchanged
	trees             // weights and classes by position
	total    [numClasses]float64
	count    [numClasses]int32
	positive [numClasses]int32 // members of positive weight
	lowest   class             // the class picks come from: the lowest present
	due      int64             // from then on (see Balancer.since) the view is out of date: a report goes stale or a ramp step is due; never if nothing will
}

// New returns a Balancer with no nodes.
func New(cfg Config) (*Balancer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Balancer{cfg: cfg.withDefaults(), nodes: map[string]*node{}}
	b.epoch = b.cfg.Now()
	if src := cfg.Rand; src != nil {
		var mu sync.Mutex
		b.rand = func() uint64 {
			mu.Lock()
			defer mu.Unlock()
			return src.Uint64()
		}
	} else {
		b.rand = cryptoSeeded()
	}
	b.arena = newArena(0)
	b.snap.Store(b.snapshot(nil, [numClasses]uint32{}, never))
	return b, nil
}

// cryptoSeeded returns a source of random bits drawn from ChaCha8 generators
// seeded from crypto/rand, one per P (through a sync.Pool), so concurrent
// selections do not contend.
func cryptoSeeded() func() uint64 {
	pool := sync.Pool{New: func() any {
		var seed [32]byte
		crand.Read(seed[:]) // never fails (see crypto/rand.Read)
		return rand.NewChaCha8(seed)
	}}
	return func() uint64 {
		g := pool.Get().(*rand.ChaCha8)
		u := g.Uint64()
		pool.Put(g)
		return u
	}
}

// ValidateID checks a node id: 1 to MaxIDLength bytes of UTF-8.
func ValidateID(id string) error {
	if id == "" || len(id) > MaxIDLength || !utf8.ValidString(id) {
		return fmt.Errorf("%w: node id must be 1 to %d bytes of UTF-8", ErrInvalidReport, MaxIDLength)
	}
	return nil
}

// Report records a health report for nodeID, received at r.Received (or
// now). An invalid report returns an error wrapping ErrInvalidReport and
// changes nothing; a report received before the node's current one changes
// nothing either (the newest report wins).
//
// A report of a known node does O(log n) work: it moves the node in the
// stale queue and copies the node's path in the weight tree. A new node
// re-lays the snapshot, O(n).
func (b *Balancer) Report(nodeID string, r Report) error {
	if err := ValidateID(nodeID); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Now()
	b.advance(now)
	n, known := b.nodes[nodeID]
	if !known {
		n = b.newNode(nodeID, now)
	}
	if !b.take(n, r, now) {
		return nil
	}
	if !known {
		n.w, n.c = b.weigh(n)
		b.join([]string{nodeID})
		return nil
	}
	b.reweigh(n)
	b.publish()
	return nil
}

// take makes r the report n holds, unless n holds a newer one; it reports
// whether r was taken. With b.mu held; the caller weighs n and publishes.
func (b *Balancer) take(n *node, r Report, now time.Time) bool {
	at := r.Received
	if at.IsZero() || at.After(now) {
		at = now
	}
	if at.Before(n.at) {
		return false // superseded: a newer report is in
	}
	if at.Sub(n.seen) > b.cfg.Staleness {
		b.startRamp(n, at) // back after going stale, or first heard of long after Add
	}
	if !n.fresh {
		n.held = 0 // hysteresis starts again after a stale spell
	}
	r.Received = time.Time{} // n.at holds it
	n.report, n.at = r, at
	if at.After(n.seen) {
		n.seen = at
	}
	n.fresh = now.Sub(at) <= b.cfg.Staleness
	if n.fresh {
		n.held = b.cfg.held(r, n.held)
		b.stale.set(n, addSat(b.since(at), int64(b.cfg.Staleness)))
	} else {
		n.held = 0
		b.stale.remove(n)
	}
	return true
}

// ReportAll records reports[i] for nodeIDs[i], as Report would one by one
// (each at its Received time, the newest report winning), but re-lays the
// snapshot at most once: a burst of k new nodes costs O(n + k log k)
// instead of k × O(n). It validates every report first; if one is invalid
// it returns that error and changes nothing.
func (b *Balancer) ReportAll(nodeIDs []string, reports []Report) error {
	if len(nodeIDs) != len(reports) {
		return fmt.Errorf("resourceaware: ReportAll: %d ids and %d reports", len(nodeIDs), len(reports))
	}
	for i, id := range nodeIDs {
		if err := ValidateID(id); err != nil {
			return err
		}
		if err := reports[i].Validate(); err != nil {
			return fmt.Errorf("%w (node %q)", err, id)
		}
	}
	// In the order they arrived: each report moves its node to the end
	// of the staleness list, which is then one step, not a walk (a batch
	// handed over in map order made a burst at 50,000 nodes spend 18 % of
	// the router's CPU there).
	order := make([]int, len(nodeIDs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return reports[i].Received.Compare(reports[j].Received) })
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Now()
	b.advance(now)
	var added []string
	for _, i := range order {
		id := nodeIDs[i]
		n, known := b.nodes[id]
		if !known {
			n = b.newNode(id, now)
			added = append(added, id)
			b.take(n, reports[i], now)
			n.w, n.c = b.weigh(n)
			continue
		}
		b.take(n, reports[i], now)
		b.reweigh(n)
	}
	if len(added) == 0 {
		b.publish() // the same nodes: copies their paths, or rebuilds if they are many
		return nil
	}
	slices.Sort(added)
	b.join(slices.Compact(added))
	return nil
}

// Known reports whether the balancer knows nodeID (from a report or Add).
// It reads the snapshot without locking.
func (b *Balancer) Known(nodeID string) bool {
	_, ok := b.snap.Load().pos(nodeID)
	return ok
}

// Add makes nodes known without a report (they count as neutral until they
// report). Known nodes are left as they are. However many nodes it adds, it
// re-lays the snapshot once, O(n + k log k).
func (b *Balancer) Add(nodeIDs ...string) error {
	for _, id := range nodeIDs {
		if err := ValidateID(id); err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Now()
	b.advance(now)
	var added []string
	for _, id := range nodeIDs {
		if _, ok := b.nodes[id]; !ok {
			n := b.newNode(id, now)
			n.w, n.c = b.weigh(n)
			added = append(added, id)
		}
	}
	if len(added) == 0 {
		b.publish()
		return nil
	}
	slices.Sort(added)
	b.join(added)
	return nil
}

// Forget removes nodes and their reports.
func (b *Balancer) Forget(nodeIDs ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(b.cfg.Now())
	removed := false
	for _, id := range nodeIDs {
		if n, ok := b.nodes[id]; ok {
			n.pos = -1 // gone: relayout leaves it out
			delete(b.nodes, id)
			b.stale.remove(n)
			b.ramps.remove(n)
			removed = true
		}
	}
	if !removed {
		b.publish()
		return
	}
	old := b.snap.Load().ids
	ids, byPos := make([]string, 0, len(b.nodes)), make([]*node, 0, len(b.nodes))
	for i, id := range old {
		if n := b.byPos[i]; n.pos >= 0 {
			ids, byPos = append(ids, id), append(byPos, n)
		}
	}
	b.relayout(ids, byPos)
}

// newNode makes id known, ramping up if slow start is on. With b.mu held;
// the caller weighs it and re-lays the snapshot.
func (b *Balancer) newNode(id string, now time.Time) *node {
	n := &node{id: id, seen: now, ramp: 1, rampIdx: -1}
	b.nodes[id] = n
	b.startRamp(n, now)
	return n
}

// startRamp starts n's slow start at now (if slow start is on).
func (b *Balancer) startRamp(n *node, now time.Time) {
	if b.cfg.SlowStartWindow == 0 {
		return
	}
	n.rampFrom = now
	b.stepRamp(n, now)
}

// stepRamp sets n's slow start multiplier for now and queues its next step.
func (b *Balancer) stepRamp(n *node, now time.Time) {
	f, next, done := b.cfg.ramp(now.Sub(n.rampFrom))
	n.ramp = f
	if done {
		n.rampFrom = time.Time{}
		b.ramps.remove(n)
		return
	}
	b.ramps.set(n, addSat(b.since(n.rampFrom), int64(next)))
}

// advance brings the nodes that are due up to now: reports that have gone
// stale (older than Staleness: neutral, hysteresis forgotten) and ramp
// steps. It touches only those nodes. With b.mu held.
func (b *Balancer) advance(now time.Time) {
	t := b.since(now)
	for n := b.stale.head; n != nil && t > n.staleAt; n = b.stale.head {
		b.stale.remove(n)
		n.fresh, n.held = false, 0
		b.reweigh(n)
	}
	for at, n := b.ramps.head(); n != nil && t >= at; at, n = b.ramps.head() {
		b.stepRamp(n, now)
		b.reweigh(n)
	}
}

// since returns t as nanoseconds since b.epoch, the unit of queue keys and
// snapshot due times (exact, on the monotonic clock when t has one).
func (b *Balancer) since(t time.Time) int64 { return int64(t.Sub(b.epoch)) }

// addSat returns a + d, saturating at never.
func addSat(a, d int64) int64 {
	if d > 0 && a > never-d {
		return never
	}
	return a + d
}

// weigh returns n's selection weight and class from its state.
func (b *Balancer) weigh(n *node) (float64, class) {
	r := n.report
	w, c := b.cfg.NeutralScore*r.weight(), classEligible
	if n.fresh {
		w = b.cfg.score(r) * r.weight()
		if n.held != 0 {
			c = classOverloaded
		}
	}
	if r.Status == StatusDraining {
		c = classDraining
	}
	return w * n.ramp, c
}

// reweigh re-weighs a node that has a position and marks it for the next
// publish if its weight or class changed. With b.mu held.
func (b *Balancer) reweigh(n *node) {
	w, c := b.weigh(n)
	if w == n.w && c == n.c {
		return
	}
	if n.w > 0 {
		b.positive[n.c]--
	}
	b.dirty[n.c] = append(b.dirty[n.c], n.pos)
	if c != n.c {
		b.dirty[c] = append(b.dirty[c], n.pos)
	}
	n.w, n.c = w, c
	if n.w > 0 {
		b.positive[n.c]++
	}
}

// publish swaps in a snapshot with the re-weighed nodes, copying only their
// paths in the tree (or rebuilding it when they are many), if anything a
// selection sees has changed. With b.mu held.
func (b *Balancer) publish() {
	old := b.snap.Load()
	due := b.nextDue()
	k := 0
	for c := range b.dirty {
		slices.Sort(b.dirty[c])
		b.dirty[c] = slices.Compact(b.dirty[c])
		k += len(b.dirty[c])
	}
	if k == 0 && due == old.due {
		return
	}
	roots, written := old.roots, b.arena.written
	if n := len(b.byPos); cheaperToBuild(k, n) {
		roots = b.arena.build(b.byPos, false)
		b.copied += b.arena.written - written
	} else if k > 0 {
		if !b.arena.room(k, n) {
			roots = b.arena.compact(roots, n)
			b.copied += b.arena.written - written
			written = b.arena.written
		}
		for c, pos := range b.dirty {
			if len(pos) > 0 {
				roots[c] = b.arena.update(roots[c], 0, old.span, pos, b.byPos, class(c))
			}
		}
		b.touched += b.arena.written - written
	}
	for c := range b.dirty {
		b.dirty[c] = b.dirty[c][:0]
	}
	b.snap.Store(b.snapshot(old.ids, roots, due))
}

// join lays out the snapshot with the new nodes added (sorted, unique,
// already in b.nodes): one merge with the current ids, looking up only the
// new nodes. With b.mu held.
func (b *Balancer) join(added []string) {
	old := b.snap.Load().ids
	ids, byPos := make([]string, 0, len(old)+len(added)), make([]*node, 0, len(old)+len(added))
	i := 0
	for _, id := range added {
		for ; i < len(old) && old[i] < id; i++ {
			ids, byPos = append(ids, old[i]), append(byPos, b.byPos[i])
		}
		ids, byPos = append(ids, id), append(byPos, b.nodes[id])
	}
	ids, byPos = append(ids, old[i:]...), append(byPos, b.byPos[i:]...)
	b.relayout(ids, byPos)
}

// relayout publishes a snapshot for a new set of nodes, ids sorted and
// byPos their nodes: new positions and trees, O(n) with no map lookup (a
// map of every id, and a lookup of each, were half of what a join or leave
// cost; BenchmarkJoinLeave). With b.mu held.
func (b *Balancer) relayout(ids []string, byPos []*node) {
	b.byPos = byPos
	b.positive = [numClasses]int32{}
	for i, n := range byPos {
		n.pos = int32(i)
		if n.w > 0 {
			b.positive[n.c]++
		}
	}
	for c := range b.dirty {
		b.dirty[c] = b.dirty[c][:0]
	}
	b.snap.Store(b.snapshot(ids, b.arena.build(b.byPos, true), b.nextDue()))
}

// pos returns id's position in s. A binary search instead of a map: a map
// of every id had to be built anew for each join and leave, half of what
// they cost (BenchmarkJoinLeave).
func (s *snapshot) pos(id string) (int, bool) {
	return slices.BinarySearch(s.ids, id)
}

func (b *Balancer) snapshot(ids []string, roots [numClasses]uint32, due int64) *snapshot {
	s := &snapshot{ids: ids, positive: b.positive, due: due}
	s.trees = trees{nodes: b.arena.nodes, roots: roots, span: rootSpan(len(ids))}
	for c, root := range roots {
		s.total[c], s.count[c] = s.nodes[root].totals()
	}
	for s.lowest < classDraining && s.count[s.lowest] == 0 {
		s.lowest++
	}
	return s
}

// nextDue returns when the snapshot goes out of date: 1 ns after the
// earliest fresh report's staleAt (a report exactly Staleness old is still
// fresh) or the earliest ramp step, whichever is first; never if neither.
func (b *Balancer) nextDue() int64 {
	ramp, _ := b.ramps.head()
	return min(addSat(b.stale.first(), 1), ramp)
}

// current returns the snapshot, brought up to date first if it is due.
// Selections take b.mu only then, and do only the work that is due.
func (b *Balancer) current() *snapshot {
	s := b.snap.Load()
	if s.due == never || b.since(b.cfg.Now()) < s.due {
		return s
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(b.cfg.Now())
	b.publish()
	return b.snap.Load()
}

// draw returns a position of class s.lowest drawn with probability
// proportional to its weight (uniformly if the class weighs nothing) from
// 64 random bits, exactly as the seed's cumulative search: x uniform in
// [0, total), the position whose cumulative interval holds x.
func (s *snapshot) draw(u uint64) int {
	c := s.lowest
	if total := s.total[c]; total > 0 {
		return s.weighted(c, float64(u>>11)*0x1p-53*total)
	}
	return s.kth(c, int32((u>>32)*uint64(s.count[c])>>32))
}

// Select picks one node, among all known nodes when candidates is nil or
// among candidates otherwise (unknown candidates count as neutral).
func (b *Balancer) Select(candidates []string) (string, error) {
	s := b.current()
	if candidates == nil {
		if len(s.ids) == 0 {
			return "", ErrNoNodes
		}
		return s.ids[s.draw(b.rand())], nil
	}
	var buf subsetBuf
	ps, names := b.subset(s, candidates, &buf)
	if len(ps.idx) == 0 {
		return "", ErrNoNodes
	}
	return names[ps.idx[ps.draw(b.rand())]], nil
}

// SelectN picks up to n distinct nodes by weighted sampling without
// replacement, primary first; fewer than n only when the class picked from
// (eligible, else overloaded, else draining) has fewer nodes.
func (b *Balancer) SelectN(candidates []string, n int) ([]string, error) {
	if n < 1 {
		return nil, ErrInvalidCount
	}
	s := b.current()
	if candidates != nil {
		var buf subsetBuf
		ps, names := b.subset(s, candidates, &buf)
		if len(ps.idx) == 0 {
			return nil, ErrNoNodes
		}
		items := drawN(n, len(ps.idx), ps.positive,
			func(u uint64) int { return int(ps.idx[ps.draw(u)]) },
			func() pickSet { return ps }, b.rand)
		out := make([]string, len(items))
		for i, it := range items {
			out[i] = names[it]
		}
		return out, nil
	}
	if len(s.ids) == 0 {
		return nil, ErrNoNodes
	}
	c := s.lowest
	positive := s.positive[c]
	if s.total[c] == 0 { // uniform: every member can be drawn
		positive = s.count[c]
	}
	items := drawN(n, int(s.count[c]), int(positive), s.draw,
		func() pickSet { return s.list(c) }, b.rand)
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = s.ids[it]
	}
	return out, nil
}

// subsetBuf keeps small candidate selections off the heap.
type subsetBuf struct {
	names [32]string
	w     [32]float64
	c     [32]class
	idx   [32]int32
	cum   [32]float64
}

// subset builds the pick set over distinct candidates; it returns the
// candidate names that the set's positions index. Each known candidate
// costs one O(log n) walk of the tree.
func (b *Balancer) subset(s *snapshot, candidates []string, buf *subsetBuf) (pickSet, []string) {
	names, ws, cs := buf.names[:0], buf.w[:0], buf.c[:0]
	var dup map[string]bool
	if len(candidates) > len(buf.names) {
		dup = make(map[string]bool, len(candidates))
	}
	neutral := b.cfg.NeutralScore
	for _, id := range candidates {
		if dup != nil {
			if dup[id] {
				continue
			}
			dup[id] = true
		} else if slices.Contains(names, id) {
			continue
		}
		w, c := neutral, classEligible
		if i, ok := s.pos(id); ok {
			w, c = s.at(int(i))
		}
		names, ws, cs = append(names, id), append(ws, w), append(cs, c)
	}
	ps := buildPickSet(len(names), func(i int) (float64, class) { return ws[i], cs[i] }, buf.idx[:0], buf.cum[:0])
	return ps, names
}

// NodeState describes one node for status pages.
type NodeState struct {
	ID        string
	Status    string        // StatusUp or StatusDraining
	Weight    float64       // the node's weight (1 unless reported)
	Score     float64       // selection weight: composite score × Weight × SlowStart
	Eligible  bool          // takes picks now (not excluded, not draining)
	Reason    string        // why not eligible, e.g. "cpu 95.0% > 90.0%" or "recovering: cpu 87.0% > 85.0%"
	HasReport bool          // a report has been received
	Stale     bool          // the last report is older than Staleness
	Age       time.Duration // since the last report; 0 if none
	Report    Report        // the last report

	// Recovering: excluded only by hysteresis, its value back at or under
	// the threshold but not yet at or under threshold − margin.
	Recovering bool
	// SlowStart is the slow start multiplier in Score: in
	// [SlowStartMinShare, 1) while the node ramps up, 1 otherwise.
	SlowStart float64
	// Note says what else shapes its picks, e.g. "slow start: 40% of its
	// share"; "" when nothing does.
	Note string
}

// Nodes returns the state of every known node, sorted by id.
func (b *Balancer) Nodes() []NodeState {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Now()
	b.advance(now)
	b.publish()
	out := make([]NodeState, 0, len(b.byPos))
	for _, n := range b.byPos { // sorted by id
		st := NodeState{
			ID: n.id, Status: StatusUp, Weight: n.report.weight(), Score: n.w,
			Eligible: n.c == classEligible, HasReport: !n.at.IsZero(), Report: n.report,
			SlowStart: n.ramp,
		}
		if n.held != 0 { // only while fresh
			st.Reason = b.cfg.reason(n.report, n.held)
			st.Recovering = b.cfg.exclusion(n.report) == underLimits
		}
		if n.report.Status == StatusDraining {
			st.Status, st.Reason = StatusDraining, StatusDraining
		}
		if st.HasReport {
			st.Age, st.Stale = now.Sub(n.at), !n.fresh
		}
		if n.ramp < 1 {
			st.Note = fmt.Sprintf("slow start: %.0f%% of its share", 100*n.ramp)
		}
		out = append(out, st)
	}
	return out
}

// Counts returns how many nodes are known and how many are eligible (fresh
// and under every threshold, or neutral, and not draining) now. It reads
// the snapshot: no lock unless a report has just gone stale, no allocation.
func (b *Balancer) Counts() (known, eligible int) {
	s := b.current()
	return len(s.ids), int(s.count[classEligible])
}

// Len returns the number of known nodes.
func (b *Balancer) Len() int { return len(b.snap.Load().ids) }
