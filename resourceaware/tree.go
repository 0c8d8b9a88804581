package resourceaware

// numClasses is the number of selection classes (see class).
const numClasses = 3

// fanout is the number of slots of a tree node.
const fanout = 8

// The weight trees hold every node's selection weight by snapshot position,
// one tree per class, for selections to walk down in O(log n) and reports to
// change in O(log n) without touching what readers hold.
//
// Each is a persistent tree of fanout-wide nodes. A node whose slots span
// span positions holds each slot's total weight and how many of its
// positions are in the tree's class; a bottom node (span 1) holds the
// positions themselves. A selection scans one row of 8 weights (one cache
// line) per level. A report copies the nodes on its position's path (5 at
// 10,000 nodes, 3 at 100; twice that when its class changes), recomputing
// each copied slot from the node below, and publishes new roots: nodes once
// published are never written again, so readers need no lock, and no sum is
// ever updated by adding a delta, so rounding cannot drift however many
// reports arrive. A class tree is sparse: a subtree without members is the
// shared empty node 0, so the trees of the rare classes (overloaded,
// draining) cost little, and a heartbeat that keeps its class copies 640
// bytes.
//
// Nodes live in an arena, a slice that the writer only appends to and that
// holds no pointers (children are indices): copying a path allocates nothing
// and the garbage collector never scans the trees. When the arena is full
// the live trees are copied into a new one four times their size (old
// snapshots keep the old arena alive while readers use them), which costs
// O(1) amortised per report. When one publish re-weighs so many positions
// that copying their paths would write more nodes than building the trees
// afresh (many reports going stale at once, nodes that were added together
// ramping together), it builds them instead, in the arena's free part when
// they fit.
//
// Why, measured on the shared 2-core machine this was written on (CPU time
// per heartbeat at 10,000 nodes, GC included, three interleaved runs under a
// load average of ~9): the seed rebuilt flat cumulative arrays on every
// report, 290–460 µs; copying a path of heap-allocated binary nodes (15
// allocations a report) 3.8–5.1 µs, most of it allocating them and
// collecting them; this layout 1.4–2.4 µs (0.6–0.8 µs at 10 nodes). On the
// way, one fanout-8 tree for all classes in an arena (1.6 KB a path) cost
// ~2.3 µs: the bytes copied and zeroed per report are what is left to pay,
// hence a tree per class.
type tnode struct {
	sum [fanout]float64 // weight per slot
	cnt [fanout]int32   // members per slot
	kid [fanout]uint32  // arena index of the node below each slot; 0 (empty) when cnt is 0, unused in bottom nodes
}

// rootSpan returns the slot span of the root of a tree over n positions.
func rootSpan(n int) int {
	span := 1
	for span*fanout < n {
		span *= fanout
	}
	return span
}

// depth returns the number of levels of a tree whose root spans span.
func depth(span int) int {
	d := 1
	for ; span > 1; span /= fanout {
		d++
	}
	return d
}

// treeNodes returns how many nodes a dense tree over n positions has.
func treeNodes(n int) int {
	count := 0
	for span := 1; n > 0; span *= fanout {
		nodes := (n + span*fanout - 1) / (span * fanout)
		count += nodes
		if nodes == 1 {
			break
		}
	}
	return count
}

// totals returns a node's total weight and member count.
func (t *tnode) totals() (sum float64, cnt int32) {
	for j := range fanout {
		sum += t.sum[j]
		cnt += t.cnt[j]
	}
	return sum, cnt
}

// setLeaf sets slot j of a bottom node of class c's tree from n.
func (t *tnode) setLeaf(j int, n *node, c class) {
	t.sum[j], t.cnt[j] = 0, 0
	if n.c == c {
		t.sum[j], t.cnt[j] = n.w, 1
	}
}

// setKid points slot j at node k (arena index ki) and copies its totals.
func (t *tnode) setKid(j int, ki uint32, k *tnode) {
	t.kid[j] = ki
	t.sum[j], t.cnt[j] = k.totals()
	if t.cnt[j] == 0 {
		t.kid[j] = 0
	}
}

// arena is the writer's side of the trees: nodes[0] is the empty node,
// nodes[1:used] are written (and never again), the rest is free.
type arena struct {
	nodes   []tnode
	used    int
	written int // nodes written since the first arena (tests read it)
}

func (a *arena) alloc() uint32 {
	a.used++
	a.written++
	return uint32(a.used - 1)
}

// reset replaces the arena by a new one with room for trees over n
// positions.
func (a *arena) reset(n int) {
	written := a.written
	*a = newArena(n)
	a.written = written
}

// newArena returns an empty arena with room for trees over n positions
// and their updates: four times a dense tree.
func newArena(n int) arena {
	return arena{nodes: make([]tnode, max(4*treeNodes(n), 64)), used: 1}
}

// build builds the trees over byPos and returns their roots: into the
// free part of the arena when they fit and fresh is false, else into a new
// arena.
func (a *arena) build(byPos []*node, fresh bool) (roots [numClasses]uint32) {
	n := len(byPos)
	if fresh || a.used+numClasses*treeNodes(n) > len(a.nodes) {
		a.reset(n)
	}
	if n == 0 {
		return roots
	}
	var build func(lo, span int, c class) uint32
	build = func(lo, span int, c class) uint32 {
		var t tnode
		for j := range fanout {
			at := lo + j*span
			if at >= n {
				break
			}
			if span == 1 {
				t.setLeaf(j, byPos[at], c)
			} else if ki := build(at, span/fanout, c); ki != 0 {
				t.setKid(j, ki, &a.nodes[ki])
			}
		}
		if _, cnt := t.totals(); cnt == 0 {
			return 0
		}
		ti := a.alloc()
		a.nodes[ti] = t
		return ti
	}
	for c := range class(numClasses) {
		roots[c] = build(0, rootSpan(n), c)
	}
	return roots
}

