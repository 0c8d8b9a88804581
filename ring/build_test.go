package ring

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// checkLayout checks s's packed points against the reference ring of the
// same membership: the same (hash, owner id) sequence, bucket tables that
// index it, owners that fit their bits, and search answering as sort.Search
// over the full hashes.
func checkLayout(t *testing.T, s *Snapshot, ref *refRing, rng *rand.Rand) {
	t.Helper()
	if s.Points() != len(ref.hashes) {
		t.Fatalf("%d points, reference %d", s.Points(), len(ref.hashes))
	}
	if len(s.points) != 1<<(s.bits-bucketBits) || s.bits <= bucketBits {
		t.Fatalf("%d buckets with %d table bits", len(s.points), s.bits)
	}
	if s.nSlots > 0 && uint64(s.nSlots-1) > s.mask {
		t.Fatalf("%d slots do not fit in %d owner bits", s.nSlots, s.bits)
	}
	var first uint64 // the ring's first point: the sentinel of the last bucket with points
	for _, b := range slices.Backward(s.points) {
		if b.len() > 0 {
			first = b.points[0]
		}
	}
	for g, b := range slices.Backward(s.points) {
		var table []int
		for t := range uint64(bucketSlots) {
			lo, hi := b.bounds(t)
			table = append(table, lo, hi)
		}
		if table[0] != 0 || table[len(table)-1] != b.len() || !slices.IsSorted(table) || b.fat() != (b.len() >= fat) {
			t.Fatalf("bucket %d: slots %v over %d points (fat: %v)", g, table, b.len(), b.fat())
		}
		if s.Points() > 0 && b.points[b.len()] != first {
			t.Fatalf("bucket %d: sentinel %#x, want the next point %#x", g, b.points[b.len()], first)
		}
		if b.len() > 0 {
			first = b.points[0]
		}
	}
	i := 0
	for h, o := range s.all {
		if h != ref.hashes[i] || o >= s.nSlots || s.entry(o).id != ref.ids[i] {
			t.Fatalf("point %d is (%#x, %d), reference (%#x, %s)", i, h, o, ref.hashes[i], ref.ids[i])
		}
		i++
	}
	if i != s.Points() {
		t.Fatalf("all yielded %d points of %d", i, s.Points())
	}
	probe := func(h uint64) {
		want := sort.Search(len(ref.hashes), func(i int) bool { return ref.hashes[i] >= h })
		if want == len(ref.hashes) {
			want = 0
		}
		g, b, i := s.at(h)
		if ph, o := pointAt(s, g, b, i); ph != ref.hashes[want] || s.entry(o).id != ref.ids[want] {
			t.Fatalf("search(%#x) finds (%#x, %s), reference point %d (%#x, %s)", h, ph, s.entry(o).id, want, ref.hashes[want], ref.ids[want])
		}
	}
	for i, h := range ref.hashes {
		if i%max(1, len(ref.hashes)/2000) == 0 { // about 2,000 points, evenly
			probe(h)
			probe(h - 1)
			probe(h + 1)
		}
	}
	for range 2000 {
		probe(rng.Uint64())
	}
	probe(0)
	probe(1<<64 - 1)
}

// pointAt returns the hash and owner of point i of bucket b (number g).
func pointAt(s *Snapshot, g int, b *bucket, i int) (uint64, uint32) {
	t := uint64(0)
	for _, hi := b.bounds(t); hi <= i; _, hi = b.bounds(t) {
		t++
	}
	v := b.points[i]
	return (uint64(g)<<bucketBits|t)<<s.shift | v>>s.bits, uint32(v & s.mask)
}

// ringPoint is a point as the normative order sees it.
type ringPoint struct {
	hash uint64
	id   string
}

// layoutOf returns s's points in ring order.
func layoutOf(s *Snapshot) []ringPoint {
	out := make([]ringPoint, 0, s.Points())
	for h, o := range s.all {
		out = append(out, ringPoint{h, s.entry(o).id})
	}
	return out
}

