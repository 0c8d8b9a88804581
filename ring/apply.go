package ring

import (
	"cmp"
	"math"
	"slices"
)

// change is one member's change: m (normalized) joins or replaces the member
// with its id, or, with remove, the member with m.ID leaves.
type change struct {
	m      Member
	remove bool
}

// edit is a change that does something to the ring.
type edit struct {
	change
	slot     uint32 // the member's slot (a joining member's is set by patch)
	had      bool   // the member was on the ring
	from, to int    // its points before and after
}

// apply returns the snapshot with chs (sorted by id, unique) applied. full,
// if not nil, is the membership that results, sorted by id (Set has it at
// hand). A change that moves few points is patched into the snapshot,
// sharing everything it does not touch (patch); one that moves many, or
// that the table no longer suits, makes the snapshot a fresh build would
// (rebuild, which reads the points that stay from old; build, if old has
// none), and then the changes are only counted, not recorded: a burst of
// 50,000 joins is one build.
func (old *Snapshot) apply(chs []change, full []Member) *Snapshot {
	// classify tells whether c does anything, and the member's slot,
	// presence and points before and after.
	classify := func(c change) (ed edit, ok bool) {
		o, had := old.ids.lookup(c.m.ID)
		ed = edit{change: c, slot: o, had: had}
		if had {
			e := old.entry(o)
			if !c.remove && e.member() == c.m {
				return ed, false
			}
			ed.from = points(old.vnodes, e.weight)
		} else if c.remove {
			return ed, false
		}
		if !c.remove {
			ed.to = points(old.vnodes, c.m.Weight)
		}
		return ed, true
	}
	moved, n, members, joins, edits := 0, old.n, old.nMembers, 0, 0
	for _, c := range chs {
		ed, ok := classify(c)
		if !ok {
			continue
		}
		switch {
		case !ed.had:
			members++
			joins++
		case c.remove:
			members--
		}
		moved += max(ed.to-ed.from, ed.from-ed.to)
		n += ed.to - ed.from
		edits++
	}
	if edits == 0 {
		return old
	}
	slots := old.nSlots + uint32(max(0, joins-old.free.size()))
	if moved > n/rebuildShare || !old.fits(n, slots) || int(slots) > 2*members+leafLen {
		if full == nil {
			full = old.merged(chs)
		}
		if old.n == 0 {
			return build(old.vnodes, old.hash, full)
		}
		return old.rebuild(full)
	}
	eds := make([]edit, 0, edits)
	for _, c := range chs {
		if ed, ok := classify(c); ok {
			eds = append(eds, ed)
		}
	}
	return old.patch(eds)
}

// merged returns old's membership with chs (sorted by id, unique) applied,
// sorted by id.
func (old *Snapshot) merged(chs []change) []Member {
	out := make([]Member, 0, old.nMembers+len(chs))
	k := 0
	for _, ch := range old.ids.chunks {
		for _, r := range ch {
			for k < len(chs) && chs[k].m.ID < r.id {
				if !chs[k].remove {
					out = append(out, chs[k].m) // joins
				}
				k++
			}
			if k < len(chs) && chs[k].m.ID == r.id {
				if !chs[k].remove {
					out = append(out, chs[k].m)
				}
				k++
				continue
			}
			out = append(out, old.entry(r.slot).member())
		}
	}
	for ; k < len(chs); k++ {
		if !chs[k].remove {
			out = append(out, chs[k].m)
		}
	}
	return out
}

// movedPoint is a point that a change adds or removes.
type movedPoint struct {
	hash  uint64
	owner uint32
	id    string // the owner's id, for points added
}

