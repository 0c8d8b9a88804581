package ring

import (
	"math/bits"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// maxTableBits caps the prefix table at 2^17 slots (512 KiB of offsets)
// while the ring has fewer than 2^23 points. Up to about 65,000 points the
// table has two slots per point; at 1.5 M points (10,000 members × 150) a
// slot holds about 11 points, 88 bytes, which the binary search covers in
// one or two cache lines. Past 2^22 points the table grows with the ring,
// so that a bucket keeps about 500 points (see bucketPoints).
const maxTableBits = 17

// bucketPoints: past 2^22 points, the table has enough slots that a bucket
// holds at most about 2^bucketPoints points on average, which bounds what a
// change copies per point it moves.
const bucketPoints = 9

// contiguousPoints: a ring of fewer points (2 MB of them, about 1,700
// members of weight 1) is built with its buckets in one array and their
// points in another, so that walks and lookups read neighbouring lines, as
// they did in the flat layout, and the build allocates twice instead of
// twice per bucket: at 1,000 members, 8,192 buckets of 18 points, a build
// with an allocation per bucket took 10.2 ms against 6.2 ms for the flat
// layout. A larger ring allocates each bucket on its own: one array stays
// alive until a change has copied every bucket in it, which for hundreds of
// changes would double the memory of a ring of 12 MB (10,000 members).
const contiguousPoints = 1 << 18

// rebuildShare: when the points that a change adds or removes are more than
// this fraction of the ring, it is rebuilt (from the old ring's points, see
// rebuild) instead of being patched. A patch hashes only the points that
// move, spreads them by bucket and copies every bucket they fall in, which
// at an eighth of the ring is nearly all of them; a rebuild hashes only the
// points that join and writes every bucket anew. In a burst of 50,000 joins
// (BenchmarkScale, two runs each) every reader had them all after 5.1 and
// 5.2 s with 8, 5.6 and 5.6 s with 16; before rebuild reused points, 6.1
// and 5.8 s with 8 and 7.5 and 7.6 s with 2 (patching more: cheaper flushes
// came more often under the watch's hold rule, and each still copied nearly
// the whole ring).
const rebuildShare = 8

// tableBits returns the table bits for a ring of n points whose owners are
// below slots: about two slots per point up to 2^maxTableBits, at least
// enough for a bucket of ~2^bucketPoints points, at least the owner bits,
// and at least bucketBits+1, so that there are two buckets or more.
func tableBits(n int, slots uint32) uint {
	b := min(bits.Len(uint(n))+1, maxTableBits)
	b = max(b, bits.Len(uint(n))+bucketBits-bucketPoints, bucketBits+1)
	return uint(max(b, ownerBits(slots)))
}

// ownerBits returns the bits that hold every owner below slots.
func ownerBits(slots uint32) int {
	if slots <= 1 {
		return 0
	}
	return bits.Len32(slots - 1)
}

// fits reports whether s's table still suits a ring of n points with owners
// below slots: the owners fit in its bits, and its bits are within one of
// what a fresh build would choose. The slack keeps a ring that grows or
// shrinks by one member from being rebuilt at a power of two.
func (s *Snapshot) fits(n int, slots uint32) bool {
	want := tableBits(n, slots)
	return int(s.bits) >= ownerBits(slots) && s.bits+1 >= want && s.bits <= want+1
}

// setBits sets the table bits and what derives from them.
func (s *Snapshot) setBits(b uint) {
	s.bits = b
	s.shift = 64 - b
	s.gshift = 64 - (b - bucketBits)
	s.mask = 1<<b - 1
}

// build returns the snapshot of ms (normalized, sorted by ID, unique). Slots
// are numbered in id order, and so are shed ranks.
func build(vnodes int, hash func(string) uint64, ms []Member) *Snapshot {
	s := newSnapshot(vnodes, hash, ms)
	switch {
	case s.n == 0:
	case len(ms) <= 1<<16:
		fillSorted(s, ms, make([]uint16, s.n))
	default:
		fillSorted(s, ms, make([]uint32, s.n))
	}
	s.link()
	return s
}

// newSnapshot returns the snapshot of ms (normalized, sorted by ID, unique)
// without its points: its members, slots and shed ranks numbered in id
// order, its counters, and its table sized, every bucket nil.
func newSnapshot(vnodes int, hash func(string) uint64, ms []Member) *Snapshot {
	s := &Snapshot{vnodes: vnodes, hash: hash, nMembers: len(ms), nSlots: uint32(len(ms))}
	s.slots = make([]*leaf, (len(ms)+leafLen-1)/leafLen)
	for i := range s.slots {
		s.slots[i] = new(leaf)
	}
	refs := make([]idRef, len(ms))
	for j, m := range ms {
		e := s.entry(uint32(j))
		e.set(m)
		if m.Shed > 0 {
			e.rank = s.nRanks
			s.nRanks++
		}
		s.count(e, 1)
		refs[j] = idRef{m.ID, uint32(j)}
		s.n += points(vnodes, m.Weight)
	}
	s.ids = newIDIndex(refs)
	s.setBits(tableBits(s.n, s.nSlots))
	s.points = make([]*bucket, 1<<(s.bits-bucketBits))
	return s
}

// link sets the sentinel of every bucket that fillSorted made, and makes
// the empty buckets (nil until then): one object for a run of them, whose
// only word is the sentinel.
func (s *Snapshot) link() {
	var next uint64 // the first point of the ring, the sentinel of the last bucket that has points
	for _, b := range s.points {
		if b != nil {
			next = b.points[0]
			break
		}
	}
	var run *bucket
	for g := len(s.points) - 1; g >= 0; g-- {
		b := s.points[g]
		if b == nil {
			if run == nil {
				run = &bucket{points: []uint64{next}}
			}
			s.points[g] = run
			continue
		}
		b.points[b.len()] = next
		next, run = b.points[0], nil
	}
}

// count adds e's flags to s's counters (d = 1), or takes them away (d = -1).
func (s *Snapshot) count(e *entry, d int) {
	if e.drain {
		s.nDrain += d
	}
	if e.shed > 0 {
		s.nShed += d
		if !e.drain {
			s.nShedLive += d
		}
	}
}

// fillSorted computes every member's points and sorts them into buckets,
// hashing each point once. A counting sort straight into 2^17 slots would
// store each point at a random place in a 12 MB array; on a shared machine
// those stores miss the cache and cost 75 to 400 ms per 1.5 M points
// (measured while other jobs ran), more than the hashing. So it sorts in two
// levels that each keep their working set in cache:
//
//  1. hash the points in member order into a scratch array, their owners
//     into owners (2 bytes a point up to 65,536 members, else 4), and count
//     them by the top c bits of the hash: a few hundred parts of about
//     16,000 points;
//  2. permute points and owners in place into those parts (American flag
//     sort: one cursor per part, so the stores stay on a few hot lines);
//  3. per part, scatter its points by table slot into a part-sized buffer,
//     packing hash and owner into the point word, sort each slot's dozen
//     points, and copy each bucket of the part out into its own array.
//
// Owners are slots in id order, so sorting words sorts equal hashes by id.
// It allocates the ring plus the scratch, the owners and one part: 2.25×
// the points.
func fillSorted[O uint16 | uint32](s *Snapshot, ms []Member, owners []O) {
	n := s.n
	hs := make([]uint64, n)
	c := uint(max(0, min(int(s.bits)-bucketBits, bits.Len(uint(n))-14))) // ~16,000 points a part
	nb := 1 << c
	count := make([]uint32, nb+1)

	// 1. Hash, in member order. With c == 0, h>>64 is 0: one part.
	ph := pointHasher{fn: s.hash}
	k := 0
	for j, m := range ms {
		ph.start(m.ID)
		for range points(s.vnodes, m.Weight) {
			h := ph.sum()
			hs[k], owners[k] = h, O(j)
			count[h>>(64-c)+1]++
			k++
			ph.next()
		}
	}
	for q := 1; q <= nb; q++ {
		count[q] += count[q-1]
	}

	// 2. Permute into parts in place: count[q] is where part q starts,
	// next[q] where its next point goes.
	next := slices.Clone(count)
	biggest := uint32(0)
	for q := range nb {
		end := count[q+1]
		biggest = max(biggest, end-count[q])
		for i := next[q]; i < end; i = next[q] {
			h, o := hs[i], owners[i]
			for d := h >> (64 - c); d != uint64(q); d = h >> (64 - c) {
				j := next[d]
				next[d]++
				hs[j], h = h, hs[j]
				owners[j], o = o, owners[j]
			}
			hs[i], owners[i] = h, o
			next[q]++
		}
	}

	// 3. Per part: its slots are [q<<(bits-c), (q+1)<<(bits-c)). A small
	// ring keeps its buckets in one array and its points in another, as the
	// flat layout did (see contiguousPoints).
	var arena []uint64
	var hdrs []bucket
	if n < contiguousPoints {
		arena, hdrs = make([]uint64, 0, n+len(s.points)), make([]bucket, len(s.points))
	}
	per := 1 << (s.bits - c)
	start := make([]uint32, per+1) // start[t]: where slot t of the part starts in buf
	at := make([]uint32, per)      // at[t]: where slot t's next point goes
	buf := make([]uint64, biggest)
	for q := range nb {
		lo, hi := count[q], count[q+1]
		first := q * per
		clear(start)
		for _, h := range hs[lo:hi] {
			start[int(h>>s.shift)-first+1]++
		}
		for t := range per {
			start[t+1] += start[t]
		}
		copy(at, start)
		for i, h := range hs[lo:hi] {
			t := int(h>>s.shift) - first
			buf[at[t]] = h<<s.bits | uint64(owners[int(lo)+i])
			at[t]++
		}
		for t := range per {
			sortSlot(buf[start[t]:start[t+1]])
		}
		for t := 0; t < per; t += bucketSlots {
			from, to := int(start[t]), int(start[t+bucketSlots])
			if from == to {
				continue
			}
			g := (first + t) >> bucketBits
			var words []uint64
			var b *bucket
			if hdrs != nil && to-from < fat {
				k := len(arena)
				arena = append(append(arena, buf[from:to]...), 0)
				words, b = arena[k:k+to-from:k+to-from+1], &hdrs[g]
			} else {
				words = append(makeWords(to-from), buf[from:to]...)
			}
			var st [bucketSlots + 1]int
			for u := range st {
				st[u] = int(start[t+u]) - from
			}
			b = newBucket(b, words, &st)
			if b.fat() {
				s.nFat++
			}
			s.points[g] = b
		}
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

// startAt is start at point i.
func (ph *pointHasher) startAt(id string, i int) {
	ph.buf = strconv.AppendInt(append(append(ph.buf[:0], id...), ':'), int64(i), 10)
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
