package ring

import (
	"cmp"
	"fmt"
	"math/bits"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// Snapshot is an immutable ring: one consistent membership that callers can
// hold to answer many lookups. All methods are safe for concurrent use.
type Snapshot struct {
	vnodes  int
	hash    func(string) uint64 // nil means XXH64 (seed 0)
	members []Member            // sorted by ID
	drain   []bool              // drain[i] == members[i].Draining, dense for the walk
	points  []point             // sorted by (hash, member ID)
	table   []uint32            // table[p] = first point whose hash>>shift >= p; len 1<<bits + 1
	shift   uint
	nDrain  int // members with Draining set
}

// point is a ring point. Hash and owner share a cache line, so a lookup
// touches the prefix table and then, usually, one line of points.
type point struct {
	hash  uint64
	owner uint32 // index into Snapshot.members
}

// smallSet is how many distinct members a lookup tracks on the stack before
// it allocates a bitset.
const smallSet = 16

// Len returns the number of members.
func (s *Snapshot) Len() int { return len(s.members) }

// Points returns the number of points on the ring.
func (s *Snapshot) Points() int { return len(s.points) }

// VirtualNodes returns the points per unit of weight the ring was built with.
func (s *Snapshot) VirtualNodes() int { return s.vnodes }

// Members returns a copy of the membership, sorted by ID.
func (s *Snapshot) Members() []Member { return slices.Clone(s.members) }

// Member returns the member with this id.
func (s *Snapshot) Member(id string) (Member, bool) {
	i, ok := s.index(id)
	if !ok {
		return Member{}, false
	}
	return s.members[i], true
}

func (s *Snapshot) index(id string) (int, bool) {
	return slices.BinarySearchFunc(s.members, id, func(m Member, id string) int { return cmp.Compare(m.ID, id) })
}

func (s *Snapshot) hashKey(key string) uint64 {
	if s.hash == nil {
		return xxhash.Sum64String(key)
	}
	return s.hash(key)
}

// search returns the index of the first point with hash >= h, wrapping to 0.
func (s *Snapshot) search(h uint64) int {
	p := h >> s.shift
	lo, hi := int(s.table[p]), int(s.table[p+1])
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.points[m].hash < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(s.points) {
		return 0
	}
	return lo
}

// skipDraining reports whether lookups must walk past draining members.
func (s *Snapshot) skipDraining() bool {
	return s.nDrain > 0 && s.nDrain < len(s.members)
}

// Get returns the member that owns key.
func (s *Snapshot) Get(key string) (string, error) {
	if len(s.points) == 0 {
		return "", ErrEmpty
	}
	i := s.search(s.hashKey(key))
	if s.skipDraining() {
		for s.drain[s.points[i].owner] {
			if i++; i == len(s.points) {
				i = 0
			}
		}
	}
	return s.members[s.points[i].owner].ID, nil
}

// Walk calls fn for each distinct member clockwise from key's position,
// draining or not, until fn returns false or every member was visited. It
// shows what a lookup passes over; it allocates, so it is not for hot paths.
func (s *Snapshot) Walk(key string, fn func(Member) bool) {
	if len(s.points) == 0 {
		return
	}
	seen := make([]bool, len(s.members))
	i := s.search(s.hashKey(key))
	for walked, visited := 0, 0; walked < len(s.points) && visited < len(s.members); walked++ {
		o := s.points[i].owner
		if i++; i == len(s.points) {
			i = 0
		}
		if seen[o] {
			continue
		}
		seen[o] = true
		visited++
		if !fn(s.members[o]) {
			return
		}
	}
}

// Shares returns the fraction of the hash space each member owns (its
// points' arcs), by member id; the fractions sum to 1. Draining is ignored.
func (s *Snapshot) Shares() map[string]float64 {
	out := make(map[string]float64, len(s.members))
	if len(s.points) == 0 {
		return out
	}
	prev := s.points[len(s.points)-1].hash // the arc of point 0 wraps around
	for _, p := range s.points {
		out[s.members[p.owner].ID] += float64(p.hash-prev) / (1 << 64) // unsigned wrap-around
		prev = p.hash
	}
	if len(s.points) == 1 {
		out[s.members[s.points[0].owner].ID] = 1
	}
	return out
}

// KeyHash returns the hash the ring uses for key (XXH64, seed 0).
func (s *Snapshot) KeyHash(key string) uint64 { return s.hashKey(key) }

// GetN returns up to n distinct members for key, primary first, in ring
// order. It returns fewer than n only when fewer members are usable (members
// that are not draining, or all of them if all are draining).
func (s *Snapshot) GetN(key string, n int) ([]string, error) {
	return s.AppendN(nil, key, n)
}

// AppendN is GetN appending to dst; with enough capacity in dst and n <= 16
// it allocates nothing.
func (s *Snapshot) AppendN(dst []string, key string, n int) ([]string, error) {
	if n < 1 {
		return dst, ErrInvalidCount
	}
	if len(s.points) == 0 {
		return dst, ErrEmpty
	}
	skip := s.skipDraining()
	usable := len(s.members)
	if skip {
		usable -= s.nDrain
	}
	return s.walk(dst, s.search(s.hashKey(key)), min(n, usable), skip, nil)
}

// walk appends want distinct members found clockwise from point i. Members
// for which allowed (if non-nil) is false are passed over, and so are
// draining members when skip is set.
func (s *Snapshot) walk(dst []string, i, want int, skip bool, allowed func(uint32) bool) ([]string, error) {
	var small [smallSet]uint32
	found := small[:0] // distinct owners so far, while want <= smallSet
	var seen []uint64  // bitset of owners so far, when want > smallSet
	if want > smallSet {
		seen = make([]uint64, (len(s.members)+63)/64)
	}
	for got, walked := 0, 0; got < want && walked < len(s.points); walked++ {
		o := s.points[i].owner
		if i++; i == len(s.points) {
			i = 0
		}
		if (skip && s.drain[o]) || (allowed != nil && !allowed(o)) {
			continue
		}
		if seen == nil {
			if slices.Contains(found, o) {
				continue
			}
			found = append(found, o)
		} else {
			if seen[o/64]&(1<<(o%64)) != 0 {
				continue
			}
			seen[o/64] |= 1 << (o % 64)
		}
		dst = append(dst, s.members[o].ID)
		got++
	}
	return dst, nil
}

// GetFrom is GetN restricted to candidates: the answer equals that of a ring
// built from exactly the candidates (their weights and draining flags as in
// this ring; unknown candidates count as weight 1 and not draining).
// Duplicates in candidates are ignored. No candidates gives ErrEmpty.
func (s *Snapshot) GetFrom(key string, candidates []string, n int) ([]string, error) {
	return s.AppendFrom(nil, key, candidates, n)
}

// AppendFrom is GetFrom appending to dst. When every candidate is a member,
// there are at most 16 of them and dst has room, it allocates nothing.
func (s *Snapshot) AppendFrom(dst []string, key string, candidates []string, n int) ([]string, error) {
	if n < 1 {
		return dst, ErrInvalidCount
	}
	var small [smallSet]uint32
	idx := small[:0]
	if len(candidates) > smallSet {
		idx = make([]uint32, 0, len(candidates))
	}
	drained := 0
	for _, c := range candidates {
		i, ok := s.index(c)
		if !ok {
			return s.fromUnknown(dst, key, candidates, n)
		}
		if slices.Contains(idx, uint32(i)) {
			continue
		}
		idx = append(idx, uint32(i))
		if s.drain[i] {
			drained++
		}
	}
	if len(idx) == 0 {
		return dst, ErrEmpty
	}
	skip := drained > 0 && drained < len(idx)
	usable := len(idx)
	if skip {
		usable -= drained
	}
	var allowed func(uint32) bool
	if len(idx) <= smallSet {
		allowed = func(o uint32) bool { return slices.Contains(idx, o) }
	} else {
		set := make([]uint64, (len(s.members)+63)/64)
		for _, o := range idx {
			set[o/64] |= 1 << (o % 64)
		}
		allowed = func(o uint32) bool { return set[o/64]&(1<<(o%64)) != 0 }
	}
	return s.walk(dst, s.search(s.hashKey(key)), min(n, usable), skip, allowed)
}

// fromUnknown answers a restricted lookup naming non-members by building the
// ring of exactly the candidates.
func (s *Snapshot) fromUnknown(dst []string, key string, candidates []string, n int) ([]string, error) {
	ms := make([]Member, 0, len(candidates))
	for _, c := range candidates {
		if m, ok := s.Member(c); ok {
			ms = append(ms, m)
		} else {
			ms = append(ms, Member{ID: c, Weight: 1})
		}
	}
	next, err := normalizeAll(ms, true)
	if err != nil {
		return dst, err
	}
	tmp := derive(&Snapshot{vnodes: s.vnodes, hash: s.hash}, next)
	return tmp.AppendN(dst, key, n)
}

// derive builds the snapshot for membership next (normalized, sorted by ID,
// unique) from old, reusing old's points for every member whose weight did
// not change and merging in the points of the others.
func derive(old *Snapshot, next []Member) *Snapshot {
	s := &Snapshot{vnodes: old.vnodes, hash: old.hash, members: next, drain: make([]bool, len(next))}
	for i, m := range next {
		s.drain[i] = m.Draining
		if m.Draining {
			s.nDrain++
		}
	}

	// remap[o] is the new index of old member o, or -1 if its points go.
	remap := make([]int32, len(old.members))
	fresh := make([]bool, len(next))
	same := len(old.members) == len(next)
	for i, j := 0, 0; i < len(old.members) || j < len(next); {
		switch {
		case j == len(next) || (i < len(old.members) && old.members[i].ID < next[j].ID):
			remap[i], i, same = -1, i+1, false
		case i == len(old.members) || next[j].ID < old.members[i].ID:
			fresh[j], j, same = true, j+1, false
		default:
			if old.members[i].Weight == next[j].Weight {
				remap[i] = int32(j)
			} else {
				remap[i], fresh[j], same = -1, true, false
			}
			if i != j {
				same = false
			}
			i, j = i+1, j+1
		}
	}
	if same { // only draining flags changed: share the points
		s.points, s.table, s.shift = old.points, old.table, old.shift
		return s
	}

	var added []point
	var buf []byte
	for j, m := range next {
		if !fresh[j] {
			continue
		}
		for p := range points(s.vnodes, m.Weight) {
			buf = strconv.AppendInt(append(append(buf[:0], m.ID...), ':'), int64(p), 10)
			var h uint64
			if s.hash == nil {
				h = xxhash.Sum64(buf)
			} else {
				h = s.hash(string(buf))
			}
			added = append(added, point{h, uint32(j)})
		}
	}
	slices.SortFunc(added, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.owner, b.owner) // member index order is ID order
	})

	kept := 0
	for _, p := range old.points {
		if remap[p.owner] >= 0 {
			kept++
		}
	}
	s.points = make([]point, kept+len(added))
	k, a := 0, 0
	for _, p := range old.points {
		o := remap[p.owner]
		if o < 0 {
			continue
		}
		p.owner = uint32(o)
		for a < len(added) && (added[a].hash < p.hash || (added[a].hash == p.hash && added[a].owner < p.owner)) {
			s.points[k] = added[a]
			k, a = k+1, a+1
		}
		s.points[k] = p
		k++
	}
	copy(s.points[k:], added[a:])
	s.buildTable()
	return s
}

