package resourceaware

import (
	crand "crypto/rand"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Balancer keeps the health of a set of nodes and picks among them.
type Balancer struct {
	cfg  Config
	rand func() uint64

	mu    sync.Mutex       // guards nodes, byPos and rebuilding the snapshot
	nodes map[string]*node // every known node
	byPos []*node          // byPos[i] is the node at snapshot position i

	snap atomic.Pointer[snapshot]
}

type node struct {
	id     string
	report Report
	at     time.Time // when the report was received; zero if none yet

	// As last assessed (see assess), so a report re-scores only its node.
	w       float64
	c       class
	fresh   bool
	staleAt time.Time // at + Staleness
}

// snapshot is an immutable view that selections read without locking.
type snapshot struct {
	ids        []string         // sorted; shared while the set of nodes is unchanged
	index      map[string]int32 // position of each id; shared likewise
	weight     []float64        // selection weight per position: score × node weight
	class      []class
	all        pickSet   // the pick set over every known node
	validUntil time.Time // after this a fresh report turns stale; zero if none
}

// New returns a Balancer with no nodes.
func New(cfg Config) (*Balancer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Balancer{cfg: cfg.withDefaults(), nodes: map[string]*node{}}
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
	b.snap.Store(&snapshot{index: map[string]int32{}})
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

// Report records a health report for nodeID, received now. An invalid
// report returns an error wrapping ErrInvalidReport and changes nothing.
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
	n, ok := b.nodes[nodeID]
	if !ok {
		n = &node{id: nodeID}
		b.nodes[nodeID] = n
	}
	n.report, n.at, n.staleAt = r, now, now.Add(b.cfg.Staleness)
	n.w, n.c, _, n.fresh = b.assess(n, now)
	b.rebuild(now, !ok)
	return nil
}

// Add makes nodes known without a report (they count as neutral until they
// report). Known nodes are left as they are.
func (b *Balancer) Add(nodeIDs ...string) error {
	for _, id := range nodeIDs {
		if err := ValidateID(id); err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	added := false
	for _, id := range nodeIDs {
		if _, ok := b.nodes[id]; !ok {
			n := &node{id: id}
			n.w, n.c, _, n.fresh = b.assess(n, time.Time{})
			b.nodes[id] = n
			added = true
		}
	}
	if added {
		b.rebuild(b.cfg.Now(), true)
	}
	return nil
}

// Forget removes nodes and their reports.
func (b *Balancer) Forget(nodeIDs ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	removed := false
	for _, id := range nodeIDs {
		if _, ok := b.nodes[id]; ok {
			delete(b.nodes, id)
			removed = true
		}
	}
	if removed {
		b.rebuild(b.cfg.Now(), true)
	}
}

// rebuild publishes a new snapshot for now, re-assessing every node if a
// report may have gone stale since the last one. With b.mu held.
func (b *Balancer) rebuild(now time.Time, membership bool) {
	old := b.snap.Load()
	reassess := !old.validUntil.IsZero() && now.After(old.validUntil)
	s := &snapshot{ids: old.ids, index: old.index}
	if membership {
		s.ids = slices.Sorted(maps.Keys(b.nodes))
		s.index = make(map[string]int32, len(s.ids))
		b.byPos = b.byPos[:0]
		for i, id := range s.ids {
			s.index[id] = int32(i)
			b.byPos = append(b.byPos, b.nodes[id])
		}
	}
	s.weight = make([]float64, len(s.ids))
	s.class = make([]class, len(s.ids))
	for i, n := range b.byPos {
		if reassess {
			n.w, n.c, _, n.fresh = b.assess(n, now)
		}
		s.weight[i], s.class[i] = n.w, n.c
		if n.fresh {
			if s.validUntil.IsZero() || n.staleAt.Before(s.validUntil) {
				s.validUntil = n.staleAt
			}
		}
	}
	s.all = buildPickSet(len(s.ids), func(i int) (float64, class) { return s.weight[i], s.class[i] }, make([]int32, 0, len(s.ids)), make([]float64, 0, len(s.ids)))
	b.snap.Store(s)
}

// assess computes a node's selection weight and class at now, the
// threshold its fresh report is above, and whether the report is fresh.
func (b *Balancer) assess(n *node, now time.Time) (w float64, c class, o overload, fresh bool) {
	r := n.report
	fresh = !n.at.IsZero() && now.Sub(n.at) <= b.cfg.Staleness
	w = b.cfg.NeutralScore * r.weight()
	if fresh {
		w = b.cfg.score(r) * r.weight()
		if o = b.cfg.exclusion(r); o != underLimits {
			c = classOverloaded
		}
	}
	if r.Status == StatusDraining {
		c = classDraining
	}
	return w, c, o, fresh
}

// current returns the snapshot, rebuilt first if a report has gone stale.
func (b *Balancer) current() *snapshot {
	s := b.snap.Load()
	if s.validUntil.IsZero() || !b.cfg.Now().After(s.validUntil) {
		return s
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now := b.cfg.Now(); now.After(b.snap.Load().validUntil) {
		b.rebuild(now, false)
	}
	return b.snap.Load()
}

// Select picks one node, among all known nodes when candidates is nil or
// among candidates otherwise (unknown candidates count as neutral).
func (b *Balancer) Select(candidates []string) (string, error) {
	s := b.current()
	if candidates == nil {
		if len(s.all.idx) == 0 {
			return "", ErrNoNodes
		}
		return s.ids[s.all.idx[s.all.draw(b.rand())]], nil
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
	ps, names := &s.all, s.ids
	if candidates != nil {
		var buf subsetBuf
		sub, nm := b.subset(s, candidates, &buf)
		ps, names = &sub, nm
	}
	if len(ps.idx) == 0 {
		return nil, ErrNoNodes
	}
	pos := ps.drawN(n, b.rand)
	out := make([]string, len(pos))
	for i, p := range pos {
		out[i] = names[ps.idx[p]]
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
// candidate names that the set's positions index.
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
		if i, ok := s.index[id]; ok {
			w, c = s.weight[i], s.class[i]
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
	Score     float64       // selection weight: composite score × Weight
	Eligible  bool          // takes picks now (not excluded, not draining)
	Reason    string        // why not eligible, e.g. "cpu 95.0% > 90.0%"
	HasReport bool          // a report has been received
	Stale     bool          // the last report is older than Staleness
	Age       time.Duration // since the last report; 0 if none
	Report    Report        // the last report
}

// Nodes returns the state of every known node, sorted by id.
func (b *Balancer) Nodes() []NodeState {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.cfg.Now()
	out := make([]NodeState, 0, len(b.byPos))
	for _, n := range b.byPos { // sorted by id
		id := n.id
		w, c, o, fresh := b.assess(n, now)
		why := b.cfg.describe(o, n.report)
		if c == classDraining {
			why = StatusDraining
		}
		st := NodeState{
			ID: id, Status: StatusUp, Weight: n.report.weight(), Score: w,
			Eligible: c == classEligible, Reason: why,
			HasReport: !n.at.IsZero(), Report: n.report,
		}
		if n.report.Status == StatusDraining {
			st.Status = StatusDraining
		}
		if st.HasReport {
			st.Age, st.Stale = now.Sub(n.at), !fresh
		}
		out = append(out, st)
	}
	return out
}

// Len returns the number of known nodes.
func (b *Balancer) Len() int { return len(b.snap.Load().ids) }
