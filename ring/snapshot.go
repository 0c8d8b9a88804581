package ring

import (
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Snapshot is an immutable ring: one consistent membership that callers can
// hold to answer many lookups. All methods are safe for concurrent use.
//
// The layout serves two masters: a lookup must stay as cheap as a binary
// search over one sorted array, and a change of one member must cost its
// own points, not the ring's (DESIGN.md, "Ring publication, one key per
// member (v3)"): at 50,000 members × 150 points a flat array is 60 MB to
// copy for every join.
//
// A point is one word. A prefix table over the top `bits` bits of the hash
// fixes those bits for every point under a table slot, so the word keeps the
// other 64-bits bits, shifted up, and the owner in the low bits that frees:
// point = hash<<bits | owner. Within a slot, words compare as (hash, owner),
// so a lookup compares them directly, and hash and owner share a word: 8
// bytes a point.
//
// The owner is a slot number (see slots.go), which does not move when other
// members join or leave; the older layout used the member's index in id
// order, so one join renumbered every member after it and rewrote every
// point. A slot says nothing about id order, so the ring order among equal
// hashes, (hash, id), is kept by the writers that place points (fresh builds
// number slots in id order; incremental writes compare ids on a tie), and a
// lookup, which only asks for the first hash >= h, never needs it.
//
// The table is cut into buckets of bucketSlots consecutive slots, and a
// bucket holds its points and its part of the table in one immutable
// object (see bucket): a lookup goes directory → bucket → points, one
// dependent load more than the old table → points, but the directory (8
// bytes a bucket) mostly stays in cache, and a bucket's header and offsets
// share one cache line. A change copies the directory and the buckets its
// points fall in, and shares every other bucket with the previous snapshot.
// From 2^16 points on there are 2^17 table slots in 8,192 buckets: a join at
// 10,000 members copies 64 KB of directory and 150 buckets of about 180
// points. Past 2^22 points the table grows with the ring, so that a bucket
// keeps at most about 500 points: at 50,000 members, 16,384 buckets of 460.
//
// Measured against the flat layout in the same runs (2-core VM, medians of
// 6 to 8, CPU time): a join costs 0.26 ms and 330 KB at 10,000 members (was
// 3 to 6 ms and 12.4 MB) and 0.41 ms and 780 KB at 50,000 (was 44 to 150 ms
// and 60 MB); Get stays within 6 % at 10 to 10,000 members, with the same
// instructions (cachegrind: 97 at 10 members) and 0.2 L1 misses a lookup
// instead of 0.1; the points take 8.9 bytes each instead of 8.35 at 10,000
// members. What it costs: walks that cross buckets (AppendN at 10 and 100
// members, about 8 ns more of 45), and fresh builds, which make 1.7 to 1.9×
// the garbage (the hashes are sorted in a scratch array, then copied out
// into buckets) and take 1.1 to 1.7× the CPU, most of it the collector's.
type Snapshot struct {
	vnodes int
	hash   func(string) uint64 // nil means XXH64 (seed 0)

	// Points: bucket g holds the points whose hash>>gshift == g, sorted.
	points []*bucket
	n      int    // points
	bits   uint   // table bits; also the owner bits of a point
	shift  uint   // 64 - bits
	gshift uint   // 64 - (bits - bucketBits)
	mask   uint64 // 1<<bits - 1
	nFat   int    // fat buckets (see bucket); lookups take the slow path if > 0

	// Members: the member in slot o is *entry(o); ids lists them by id.
	slots     []*leaf
	nSlots    uint32   // slots handed out; every owner is below it
	free      *numbers // free slots below nSlots
	ids       idIndex
	nMembers  int
	nDrain    int // members with Draining set
	nShed     int // members with Shed > 0
	nShedLive int // of those, the ones not draining; the shed rule runs only if > 0
	nRanks    uint32
	freeRank  *numbers // free shed ranks below nRanks
}

// smallSet is how many distinct members a lookup tracks on the stack before
// it allocates a bitset.
const smallSet = 16

// Len returns the number of members.
func (s *Snapshot) Len() int { return s.nMembers }

// Points returns the number of points on the ring.
func (s *Snapshot) Points() int { return s.n }

// VirtualNodes returns the points per unit of weight the ring was built with.
func (s *Snapshot) VirtualNodes() int { return s.vnodes }

// Members returns a copy of the membership, sorted by ID.
func (s *Snapshot) Members() []Member {
	out := make([]Member, 0, s.nMembers)
	for _, ch := range s.ids.chunks {
		for _, r := range ch {
			out = append(out, s.entry(r.slot).member())
		}
	}
	return out
}

// Member returns the member with this id.
func (s *Snapshot) Member(id string) (Member, bool) {
	o, ok := s.ids.lookup(id)
	if !ok {
		return Member{}, false
	}
	return s.entry(o).member(), true
}

func (s *Snapshot) hashKey(key string) uint64 {
	if s.hash == nil {
		return xxhash.Sum64String(key)
	}
	return s.hash(key)
}

// seek returns the position of the first point with hash >= h, as bucket
// number, bucket and index in it; the index may be the bucket's sentinel,
// which is the first point of the next bucket that has points. A walk from
// there reads b.points up to and including the sentinel, then goes on at
// index 1 of the next bucket with points (see step), so it needs no test
// for a wrap. The shift counts are masked with 63, which they never
// exceed, so that the compiler drops its check for shifts of 64 or more
// (with it, Get ran 181 instructions at 100 members instead of 172). The
// ring must not be empty.
func (s *Snapshot) seek(h uint64) (int, *bucket, int) {
	g := int(h >> (s.gshift & 63))
	b := s.points[g]
	t, x := h>>(s.shift&63)&(bucketSlots-1), h<<(s.bits&63)
	if s.nFat == 0 {
		return g, b, b.find(t, x)
	}
	return g, b, b.findFat(t, x)
}

// step returns the position after the sentinel of bucket g: index 1 of the
// next bucket that has points, whose index 0 the sentinel was.
func (s *Snapshot) step(g int) (int, []uint64, int) {
	g, b := s.next(g)
	return g, b.points, 1
}

// at is seek without the sentinel: the position of the first point with
// hash >= h, or else of the first point of the ring.
func (s *Snapshot) at(h uint64) (int, *bucket, int) {
	g, b, i := s.seek(h)
	if i == b.len() {
		g, b = s.next(g)
		i = 0
	}
	return g, b, i
}

// next returns the first bucket after g, wrapping around, that has points.
func (s *Snapshot) next(g int) (int, *bucket) {
	for {
		if g++; g == len(s.points) {
			g = 0
		}
		if b := s.points[g]; b.len() > 0 {
			return g, b
		}
	}
}

// all yields every point's hash and owner in ring order.
func (s *Snapshot) all(yield func(hash uint64, owner uint32) bool) {
	for g, b := range s.points {
		for t := range uint64(bucketSlots) {
			top := (uint64(g)<<bucketBits | t) << s.shift
			lo, hi := b.bounds(t)
			for _, v := range b.points[lo:hi] {
				if !yield(top|v>>s.bits, uint32(v&s.mask)) {
					return
				}
			}
		}
	}
}

// skipDraining reports whether lookups must walk past draining members.
func (s *Snapshot) skipDraining() bool {
	return s.nDrain > 0 && s.nDrain < s.nMembers
}

// Get returns the member that owns key: clockwise from the key's point, the
// first member that is not draining and does not shed key; failing that, the
// first that is not draining; if every member is draining, the first member
// (see the package doc).
func (s *Snapshot) Get(key string) (string, error) {
	if s.n == 0 {
		return "", ErrEmpty
	}
	h := s.hashKey(key)
	if s.nDrain|s.nFat != 0 {
		return s.getSlow(key, h), nil
	}
	// seek, written out: a key past the last point of its bucket reads the
	// sentinel.
	g := int(h >> (s.gshift & 63))
	b := s.points[g]
	i := b.find(h>>(s.shift&63)&(bucketSlots-1), h<<(s.bits&63))
	e := s.entry(uint32(b.points[i] & s.mask))
	if s.nShedLive != 0 && e.shed > 0 && Sheds(key, e.id, e.shed) {
		var one [1]string
		return s.walkShedFrom(one[:0], key, g, b, i, 1, s.nMembers, false, nil)[0], nil
	}
	return e.id, nil
}

// getSlow is Get when some members are draining, or a bucket is fat.
func (s *Snapshot) getSlow(key string, h uint64) string {
	g, b, i := s.at(h)
	if s.nShedLive > 0 {
		return s.getShed(key, g, b, i)
	}
	o := uint32(b.points[i] & s.mask)
	if s.skipDraining() {
		for s.entry(o).drain {
			if i++; i == b.len() {
				g, b = s.next(g)
				i = 0
			}
			o = uint32(b.points[i] & s.mask)
		}
	}
	return s.entry(o).id
}

// Walk calls fn for each distinct member clockwise from key's position,
// draining, shedding or not, until fn returns false or every member was
// visited. It shows what a lookup passes over: draining members, and members
// m for which Sheds(key, m.ID, m.Shed) holds. It allocates, so it is not for
// hot paths.
func (s *Snapshot) Walk(key string, fn func(Member) bool) {
	if s.n == 0 {
		return
	}
	seen := make([]bool, s.nSlots)
	g, b, i := s.at(s.hashKey(key))
	for walked, visited := 0, 0; walked < s.n && visited < s.nMembers; walked++ {
		o := uint32(b.points[i] & s.mask)
		if i++; i == b.len() {
			g, b = s.next(g)
			i = 0
		}
		if seen[o] {
			continue
		}
		seen[o] = true
		visited++
		if !fn(s.entry(o).member()) {
			return
		}
	}
}

// Shares returns the fraction of the hash space each member owns (its
// points' arcs), by member id; the fractions sum to 1. Draining is ignored.
func (s *Snapshot) Shares() map[string]float64 {
	out := make(map[string]float64, s.nMembers)
	if s.n == 0 {
		return out
	}
	var prev uint64 // the arc of the first point wraps around from the last
	for h := range s.all {
		prev = h
	}
	for h, o := range s.all {
		out[s.entry(o).id] += float64(h-prev) / (1 << 64) // unsigned wrap-around
		prev = h
	}
	if s.n == 1 {
		for _, o := range s.all {
			out[s.entry(o).id] = 1
		}
	}
	return out
}

// KeyHash returns the hash the ring uses for key (XXH64, seed 0).
func (s *Snapshot) KeyHash(key string) uint64 { return s.hashKey(key) }

// GetN returns up to n distinct members for key, primary first: in ring
// order, except that members that shed key come after all members that do
// not (format 2; see the package doc). It returns fewer than n only when
// fewer members are usable (members that are not draining, or all of them if
// all are draining).
func (s *Snapshot) GetN(key string, n int) ([]string, error) {
	return s.AppendN(nil, key, n)
}

// AppendN is GetN appending to dst; with enough capacity in dst and n <= 16
// it allocates nothing.
func (s *Snapshot) AppendN(dst []string, key string, n int) ([]string, error) {
	if n < 1 {
		return dst, ErrInvalidCount
	}
	if s.n == 0 {
		return dst, ErrEmpty
	}
	skip := s.skipDraining()
	usable := s.nMembers
	if skip {
		usable -= s.nDrain
	}
	h := s.hashKey(key)
	if s.nShedLive > 0 {
		return s.walkShed(dst, key, h, min(n, usable), usable, skip, nil), nil
	}
	return s.walk(dst, h, min(n, usable), skip, nil), nil
}

// walk appends want distinct members found clockwise from hash h. Members
// for which allowed (if non-nil) is false are passed over, and so are
// draining members when skip is set. The loop keeps only owners, and the
// ids are appended after it: with the ids and the bucket position live in
// the loop, it spilled registers and ran 20 % more instructions than the
// flat layout's.
func (s *Snapshot) walk(dst []string, h uint64, want int, skip bool, allowed func(uint32) bool) []string {
	if want > smallSet {
		return s.walkWide(dst, h, want, skip, allowed)
	}
	// seek, written out: it is too big to be inlined.
	g := int(h >> (s.gshift & 63))
	b := s.points[g]
	t, x := h>>(s.shift&63)&(bucketSlots-1), h<<(s.bits&63)
	var i int
	if s.nFat == 0 {
		i = b.find(t, x)
	} else {
		i = b.findFat(t, x)
	}
	var small [smallSet]uint32
	found := small[:0] // distinct owners so far
	ps, mask := b.points, s.mask
	for walked := 0; len(found) < want && walked < s.n; walked++ {
		o := uint32(ps[i] & mask)
		if i++; i == len(ps) {
			g, ps, i = s.step(g)
		}
		if (skip && s.entry(o).drain) || (allowed != nil && !allowed(o)) || slices.Contains(found, o) {
			continue
		}
		found = append(found, o)
	}
	for _, o := range found {
		dst = append(dst, s.entry(o).id)
	}
	return dst
}

// walkWide is walk for more than smallSet members, with a bitset of the
// owners met.
func (s *Snapshot) walkWide(dst []string, h uint64, want int, skip bool, allowed func(uint32) bool) []string {
	g, b, i := s.seek(h)
	seen := make([]uint64, (s.nSlots+63)/64)
	ps, mask := b.points, s.mask
	for got, walked := 0, 0; got < want && walked < s.n; walked++ {
		o := uint32(ps[i] & mask)
		if i++; i == len(ps) {
			g, ps, i = s.step(g)
		}
		if (skip && s.entry(o).drain) || (allowed != nil && !allowed(o)) || seen[o/64]&(1<<(o%64)) != 0 {
			continue
		}
		seen[o/64] |= 1 << (o % 64)
		dst = append(dst, s.entry(o).id)
		got++
	}
	return dst
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
	drained, shedding := 0, 0
	for _, c := range candidates {
		o, ok := s.ids.lookup(c)
		if !ok {
			return s.fromUnknown(dst, key, candidates, n)
		}
		if slices.Contains(idx, o) {
			continue
		}
		idx = append(idx, o)
		if e := s.entry(o); e.drain {
			drained++
		} else if e.shed > 0 {
			shedding++
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
		set := make([]uint64, (s.nSlots+63)/64)
		for _, o := range idx {
			set[o/64] |= 1 << (o % 64)
		}
		allowed = func(o uint32) bool { return set[o/64]&(1<<(o%64)) != 0 }
	}
	h := s.hashKey(key)
	if shedding > 0 {
		return s.walkShed(dst, key, h, min(n, usable), usable, skip, allowed), nil
	}
	return s.walk(dst, h, min(n, usable), skip, allowed), nil
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
	return build(s.vnodes, s.hash, next).AppendN(dst, key, n)
}