// TestLayoutEveryPath reaches random memberships by building afresh, by
// merging a few changes into a ring, and by changes large enough to rebuild,
// and checks each result against the reference.
func TestLayoutEveryPath(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	weights := []float64{1, 1, 1, 0.5, 2, 3.3, 0.001, 7.5}
	random := func(n int) []Member {
		ms := make([]Member, n)
		for i := range ms {
			ms[i] = Member{ID: "m" + strconv.Itoa(rng.IntN(3*n)) + "-" + strconv.Itoa(i), Weight: weights[rng.IntN(len(weights))]}
		}
		return ms
	}
	for trial := range 32 {
		vnodes := []int{1, 7, 150, 200}[trial%4] // 7.5 × 200: points past 999
		ms := random(1 + rng.IntN(40))
		r := mustNew(t, Config{VirtualNodes: vnodes}, ms...)
		checkLayout(t, r.Snapshot(), newRef(vnodes, ms...), rng)

		// A few changes: merged.
		for step := range 6 {
			switch step % 3 {
			case 0:
				m := Member{ID: fmt.Sprintf("new-%d-%d", trial, step), Weight: weights[rng.IntN(len(weights))]}
				ms = append(ms, m)
				if err := r.Add(m); err != nil {
					t.Fatal(err)
				}
			case 1:
				k := rng.IntN(len(ms))
				r.Remove(ms[k].ID)
				ms = slices.Delete(ms, k, k+1)
			case 2:
				k := rng.IntN(len(ms))
				ms[k].Weight = weights[rng.IntN(len(weights))]
				if err := r.Set(ms); err != nil {
					t.Fatal(err)
				}
			}
			if len(ms) == 0 {
				break
			}
			checkLayout(t, r.Snapshot(), newRef(vnodes, ms...), rng)
		}

		// Half the members replaced: rebuilt.
		for i := range ms {
			if rng.IntN(2) == 0 {
				ms[i].ID += "-x"
			}
		}
		ms, _ = normalizeAll(ms, true)
		if err := r.Set(ms); err != nil {
			t.Fatal(err)
		}
		checkLayout(t, r.Snapshot(), newRef(vnodes, ms...), rng)
	}
}

// TestLayoutCrowdedSlot forces every point into a few table slots, with
// exact hash collisions between members, so slots are sorted with the
// general sort and merges meet equal hashes.
func TestLayoutCrowdedSlot(t *testing.T) {
	h := func(s string) uint64 {
		x := xxhash.Sum64String(s)
		return x>>60 | (x&3)<<3 // 32 distinct values, all in slot 0
	}
	rng := rand.New(rand.NewPCG(3, 4))
	ms := members(30)
	r := mustNew(t, Config{VirtualNodes: 20, hash: h}, ms...)
	checkLayout(t, r.Snapshot(), newRefHash(20, h, ms...), rng)
	if err := r.Add(Member{ID: "late", Weight: 2}); err != nil {
		t.Fatal(err)
	}
	r.Remove("node-4")
	ms = append(slices.Delete(ms, 4, 5), Member{ID: "late", Weight: 2})
	checkLayout(t, r.Snapshot(), newRefHash(20, h, ms...), rng)
	// Re-weighting removes and adds the same member's points in one merge,
	// every one of them equal in hash to dozens of others.
	ms[7].Weight, ms[20].Weight = 2.5, 0.3
	if err := r.Set(ms); err != nil {
		t.Fatal(err)
	}
	ref := newRefHash(20, h, ms...)
	checkLayout(t, r.Snapshot(), ref, rng)
	for _, k := range fixedKeys(300) {
		if got, _ := r.GetN(k, 3); !slices.Equal(got, ref.getN(k, 3)) {
			t.Fatalf("GetN(%q, 3) = %v, reference %v", k, got, ref.getN(k, 3))
		}
	}
}

