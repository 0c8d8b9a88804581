package ring

import (
	"cmp"
	"slices"
)

// rawPoint is a point's full hash and its owner's slot.
type rawPoint struct {
	hash  uint64
	owner uint32
}

// rebuild returns the snapshot that build(old.vnodes, old.hash, full)
// returns, field for field, for a change too large to patch (see apply),
// but reads the points of the members that stay from old instead of hashing
// and sorting them again. A point's word and the table slot it sits in give
// back its full hash, and its owner maps to the member's slot in id order,
// so that the points that stay arrive already in ring order; only the
// points that join (new members, and the points a grown weight adds at the
// end of a member's sequence) are hashed and sorted, and the points a
// shrunk weight drops are hashed to be found. Each new bucket is then one
// merge of the two.
//
// Why: in a burst of 50,000 joins, every reader rebuilds its ring many
// times as it grows, and each fresh build hashes every point (XXH64, 150 a
// member) and sorts them all: in a profile of the scale benchmark the
// RingCaches spent 8.4 s of CPU in build (fillSorted 4.2 s, sortSlot
// 2.2 s). Against build, on 40,000 members (BenchmarkApplyShare, 2-core
// VM, medians of 6, interleaved): joins of 1/4 of them 155 ms instead of
// 524 ms, joins of 1/2 321 ms instead of 567 ms (the table grows there, and
// 3 M new points are hashed and grouped), half of them leaving 71 ms
// instead of 136 ms; 24 to 49 % less garbage.
func (old *Snapshot) rebuild(full []Member) *Snapshot {
	s := newSnapshot(old.vnodes, old.hash, full)
	const gone = ^uint32(0)
	slot := make([]uint32, old.nSlots) // old slot → new slot, or gone
	cut := make([]bool, old.nSlots)    // the member keeps fewer points
	for i := range slot {
		slot[i] = gone
	}

	// Members, in id order: old and full side by side. was[j] is full[j]'s
	// old slot, or gone if it joins.
	was := make([]uint32, len(full))
	nAdd, nRm, j := 0, 0, 0
	for _, ch := range old.ids.chunks {
		for _, r := range ch {
			for ; j < len(full) && full[j].ID < r.id; j++ {
				was[j] = gone
				nAdd += points(s.vnodes, full[j].Weight)
			}
			if j == len(full) || full[j].ID != r.id {
				continue // it leaves
			}
			was[j], slot[r.slot] = r.slot, uint32(j)
			from, to := points(s.vnodes, old.entry(r.slot).weight), points(s.vnodes, full[j].Weight)
			nAdd += max(0, to-from)
			nRm += max(0, from-to)
			j++
		}
	}
	for ; j < len(full); j++ {
		was[j] = gone
		nAdd += points(s.vnodes, full[j].Weight)
	}
	// The points that join, and those that a smaller weight drops: the end
	// of a member's sequence (see points).
	add, rm := make([]rawPoint, 0, nAdd), make([]rawPoint, 0, nRm)
	ph := pointHasher{fn: s.hash}
	hash := func(dst []rawPoint, id string, from, to int, owner uint32) []rawPoint {
		ph.startAt(id, from)
		for range to - from {
			dst = append(dst, rawPoint{ph.sum(), owner})
			ph.next()
		}
		return dst
	}
	for j, m := range full {
		o, from, to := was[j], 0, points(s.vnodes, m.Weight)
		if o != gone {
			from = points(s.vnodes, old.entry(o).weight)
		}
		switch {
		case to > from:
			add = hash(add, m.ID, from, to, uint32(j))
		case to < from:
			rm = hash(rm, m.ID, to, from, o)
			cut[o] = true
		}
	}
	slices.SortFunc(rm, func(a, b rawPoint) int { return cmp.Compare(a.hash, b.hash) })
	// dropped reports whether the point (h, o) is one that o's smaller
	// weight drops, and takes it off rm. Points come in hash order.
	r := 0
	dropped := func(h uint64, o uint32) bool {
		for r < len(rm) && rm[r].hash < h {
			r++
		}
		for k := r; k < len(rm) && rm[k].hash == h; k++ {
			if rm[k].owner == o {
				rm[k].owner = gone
				return true
			}
		}
		return false
	}

	// The points added, grouped by new bucket in place: start[g] is where
	// bucket g's begin. One pass straight into every bucket stored each
	// point at a random place in the array; two passes, into parts of about
	// 16,000 points and then each part into its buckets, keep the stores on
	// lines in cache (as in fillSorted): joins of half of 40,000 members
	// took 490 and 540 ms with one pass (two runs), 420 and 500 with two.
	nb := len(s.points)
	gshift, shift, bits := s.gshift&63, s.shift&63, s.bits&63
	c := uint(0) // parts: 1<<c
	for c < bits-bucketBits && len(add)>>(c+14) > 0 {
		c++
	}
	part := make([]int32, 1<<c+1)
	spreadPoints(add, 64-c, 0, part, 0)
	start := make([]int32, nb+1)
	per := nb >> c
	for q := range 1 << c {
		spreadPoints(add[part[q]:part[q+1]], gshift, uint64(q*per), start[q*per:(q+1)*per+1], part[q])
	}

	// The buckets: kept holds the old points of bucket cur, in ring order
	// by new owner, and kc counts them by slot; fill merges them with the
	// points added, slot by slot. A small ring keeps its buckets in one
	// array and its points in another, as build does (see contiguousPoints).
	var arena []uint64
	var hdrs []bucket
	if s.n < contiguousPoints {
		arena, hdrs = make([]uint64, 0, s.n+nb), make([]bucket, nb)
	}
	var kept, fresh []uint64
	var kc [bucketSlots + 1]int
	fill := func(g int) {
		nw := add[start[g]:start[g+1]]
		n := len(kept) + len(nw)
		if n == 0 {
			return
		}
		var fc [bucketSlots + 1]int
		for _, p := range nw {
			fc[p.hash>>shift&(bucketSlots-1)+1]++
		}
		for t := range bucketSlots {
			fc[t+1] += fc[t]
			kc[t+1] += kc[t]
		}
		fi := fc
		fresh = slices.Grow(fresh[:0], len(nw))[:len(nw)]
		for _, p := range nw {
			t := p.hash >> shift & (bucketSlots - 1)
			fresh[fi[t]] = p.hash<<bits | uint64(p.owner)
			fi[t]++
		}
		var words []uint64
		var b *bucket
		k := 0
		if hdrs != nil && n < fat {
			k = len(arena)
			words, b = arena, &hdrs[g]
		} else {
			words = makeWords(n)
		}
		var st [bucketSlots + 1]int
		for t := range bucketSlots {
			st[t] = len(words) - k
			f := fresh[fc[t]:fc[t+1]]
			sortSlot(f) // words in a slot compare as (hash, owner)
			words = mergeWords(words, kept[kc[t]:kc[t+1]], f)
		}
		st[bucketSlots] = n
		if hdrs != nil && n < fat {
			arena = append(words, 0)
			words = arena[k : k+n : k+n+1]
		}
		if b = newBucket(b, words, &st); b.fat() {
			s.nFat++
		}
		s.points[g] = b
		kept, kc = kept[:0], [bucketSlots + 1]int{}
	}

	// The old points. They come in ring order, (hash, id), and their new owners number
	// members in id order, so they come in (hash, new owner) order too: the
	// order of the words within a slot, which is what the merge needs.
	cur := 0
	for og, b := range old.points {
		for t := range uint64(bucketSlots) {
			top := (uint64(og)<<bucketBits | t) << (old.shift & 63)
			lo, hi := b.bounds(t)
			for _, v := range b.points[lo:hi] {
				h, o := top|v>>(old.bits&63), uint32(v&old.mask)
				to := slot[o]
				if to == gone || cut[o] && dropped(h, o) {
					continue
				}
				for g := int(h >> gshift); cur < g; cur++ {
					fill(cur)
				}
				kept = append(kept, h<<bits|uint64(to))
				kc[h>>shift&(bucketSlots-1)+1]++
			}
		}
	}
	for ; cur < nb; cur++ {
		fill(cur)
	}
	s.link()
	return s
}