// patch applies edits to a copy of old that shares every slot leaf, id
// chunk and bucket the edits do not touch. It costs the points that move,
// times a sort, plus a copy of each bucket they fall in and of the bucket
// directory.
func (old *Snapshot) patch(edits []edit) *Snapshot {
	s := *old
	s.slots = slices.Clone(old.slots)
	mut := func(o uint32) *entry { // copies o's leaf once
		l := int(o >> leafBits)
		for l >= len(s.slots) {
			s.slots = append(s.slots, new(leaf))
		}
		if l < len(old.slots) && s.slots[l] == old.slots[l] {
			cp := *old.slots[l]
			s.slots[l] = &cp
		}
		return &s.slots[l][o&(leafLen-1)]
	}

	// Members. A slot freed here is reused only by a later change, so that
	// the points removed and added below never share an owner.
	var freed []uint32
	ops := make([]idOp, 0, len(edits))
	for k := range edits {
		ed := &edits[k]
		if !ed.had {
			ed.slot = take(&s.free, &s.nSlots)
			ops = append(ops, idOp{ed.m.ID, int64(ed.slot)})
		}
		e := mut(ed.slot)
		if ed.had {
			s.count(e, -1)
		}
		wasShed := ed.had && e.shed > 0
		if ed.remove {
			if wasShed {
				s.freeRank = s.freeRank.push(e.rank)
			}
			*e = entry{}
			s.nMembers--
			freed = append(freed, ed.slot)
			ops = append(ops, idOp{ed.m.ID, -1})
			continue
		}
		if !ed.had {
			s.nMembers++
		}
		e.set(ed.m)
		switch {
		case e.shed > 0 && !wasShed:
			e.rank = take(&s.freeRank, &s.nRanks)
		case e.shed == 0 && wasShed:
			s.freeRank = s.freeRank.push(e.rank)
			e.rank = 0
		}
		s.count(e, 1)
	}
	for _, o := range freed {
		s.free = s.free.push(o)
	}
	if len(ops) > 0 {
		s.ids = old.ids.update(ops)
	}

	// Points.
	nAdd, nRm := 0, 0
	for _, ed := range edits {
		nAdd += max(0, ed.to-ed.from)
		nRm += max(0, ed.from-ed.to)
	}
	rm, add := make([]movedPoint, 0, nRm), make([]movedPoint, 0, nAdd)
	ph := pointHasher{fn: s.hash}
	for _, ed := range edits {
		switch {
		case ed.to > ed.from:
			ph.startAt(ed.m.ID, ed.from)
			for range ed.to - ed.from {
				add = append(add, movedPoint{ph.sum(), ed.slot, ed.m.ID})
				ph.next()
			}
		case ed.to < ed.from:
			ph.startAt(ed.m.ID, ed.to)
			for range ed.from - ed.to {
				rm = append(rm, movedPoint{hash: ph.sum(), owner: ed.slot})
				ph.next()
			}
		}
		s.n += ed.to - ed.from
	}
	if len(rm) == 0 && len(add) == 0 {
		return &s // only flags or weights within a point changed: share the points
	}
	rm = s.sortMoved(rm, func(a, b movedPoint) int { return cmp.Compare(a.owner, b.owner) })
	add = s.sortMoved(add, func(a, b movedPoint) int { return cmp.Compare(a.id, b.id) })
	s.points = slices.Clone(old.points)
	var touched []int
	for len(rm) > 0 || len(add) > 0 {
		g := len(s.points)
		if len(rm) > 0 {
			g = int(rm[0].hash >> (s.gshift & 63))
		}
		if len(add) > 0 {
			g = min(g, int(add[0].hash>>(s.gshift&63)))
		}
		r, a := 0, 0
		for r < len(rm) && int(rm[r].hash>>(s.gshift&63)) == g {
			r++
		}
		for a < len(add) && int(add[a].hash>>(s.gshift&63)) == g {
			a++
		}
		nb := s.rebucket(old.points[g], rm[:r], add[:a])
		if old.points[g].fat() {
			s.nFat--
		}
		if nb.fat() {
			s.nFat++
		}
		s.points[g] = nb
		touched = append(touched, g)
		rm, add = rm[r:], add[a:]
	}
	s.relink(old, touched)
	return &s
}

// sortMoved returns ps sorted by hash, and by tie among equal hashes (they
// are rare: tie runs only then). A large batch is first spread by bucket
// (one counting pass), and then each bucket's few dozen points are sorted:
// one comparison sort over all of them was most of a patch of a few
// thousand members at 40,000 (BenchmarkApplyShare).
func (s *Snapshot) sortMoved(ps []movedPoint, tie func(a, b movedPoint) int) []movedPoint {
	less := func(a, b movedPoint) int {
		if a.hash != b.hash {
			return cmp.Compare(a.hash, b.hash)
		}
		return tie(a, b)
	}
	nb := len(s.points)
	if len(ps) < 4*nb || nb < 2 {
		slices.SortFunc(ps, less)
		return ps
	}
	shift := s.gshift & 63
	start := make([]int32, nb+1)
	for _, p := range ps {
		start[p.hash>>shift+1]++
	}
	for g := 1; g <= nb; g++ {
		start[g] += start[g-1]
	}
	out := make([]movedPoint, len(ps))
	at := slices.Clone(start[:nb])
	for _, p := range ps {
		g := p.hash >> shift
		out[at[g]] = p
		at[g]++
	}
	for g := range nb {
		slices.SortFunc(out[start[g]:start[g+1]], less)
	}
	return out
}

// diff returns the changes that turn s's membership into next, sorted by
// id, and true; or false if next is not valid, normalized and sorted by
// unique id (normalizeAll must see it then). It is one pass over both: a
// member equal to the one on the ring costs one comparison (it is valid, as
// that one is); only the others are validated and checked for order.
func (s *Snapshot) diff(next []Member) ([]change, bool) {
	var out []change
	j, matched := 0, false // matched: next[j-1] is a member of s
	add := func() bool {   // next[j] is new or changed
		m, err := next[j].normalize()
		if err != nil || m.Weight != next[j].Weight || math.Float64bits(m.Shed) != math.Float64bits(next[j].Shed) {
			return false
		}
		out = append(out, change{m: m})
		return true
	}
	inOrder := func() bool { return j == 0 || next[j-1].ID < next[j].ID }
	for _, ch := range s.ids.chunks {
		for _, r := range ch {
			for j < len(next) && next[j].ID != r.id && next[j].ID < r.id { // joins
				if !inOrder() || !add() {
					return nil, false
				}
				j, matched = j+1, false
			}
			if j < len(next) && next[j].ID == r.id {
				// Two members of s in a row are in order: s's order.
				if !matched && !inOrder() {
					return nil, false
				}
				if next[j] != s.entry(r.slot).member() && !add() {
					return nil, false
				}
				j, matched = j+1, true
				continue
			}
			out = append(out, change{m: Member{ID: r.id}, remove: true})
		}
	}
	for ; j < len(next); j++ {
		if !inOrder() || !add() {
			return nil, false
		}
	}
	return out, true
}
