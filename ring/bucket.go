package ring

import "slices"

// bucketBits: a bucket covers 2^bucketBits table slots.
const (
	bucketBits  = 4
	bucketSlots = 1 << bucketBits
)

// fat marks, in table[bucketSlots], a bucket with more points than its
// 16-bit table can index. See bucket.
const fat = 0xFFFF

// bucket is the points of bucketSlots consecutive table slots, in ring
// order, and then a sentinel: a copy of the next point of the ring (the
// first point of the next bucket that has any, wrapping around). table[t]
// is where slot t starts in points and table[bucketSlots] is the number of
// points, len(points) - 1.
//
// The sentinel is where a lookup whose hash is past the bucket's last point
// lands, as it would on the next point of one flat array, so Get has no
// branch for it: without it, a quarter of the keys took that branch at 10
// members (3 points a bucket) and Get was 1.5× slower than today's.
//
// 16 slots of 16-bit offsets and the slice make 58 bytes, one cache line
// and 4 bytes a table slot, as the old flat table of uint32. With 8 slots
// of uint32 (also one line, but 8 bytes a slot) the buckets of a 10-member
// ring took 56 KB instead of 28 KB, and Get missed the L1 cache 0.69 times
// a lookup instead of 0.10 (cachegrind, D1 48 KB).
//
// A bucket of more than 65,534 points cannot be indexed by 16 bits; it is
// fat: table[bucketSlots] == fat and its slot starts are 17 words past the
// sentinel, in the capacity of points. With XXH64 and the table sizes of
// tableBits, buckets average 500 points at most, so only a hash that
// crowds points on purpose (tests) makes one; lookups in a snapshot with a
// fat bucket take the slow path.
type bucket struct {
	points []uint64
	table  [bucketSlots + 1]uint16
}

// len returns the number of points in b, not counting the sentinel.
func (b *bucket) len() int { return len(b.points) - 1 }

func (b *bucket) fat() bool { return b.table[bucketSlots] == fat }

// bounds returns where slot t starts and ends in b.points.
func (b *bucket) bounds(t uint64) (int, int) {
	if b.table[bucketSlots] == fat {
		w := b.points[len(b.points) : len(b.points)+bucketSlots+1]
		return int(w[t]), int(w[t+1])
	}
	return int(b.table[t]), int(b.table[t+1])
}