// TestLayoutFatBucket crowds more points into one bucket than its 16-bit
// table indexes: the bucket turns fat, lookups take the slow path and
// still answer as the reference, and patching it keeps it right.
func TestLayoutFatBucket(t *testing.T) {
	if testing.Short() {
		t.Skip("builds rings of 70,000 points in one bucket")
	}
	h := func(s string) uint64 { return xxhash.Sum64String(s) >> 40 } // all in bucket 0
	rng := rand.New(rand.NewPCG(9, 10))
	ms := members(470)
	r := mustNew(t, Config{hash: h}, ms...)
	if s := r.Snapshot(); s.nFat != 1 || !s.points[0].fat() {
		t.Fatalf("%d fat buckets, bucket 0 fat: %v", s.nFat, s.points[0].fat())
	}
	check := func() {
		t.Helper()
		ref := newRefHash(DefaultVirtualNodes, h, ms...)
		checkLayout(t, r.Snapshot(), ref, rng)
		for _, k := range fixedKeys(300) {
			if got, _ := r.GetN(k, 2); !slices.Equal(got, ref.getN(k, 2)) {
				t.Fatalf("GetN(%q, 2) = %v, reference %v", k, got, ref.getN(k, 2))
			}
		}
	}
	check()
	if err := r.Add(Member{ID: "late"}); err != nil {
		t.Fatal(err)
	}
	ms = append(ms, Member{ID: "late", Weight: 1})
	check()
	for range 40 { // below 65,535 points: thin again
		r.Remove(ms[0].ID)
		ms = ms[1:]
	}
	check()
	if s := r.Snapshot(); s.nFat != 0 {
		t.Fatalf("%d fat buckets at %d points", s.nFat, s.Points())
	}
}

// TestLayoutMoreMembersThanSlots: with more members than 2^maxTableBits the
// owner needs more bits than the table would have; the table grows to match.
func TestLayoutMoreMembersThanSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a ring of 140,000 members")
	}
	n := 1<<maxTableBits + 8000
	ms := members(n)
	r := mustNew(t, Config{VirtualNodes: 1}, ms...)
	s := r.Snapshot()
	if s.bits <= maxTableBits {
		t.Fatalf("%d members in %d owner bits", n, s.bits)
	}
	ref := newRef(1, ms...)
	checkLayout(t, s, ref, rand.New(rand.NewPCG(5, 6)))
	r.Remove("node-0")
	if err := r.Add(Member{ID: "node-x"}); err != nil {
		t.Fatal(err)
	}
	ms[0].ID = "node-x"
	checkLayout(t, r.Snapshot(), newRef(1, ms...), rand.New(rand.NewPCG(5, 6)))
}

// TestSharedPoints: a change of only draining or shed keeps the very same
// points; a change of weight does not.
func TestSharedPoints(t *testing.T) {
	ms := members(20)
	r := mustNew(t, Config{}, ms...)
	before := r.Snapshot()
	ms[3].Draining, ms[5].Shed, ms[6].Shed = true, 0.25, 1
	if err := r.Set(ms); err != nil {
		t.Fatal(err)
	}
	after := r.Snapshot()
	if &after.points[0] != &before.points[0] {
		t.Fatal("draining and shed changes rebuilt the points")
	}
	if m, _ := after.Member("node-5"); m.Shed != 0.25 || after.Shedding() != 2 {
		t.Fatalf("node-5 = %+v, %d shedding; want shed 0.25, 2 shedding", m, after.Shedding())
	}
	ms[5].Weight = 2
	if err := r.Set(ms); err != nil {
		t.Fatal(err)
	}
	if s := r.Snapshot(); &s.points[0] == &before.points[0] || s.Points() != 21*150 {
		t.Fatalf("re-weighting kept the old points (%d points)", s.Points())
	}
}

func TestPointHasherCounts(t *testing.T) {
	ph := pointHasher{fn: func(s string) uint64 { return 0 }}
	ph.start("id")
	for i := range 12_345 {
		if got, want := string(ph.buf), "id:"+strconv.Itoa(i); got != want {
			t.Fatalf("point %d: buffer %q, want %q", i, got, want)
		}
		ph.next()
	}
}