// buildTable indexes the points by the top bits of their hash so that a
// lookup binary-searches only the few points sharing its prefix. The table
// has about two slots per point (capped at 2^17 slots), so most slots hold
// zero or one point.
func (s *Snapshot) buildTable() {
	b := min(max(bits.Len(uint(len(s.points)))+1, 1), 17)
	s.shift = uint(64 - b)
	s.table = make([]uint32, 1<<b+1)
	// Count the points of each slot, then sum: table[p] is the number of
	// points below slot p, i.e. the index of the first point at or above
	// it. Both passes run in order, since the points are sorted.
	for _, p := range s.points {
		s.table[p.hash>>s.shift+1]++
	}
	for i := 1; i < len(s.table); i++ {
		s.table[i] += s.table[i-1]
	}
}

// normalizeAll validates members and returns them sorted by ID. Duplicate
// ids are an error unless dedupe is set, in which case the first wins.
func normalizeAll(members []Member, dedupe bool) ([]Member, error) {
	out := make([]Member, 0, len(members))
	for _, m := range members {
		m, err := m.normalize()
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	slices.SortStableFunc(out, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	for i := 1; i < len(out); i++ {
		if out[i].ID == out[i-1].ID {
			if !dedupe {
				return nil, fmt.Errorf("%w: %q given twice", ErrInvalidMember, out[i].ID)
			}
			out = slices.Delete(out, i, i+1)
			i--
		}
	}
	return out, nil
}