// compact copies the live trees over n positions into a new arena (four
// times a dense tree, as build) and returns their new roots: when the arena
// is full this is cheaper than building from the nodes.
func (a *arena) compact(roots [numClasses]uint32, n int) [numClasses]uint32 {
	old := a.nodes
	a.reset(n)
	var cp func(ti uint32, span int) uint32
	cp = func(ti uint32, span int) uint32 {
		if ti == 0 {
			return 0
		}
		ni := a.alloc()
		a.nodes[ni] = old[ti]
		if span > 1 {
			t := &a.nodes[ni]
			for j := range fanout {
				t.kid[j] = cp(t.kid[j], span/fanout)
			}
		}
		return ni
	}
	for c := range roots {
		roots[c] = cp(roots[c], rootSpan(n))
	}
	return roots
}

// room reports whether copying k paths of a tree over n positions fits in
// the free part of the arena.
func (a *arena) room(k, n int) bool {
	return a.used+k*depth(rootSpan(n)) <= len(a.nodes)
}

// cheaperToBuild reports whether building the trees over n positions
// writes fewer nodes than copying k paths.
func cheaperToBuild(k, n int) bool {
	return k*depth(rootSpan(n)) > treeNodes(n)
}

// update returns the root of a copy of class c's tree at ti (spanning from
// lo, slot span span) in which the positions pos (sorted, distinct, in its
// range) take their weight and membership from byPos. It copies only the
// nodes on their paths, each once (there must be room, see room), and
// returns 0 for a tree left without members.
func (a *arena) update(ti uint32, lo, span int, pos []int32, byPos []*node, c class) uint32 {
	ni := a.alloc()
	nn := &a.nodes[ni]
	*nn = a.nodes[ti]
	for len(pos) > 0 {
		j := (int(pos[0]) - lo) / span
		if span == 1 {
			nn.setLeaf(j, byPos[pos[0]], c)
			pos = pos[1:]
			continue
		}
		end := int32(lo + (j+1)*span)
		k := 1
		for k < len(pos) && pos[k] < end {
			k++
		}
		ki := a.update(nn.kid[j], lo+j*span, span/fanout, pos[:k], byPos, c)
		nn.setKid(j, ki, &a.nodes[ki])
		pos = pos[k:]
	}
	if _, cnt := nn.totals(); cnt == 0 {
		return 0
	}
	return ni
}

// trees is the readers' side: published roots in an arena. Its methods
// allocate nothing.
type trees struct {
	nodes []tnode
	roots [numClasses]uint32
	span  int // the roots' slot span
}

// at returns the weight and class of position i.
func (tr *trees) at(i int) (float64, class) {
	for c, root := range tr.roots {
		t, k := &tr.nodes[root], i
		for span := tr.span; span > 1; span /= fanout {
			j := k / span
			t, k = &tr.nodes[t.kid[j]], k-j*span
		}
		if t.cnt[k] != 0 {
			return t.sum[k], class(c)
		}
	}
	return 0, classEligible // not reached: a position has one class
}

// weighted returns the position in class c at which the cumulative weight
// (in position order) first exceeds x, for 0 <= x and a class that weighs
// more than 0. It only enters slots of positive weight, so a zero-weight
// position is never returned, and if rounding carries x past the end it
// takes the last position of positive weight, as the seed's cumulative
// search did.
func (tr *trees) weighted(c class, x float64) int {
	t, span, pos := &tr.nodes[tr.roots[c]], tr.span, 0
	for {
		j, last := 0, -1
		for ; j < fanout; j++ {
			s := t.sum[j]
			if s == 0 {
				continue
			}
			if x < s {
				break
			}
			x -= s
			last = j
		}
		if j == fanout {
			j = last
		}
		pos += j * span
		if span == 1 {
			return pos
		}
		t, span = &tr.nodes[t.kid[j]], span/fanout
	}
}

// kth returns the position of the k-th (0-based) member of class c, for k
// less than the class's count.
func (tr *trees) kth(c class, k int32) int {
	t, span, pos := &tr.nodes[tr.roots[c]], tr.span, 0
	for {
		j := 0
		for ; j < fanout-1 && k >= t.cnt[j]; j++ {
			k -= t.cnt[j]
		}
		pos += j * span
		if span == 1 {
			return pos
		}
		t, span = &tr.nodes[t.kid[j]], span/fanout
	}
}

// list returns the members of class c in position order as an explicit
// pick set (O(n); SelectN's rare fallback).
func (tr *trees) list(c class) pickSet {
	_, cnt := tr.nodes[tr.roots[c]].totals()
	ps := pickSet{idx: make([]int32, 0, cnt), cum: make([]float64, 0, cnt)}
	total := 0.0
	var walk func(t *tnode, lo, span int)
	walk = func(t *tnode, lo, span int) {
		for j := range fanout {
			if t.cnt[j] == 0 {
				continue
			}
			if span > 1 {
				walk(&tr.nodes[t.kid[j]], lo+j*span, span/fanout)
				continue
			}
			if w := t.sum[j]; total+w > total {
				ps.positive++
			}
			total += t.sum[j]
			ps.idx, ps.cum = append(ps.idx, int32(lo+j)), append(ps.cum, total)
		}
	}
	walk(&tr.nodes[tr.roots[c]], 0, tr.span)
	if total == 0 {
		ps.cum, ps.positive = nil, len(ps.idx)
	}
	return ps
}