// find returns the index of the first point in slot t whose word is >= x,
// or the end of the slot. For x = h<<bits, h a hash in slot t, that is the
// first point with hash >= h: within a slot, words compare as hashes do. b
// must not be fat (see findFat); find is small enough to be inlined.
func (b *bucket) find(t, x uint64) int {
	lo, hi := int(b.table[t]), int(b.table[t+1])
	ps := b.points
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ps[m] < x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// findFat is find for any bucket, fat or not.
func (b *bucket) findFat(t, x uint64) int {
	lo, hi := b.bounds(t)
	i, _ := slices.BinarySearch(b.points[lo:hi], x)
	return lo + i
}

// makeWords returns room for a bucket of n points: len 0, and capacity for
// the points, the sentinel and, if the bucket is fat, its slot starts.
func makeWords(n int) []uint64 {
	if n >= fat {
		return make([]uint64, 0, n+1+bucketSlots+1)
	}
	return make([]uint64, 0, n+1)
}

// newBucket makes b, or a new bucket if b is nil, the bucket of words
// (holding the points, with room for the sentinel and, if it is fat, the
// slot starts: see makeWords) whose slot t starts at start[t];
// start[bucketSlots] == len(words). The sentinel is left 0.
func newBucket(b *bucket, words []uint64, start *[bucketSlots + 1]int) *bucket {
	n := len(words)
	if b == nil {
		b = &bucket{}
	}
	b.points = words[:n+1]
	b.points[n] = 0
	if n >= fat {
		w := b.points[n+1 : n+1+bucketSlots+1]
		for t, v := range start {
			w[t] = uint64(v)
		}
		b.table[bucketSlots] = fat
		return b
	}
	for t, v := range start {
		b.table[t] = uint16(v)
	}
	return b
}

// clone returns a copy of b that patch may change.
func (b *bucket) clone() *bucket {
	p := make([]uint64, cap(b.points))
	copy(p, b.points[:cap(b.points)])
	return &bucket{points: p[:len(b.points)], table: b.table}
}

// rebucket returns a copy of b without the points rm and with the points
// add, both sorted and in b's bucket; its sentinel is left for relink.
func (s *Snapshot) rebucket(b *bucket, rm, add []movedPoint) *bucket {
	out := makeWords(b.len() - len(rm) + len(add))
	var start [bucketSlots + 1]int
	slot := func(h uint64) uint64 { return h >> (s.shift & 63) & (bucketSlots - 1) }
	for t := range uint64(bucketSlots) {
		start[t] = len(out)
		lo, hi := b.bounds(t)
		r, a := 0, 0
		for r < len(rm) && slot(rm[r].hash) == t {
			r++
		}
		for a < len(add) && slot(add[a].hash) == t {
			a++
		}
		out = s.mergeSlot(out, b.points[lo:hi], rm[:r], add[:a])
		rm, add = rm[r:], add[a:]
	}
	start[bucketSlots] = len(out)
	return newBucket(nil, out, &start)
}

// mergeSlot appends the points of one table slot, seg, to out, less the
// points rm and plus the points add, in ring order: by hash, and equal
// hashes by owner id. s's members are those after the change, which include
// the owner of every point that stays.
func (s *Snapshot) mergeSlot(out, seg []uint64, rm, add []movedPoint) []uint64 {
	if len(rm) == 0 && len(add) == 0 {
		return append(out, seg...)
	}
	bits, mask := s.bits&63, s.mask
	var dropBuf [8]int
	drop := dropBuf[:0] // indexes into seg of the points removed
	for _, p := range rm {
		w := p.hash<<bits | uint64(p.owner)
		j, _ := slices.BinarySearch(seg, w&^mask) // seg is sorted by hash
		for ; j < len(seg) && seg[j]&^mask == w&^mask; j++ {
			if seg[j] == w && !slices.Contains(drop, j) {
				drop = append(drop, j)
				break
			}
		}
	}
	slices.Sort(drop)
	a := 0
	for j, v := range seg {
		if len(drop) > 0 && drop[0] == j {
			drop = drop[1:]
			continue
		}
		for ; a < len(add); a++ {
			x := add[a].hash << bits
			if x > v&^mask || (x == v&^mask && add[a].id > s.entry(uint32(v&mask)).id) {
				break
			}
			out = append(out, x|uint64(add[a].owner))
		}
		out = append(out, v)
	}
	for _, p := range add[a:] {
		out = append(out, p.hash<<bits|uint64(p.owner))
	}
	return out
}

// relink sets the sentinels after patch rebuilt the buckets touched: each
// of those gets the first point after it, and when the first point of one
// changed, the buckets before it up to one with points get it as their
// sentinel, copied if patch did not make them.
func (s *Snapshot) relink(old *Snapshot, touched []int) {
	last := len(s.points) - 1       // a power of two less one
	firstAt := func(p int) uint64 { // the first point at or after bucket p
		for k := range s.points {
			if b := s.points[(p+k)&last]; b.len() > 0 {
				return b.points[0]
			}
		}
		return 0 // no points: never read
	}
	for _, g := range touched {
		b := s.points[g]
		b.points[b.len()] = firstAt(g + 1)
	}
	for _, g := range touched {
		ob, nb := old.points[g], s.points[g]
		if ob.len() == 0 && nb.len() == 0 || ob.len() > 0 && nb.len() > 0 && ob.points[0] == nb.points[0] {
			continue
		}
		f := firstAt(g)
		for p := (g - 1) & last; p != g; p = (p - 1) & last {
			b := s.points[p]
			if b.points[b.len()] != f {
				if b == old.points[p] { // shared: copy it
					b = b.clone()
					s.points[p] = b
				}
				b.points[b.len()] = f
			}
			if b.len() > 0 {
				break
			}
		}
	}
}
