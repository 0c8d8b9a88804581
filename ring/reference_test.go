package ring

import (
	"math"
	"sort"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// refRing is the ring construction and lookup written as literally as
// DESIGN.md states them ("The ring" and "Load-aware ConsistentHash"), with
// sort.Search and no tricks. It is the oracle for the golden vectors and
// property tests, and the "plain sort.Search ring" baseline for the
// benchmarks.
type refRing struct {
	hash     func(string) uint64
	hashes   []uint64
	ids      []string // ids[i] owns hashes[i]
	draining map[string]bool
	shed     map[string]float64
	members  int
}

func newRef(vnodes int, members ...Member) *refRing {
	return newRefHash(vnodes, nil, members...)
}

// newRefHash is newRef with another hash for points and keys (forced
// collisions); nil means XXH64. Sheds always uses XXH64.
func newRefHash(vnodes int, hash func(string) uint64, members ...Member) *refRing {
	type pt struct {
		h  uint64
		id string
	}
	var pts []pt
	r := &refRing{hash: hash, draining: map[string]bool{}, shed: map[string]float64{}, members: len(members)}
	for _, m := range members {
		w := m.Weight
		if w == 0 {
			w = 1
		}
		for i := range max(1, int(math.Round(float64(vnodes)*w))) {
			pts = append(pts, pt{r.keyHash(m.ID + ":" + strconv.Itoa(i)), m.ID})
		}
		if m.Draining {
			r.draining[m.ID] = true
		}
		if m.Shed != 0 {
			r.shed[m.ID] = m.Shed
		}
	}
	sort.Slice(pts, func(i, j int) bool {
		if pts[i].h != pts[j].h {
			return pts[i].h < pts[j].h
		}
		return pts[i].id < pts[j].id
	})
	for _, p := range pts {
		r.hashes = append(r.hashes, p.h)
		r.ids = append(r.ids, p.id)
	}
	return r
}

// keyHash is XXH64 called directly (the benchmark baseline), or the test's hash.
func (r *refRing) keyHash(s string) uint64 {
	if r.hash == nil {
		return xxhash.Sum64String(s)
	}
	return r.hash(s)
}

// get is the baseline lookup: binary search with sort.Search, wrap to 0.
// It ignores draining and shed.
func (r *refRing) get(key string) string {
	h := r.keyHash(key)
	i := sort.Search(len(r.hashes), func(i int) bool { return r.hashes[i] >= h })
	if i == len(r.hashes) {
		i = 0
	}
	return r.ids[i]
}

// getN is the lookup rule of format 2 (with no member shedding it is the v1
// rule): walk clockwise from the key's point meeting each member once; the
// members that are not draining and do not shed the key come first, then the
// ones that are not draining and shed it, each in walk order. If every
// member is draining, the walk order as it is.
func (r *refRing) getN(key string, n int) []string {
	if len(r.hashes) == 0 {
		return nil
	}
	h := r.keyHash(key)
	start := sort.Search(len(r.hashes), func(i int) bool { return r.hashes[i] >= h })
	var walk []string
	met := map[string]bool{}
	for k := 0; k < len(r.hashes) && len(walk) < r.members; k++ {
		id := r.ids[(start+k)%len(r.hashes)]
		if !met[id] {
			met[id] = true
			walk = append(walk, id)
		}
	}
	if len(r.draining) == r.members {
		return walk[:min(n, len(walk))]
	}
	var keep, shed []string
	for _, id := range walk {
		switch {
		case r.draining[id]:
		case refSheds(key, id, r.shed[id]):
			shed = append(shed, id)
		default:
			keep = append(keep, id)
		}
	}
	out := append(keep, shed...)
	return out[:min(n, len(out))]
}

// refSheds is the shed test as DESIGN.md writes it: x = xxh64(k + "\x00" +
// id), u = (x >> 11) / 2^53, the member sheds k iff u < f.
func refSheds(key, id string, f float64) bool {
	if f == 0 {
		return false
	}
	x := xxhash.Sum64String(key + "\x00" + id)
	u := float64(x>>11) / (1 << 53)
	return u < f
}
