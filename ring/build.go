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

// fill computes every member's points and sorts them into place, hashing
// each point once. A counting sort straight into 2^17 slots would store each
// point at a random place in a 12 MB array; on a shared machine those stores
// miss the cache and cost 75 to 400 ms per 1.5 M points (measured while
// other jobs ran), more than the hashing. So fill sorts in two levels that
// each keep their working set in cache:
//
//  1. hash the points in member order into s.points, their owners into a
//     temporary array (2 bytes a point up to 65,536 members, else 4), and
//     count them by the top c bits of the hash: a few hundred buckets of
//     about 16,000 points;
//  2. permute points and owners in place into those buckets (American flag
//     sort: one cursor per bucket, so the stores stay on a few hot lines);
//  3. per bucket, scatter its points by table slot into a bucket-sized
//     buffer, packing hash and owner into the point word, sort each slot's
//     dozen points, and copy the bucket back.
//
// It allocates the ring plus the owner array and one bucket: 1.25× the ring.
func (s *Snapshot) fill() {
	if len(s.members) <= 1<<16 {
		fillSorted(s, make([]uint16, len(s.points)))
	} else {
		fillSorted(s, make([]uint32, len(s.points)))
	}
}

func fillSorted[O uint16 | uint32](s *Snapshot, owners []O) {
	n := len(s.points)
	c := uint(max(1, min(int(s.bits), bits.Len(uint(n))-14))) // ~16,000 points a bucket
	nb := 1 << c
	count := make([]uint32, nb+1)

	// 1. Hash, in member order.
	ph := pointHasher{fn: s.hash}
	k := 0
	for j, m := range s.members {
		ph.start(m.ID)
		for range points(s.vnodes, m.Weight) {
			h := ph.sum()
			s.points[k], owners[k] = h, O(j)
			count[h>>(64-c)+1]++
			k++
			ph.next()
		}
	}
	for q := 1; q <= nb; q++ {
		count[q] += count[q-1]
	}

	// 2. Permute into buckets in place: count[q] is where bucket q starts,
	// next[q] where its next point goes.
	next := slices.Clone(count)
	biggest := uint32(0)
	for q := range nb {
		end := count[q+1]
		biggest = max(biggest, end-count[q])
		for i := next[q]; i < end; i = next[q] {
			h, o := s.points[i], owners[i]
			for d := h >> (64 - c); d != uint64(q); d = h >> (64 - c) {
				j := next[d]
				next[d]++
				s.points[j], h = h, s.points[j]
				owners[j], o = o, owners[j]
			}
			s.points[i], owners[i] = h, o
			next[q]++
		}
	}

	// 3. Per bucket: its slots are [q<<(bits-c), (q+1)<<(bits-c)).
	per := 1 << (s.bits - c)
	at := make([]uint32, per+1) // at[t]: where slot t of the bucket starts in buf
	buf := make([]uint64, biggest)
	for q := range nb {
		lo, hi := count[q], count[q+1]
		first := q * per
		clear(at)
		for _, h := range s.points[lo:hi] {
			at[int(h>>s.shift)-first+1]++
		}
		for t := range per {
			at[t+1] += at[t]
			s.table[first+t] = lo + at[t]
		}
		for i, h := range s.points[lo:hi] {
			t := int(h>>s.shift) - first
			buf[at[t]] = h<<s.bits | uint64(owners[int(lo)+i])
			at[t]++
		}
		// at[t] is now where slot t+1 begins.
		start := uint32(0)
		for t := range per {
			sortSlot(buf[start:at[t]])
			start = at[t]
		}
		copy(s.points[lo:hi], buf)
	}
	s.table[len(s.table)-1] = uint32(n)
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
	if old.bits == s.bits {
		s.mergeSameSlots(old, remap, added)
		return
	}
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

// mergeSameSlots is merge when old and s have the same table bits, as they
// do from 2^16 points up (the table stops growing at 2^17 slots). A kept
// point then keeps its word but for the owner bits, so the kept points are
// copied in flat runs that renumber owners, each added point is spliced in
// where a short scan of its slot puts it, and the new table is the old one
// shifted by the points added and removed before each slot. The loops call
// nothing: with a call inside, the compiler spilled and reloaded a dozen
// values an iteration (34 instructions a point; now 17, in renumber). Per
// Add at 10,000 members that is 32 M instructions against 100 M for the
// 16-byte layout's merge (valgrind --tool=cachegrind).
func (s *Snapshot) mergeSameSlots(old *Snapshot, remap []int32, added []rawPoint) {
	k, i := 0, 0
	for _, p := range added {
		end := old.insertAt(p, remap, i)
		k += renumber(s.points[k:], old.points[i:end], remap, s.mask)
		s.points[k] = p.hash<<(s.bits&63) | uint64(p.owner)
		k, i = k+1, end
	}
	renumber(s.points[k:], old.points[i:], remap, s.mask)

	// The slots that lose points: those of the members that go, hashed
	// again (usually one member's 150 points) rather than noted in the copy.
	var gone []uint64
	ph := pointHasher{fn: s.hash}
	for o, m := range old.members {
		if remap[o] >= 0 {
			continue
		}
		ph.start(m.ID)
		for range points(old.vnodes, m.Weight) {
			gone = append(gone, ph.sum()>>(s.shift&63))
			ph.next()
		}
	}
	slices.Sort(gone)

	// table[p] counts the points in slots before p: a point added to or
	// removed from slot e changes table[p] for every p > e.
	p, delta := 0, uint32(0) // delta wraps around when negative
	for a, g := 0, 0; a < len(added) || g < len(gone); {
		e, d := uint64(0), uint32(0)
		if g == len(gone) || (a < len(added) && added[a].hash>>(s.shift&63) < gone[g]) {
			e, d, a = added[a].hash>>(s.shift&63), 1, a+1
		} else {
			e, d, g = gone[g], ^uint32(0), g+1 // -1
		}
		p = shiftTable(s.table, old.table, p, int(e)+1, delta)
		delta += d
	}
	shiftTable(s.table, old.table, p, len(s.table), delta)
}

// renumber copies the points of in whose owner stays to out, renumbering
// the owner, and returns how many it copied. It is kept out of line: inlined
// into mergeSameSlots, its loop spilled the point and reloaded the mask on
// every iteration (23 instructions a point; out of line, 17).
//
//go:noinline
func renumber(out, in []uint64, remap []int32, mask uint64) int {
	k, keep := 0, ^mask
	for _, v := range in {
		if o := remap[v&mask]; o >= 0 {
			out[k] = v&keep | uint64(uint32(o))
			k++
		}
	}
	return k
}

// shiftTable sets dst[p] = src[p] + delta for p in [from, to), if to > from,
// and returns max(from, to).
func shiftTable(dst, src []uint32, from, to int, delta uint32) int {
	if to <= from {
		return from
	}
	d, s := dst[from:to], src[from:to]
	s = s[:len(d)]
	for j := range d {
		d[j] = s[j] + delta
	}
	return to
}

// insertAt returns where a new point goes among old's points from index
// from on: after every point of its slot with a smaller hash, or the same
// hash and a smaller (renumbered) owner. A point whose owner goes (remap
// -1) sorts first among equal hashes; it is dropped anyway.
func (old *Snapshot) insertAt(p rawPoint, remap []int32, from int) int {
	slot := p.hash >> (old.shift & 63)
	x := p.hash << (old.bits & 63)
	j, hi := max(from, int(old.table[slot])), int(old.table[slot+1])
	for ; j < hi; j++ {
		v := old.points[j]
		if h := v &^ old.mask; h > x || (h == x && remap[v&old.mask] > int32(p.owner)) {
			break
		}
	}
	return j
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
