package ring

import (
	"cmp"
	"math"
	"math/bits"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// maxTableBits caps the prefix table at 2^17 slots (512 KiB). Up to about
// 65,000 points the table has two slots per point; at 1.5 M points (10,000
// members × 150) a slot holds about 11 points, 88 bytes, which the binary
// search covers in one or two cache lines.
const maxTableBits = 17

// rebuildShare: when the points of new or re-weighted members are more than
// this fraction of the ring, derive builds the whole ring afresh instead of
// sorting them and merging them in. A fresh build costs about two hashes per
// point; sorting k new points with a comparison sort costs k·log k compares,
// which overtakes the fresh build at around an eighth of the ring.
const rebuildShare = 8

// rawPoint is a point before it is packed into the ring.
type rawPoint struct {
	hash  uint64
	owner uint32
}

// derive builds the snapshot for membership next (normalized, sorted by ID,
// unique) from old. It keeps old's points for every member whose weight did
// not change: if no point changes at all (only draining or shed flags did)
// the points are shared; if few change, the new ones are sorted and merged
// into old's in one pass; otherwise the ring is built afresh.
func derive(old *Snapshot, next []Member) *Snapshot {
	s := &Snapshot{vnodes: old.vnodes, hash: old.hash, members: next}
	s.setFlags()

	// remap[o] is the new index of old member o, or -1 if its points go;
	// fresh[j] is set when member j needs its points computed.
	remap := make([]int32, len(old.members))
	fresh := make([]bool, len(next))
	same := len(old.members) == len(next)
	kept, added := 0, 0
	for i, j := 0, 0; i < len(old.members) || j < len(next); {
		switch {
		case j == len(next) || (i < len(old.members) && old.members[i].ID < next[j].ID):
			remap[i], i, same = -1, i+1, false
		case i == len(old.members) || next[j].ID < old.members[i].ID:
			fresh[j], same = true, false
			added += points(s.vnodes, next[j].Weight)
			j++
		default:
			if old.members[i].Weight == next[j].Weight {
				remap[i] = int32(j)
				kept += points(s.vnodes, next[j].Weight)
			} else {
				remap[i], fresh[j], same = -1, true, false
				added += points(s.vnodes, next[j].Weight)
			}
			if i != j {
				same = false
			}
			i, j = i+1, j+1
		}
	}
	if same { // only draining or shed flags changed: share the points
		s.points, s.table, s.shift, s.bits, s.mask = old.points, old.table, old.shift, old.bits, old.mask
		return s
	}

	s.layout(kept + added)
	if kept == 0 || added > (kept+added)/rebuildShare {
		s.fill()
		return s
	}
	s.merge(old, remap, s.freshPoints(fresh, added))
	return s
}

// setFlags fills the per-member arrays the lookups read.
func (s *Snapshot) setFlags() {
	s.drain = make([]bool, len(s.members))
	for i, m := range s.members {
		if m.Draining {
			s.drain[i] = true
			s.nDrain++
		}
		if m.Shed > 0 {
			if s.shed == nil {
				s.shed = make([]float64, len(s.members))
				s.shedRank = make([]uint32, len(s.members))
			}
			s.shed[i], s.shedRank[i] = m.Shed, uint32(s.nShed)
			s.nShed++
			if !m.Draining {
				s.nShedLive++
			}
		}
	}
}

// layout sizes the prefix table and allocates the points and the table for
// n points. The table has about two slots per point (at most 2^maxTableBits),
// but at least as many slots as members, since a point keeps its owner in the
// low bits that the table slot frees.
func (s *Snapshot) layout(n int) {
	b := max(min(bits.Len(uint(n))+1, maxTableBits), 1)
	if len(s.members) > 1 {
		b = max(b, bits.Len(uint(len(s.members)-1)))
	}
	s.bits = uint(b)
	s.shift = 64 - s.bits
	s.mask = 1<<s.bits - 1
	s.points = make([]uint64, n)
	s.table = make([]uint32, 1<<b+1)
}

// fill computes every member's points and sorts them into place with a
// counting sort on the table slot, then sorts each slot's few points. It
// hashes every point twice (once to count, once to place) rather than keep
// the hashes in a second array: the second pass costs ~15 ms at 1.5 M points,
// the array would cost another 12 MB, and a build may allocate only about
// the ring it builds.
func (s *Snapshot) fill() {
	table := s.table
	ph := pointHasher{fn: s.hash}
	for _, m := range s.members {
		ph.start(m.ID)
		for range points(s.vnodes, m.Weight) {
			table[ph.sum()>>s.shift+1]++
			ph.next()
		}
	}
	for p := 1; p < len(table); p++ {
		table[p] += table[p-1]
	}
	// table[p] is now where slot p begins; use it as slot p's cursor.
	for j, m := range s.members {
		ph.start(m.ID)
		for range points(s.vnodes, m.Weight) {
			h := ph.sum()
			p := h >> s.shift
			s.points[table[p]] = h<<s.bits | uint64(j)
			table[p]++
			ph.next()
		}
	}
	// Each cursor stopped where the next slot begins: shift them back.
	copy(table[1:], table)
	table[0] = 0
	for p := range len(table) - 1 {
		sortSlot(s.points[table[p]:table[p+1]])
	}
}

// sortSlot sorts the points of one slot; there are usually a dozen or fewer.
func sortSlot(ps []uint64) {
	if len(ps) > 24 {
		slices.Sort(ps)
		return
	}
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j] < ps[j-1]; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// freshPoints returns the n points of the members marked fresh, sorted by
// (hash, owner).
func (s *Snapshot) freshPoints(fresh []bool, n int) []rawPoint {
	out := make([]rawPoint, 0, n)
	ph := pointHasher{fn: s.hash}
	for j, m := range s.members {
		if !fresh[j] {
			continue
		}
		ph.start(m.ID)
		for range points(s.vnodes, m.Weight) {
			out = append(out, rawPoint{ph.sum(), uint32(j)})
			ph.next()
		}
	}
	slices.SortFunc(out, func(a, b rawPoint) int {
		return cmp.Or(cmp.Compare(a.hash, b.hash), cmp.Compare(a.owner, b.owner)) // member index order is ID order
	})
	return out
}

// merge writes old's points that stay (renumbered by remap) and the sorted
// added points into s, in ring order, and fills the prefix table on the way.
// It is one sequential pass over old's points, which is what bounds Add,
// Remove and a one-member Set.
func (s *Snapshot) merge(old *Snapshot, remap []int32, added []rawPoint) {
	w := pointWriter{points: s.points, table: s.table, shift: s.shift, bits: s.bits}
	a := 0
	nextAdded := uint64(math.MaxUint64) // hash of added[a]
	if len(added) > 0 {
		nextAdded = added[0].hash
	}
	for p := range len(old.table) - 1 {
		top := uint64(p) << old.shift
		for _, v := range old.points[old.table[p]:old.table[p+1]] {
			o := remap[v&old.mask]
			if o < 0 {
				continue
			}
			h := top | v>>old.bits
			if h >= nextAdded {
				for a < len(added) && (added[a].hash < h || (added[a].hash == h && added[a].owner < uint32(o))) {
					w.put(added[a].hash, added[a].owner)
					a++
				}
				nextAdded = math.MaxUint64
				if a < len(added) {
					nextAdded = added[a].hash
				}
			}
			w.put(h, uint32(o))
		}
	}
	for _, p := range added[a:] {
		w.put(p.hash, p.owner)
	}
	w.finish()
}

// pointWriter appends points in ring order and fills the prefix table.
type pointWriter struct {
	points []uint64
	table  []uint32
	shift  uint
	bits   uint
	n      int    // points written
	slot   uint64 // first table slot not yet filled
}

func (w *pointWriter) put(h uint64, owner uint32) {
	for p := h >> w.shift; w.slot <= p; w.slot++ {
		w.table[w.slot] = uint32(w.n)
	}
	w.points[w.n] = h<<w.bits | uint64(owner)
	w.n++
}

func (w *pointWriter) finish() {
	for ; w.slot < uint64(len(w.table)); w.slot++ {
		w.table[w.slot] = uint32(w.n)
	}
}

// pointHasher hashes a member's points id + ":" + decimal(i) for i = 0, 1,
// ... in one reused buffer, counting in decimal in place.
type pointHasher struct {
	buf  []byte
	head int                 // len(id) + 1: where the digits start
	fn   func(string) uint64 // nil means XXH64 (seed 0)
}

func (ph *pointHasher) start(id string) {
	ph.buf = append(append(ph.buf[:0], id...), ':', '0')
	ph.head = len(id) + 1
}

func (ph *pointHasher) sum() uint64 {
	if ph.fn != nil {
		return ph.fn(string(ph.buf))
	}
	return xxhash.Sum64(ph.buf)
}

// next moves to the next point: it adds one to the decimal digits.
func (ph *pointHasher) next() {
	i := len(ph.buf) - 1
	for ; i >= ph.head && ph.buf[i] == '9'; i-- {
		ph.buf[i] = '0'
	}
	if i >= ph.head {
		ph.buf[i]++
		return
	}
	ph.buf = append(ph.buf, '0') // 99 -> 00 -> 100
	ph.buf[ph.head] = '1'
}