// mergeWords appends the words of a and of b, each sorted, to out, in
// order.
func mergeWords(out, a, b []uint64) []uint64 {
	for len(a) > 0 && len(b) > 0 {
		if b[0] < a[0] {
			out, b = append(out, b[0]), b[1:]
		} else {
			out, a = append(out, a[0]), a[1:]
		}
	}
	return append(append(out, a...), b...)
}

// spreadPoints permutes ps in place into groups by key p.hash>>shift - base,
// each below len(start)-1, in key order (American flag sort: one cursor per
// group), and sets start[k] to off plus where group k starts.
func spreadPoints(ps []rawPoint, shift uint, base uint64, start []int32, off int32) {
	clear(start)
	for _, p := range ps {
		start[p.hash>>shift-base+1]++
	}
	for k := 1; k < len(start); k++ {
		start[k] += start[k-1]
	}
	next := slices.Clone(start[:len(start)-1])
	for k := range next {
		for i := next[k]; i < start[k+1]; i = next[k] {
			p := ps[i]
			for d := p.hash>>shift - base; d != uint64(k); d = p.hash>>shift - base {
				ps[next[d]], p = p, ps[next[d]]
				next[d]++
			}
			ps[i] = p
			next[k]++
		}
	}
	for k := range start {
		start[k] += off
	}
}
