package ring

import (
	"math"
	"slices"
	"sort"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// refRing is the ring construction written as literally as DESIGN.md states
// it, with sort.Search and no tricks. It is the oracle for the golden vectors
// and property tests, and the "plain sort.Search ring" baseline for the
// benchmarks.
type refRing struct {
	hashes   []uint64
	ids      []string // ids[i] owns hashes[i]
	draining map[string]bool
	members  int
}

func newRef(vnodes int, members ...Member) *refRing {
	type pt struct {
		h  uint64
		id string
	}
	var pts []pt
	r := &refRing{draining: map[string]bool{}, members: len(members)}
	for _, m := range members {
		w := m.Weight
		if w == 0 {
			w = 1
		}
		for i := range max(1, int(math.Round(float64(vnodes)*w))) {
			pts = append(pts, pt{xxhash.Sum64String(m.ID + ":" + strconv.Itoa(i)), m.ID})
		}
		if m.Draining {
			r.draining[m.ID] = true
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

// get is the baseline lookup: binary search with sort.Search, wrap to 0.
func (r *refRing) get(key string) string {
	h := xxhash.Sum64String(key)
	i := sort.Search(len(r.hashes), func(i int) bool { return r.hashes[i] >= h })
	if i == len(r.hashes) {
		i = 0
	}
	return r.ids[i]
}

// getN walks clockwise collecting distinct usable members.
func (r *refRing) getN(key string, n int) []string {
	if len(r.hashes) == 0 {
		return nil
	}
	skip := len(r.draining) > 0 && len(r.draining) < r.members
	want := r.members
	if skip {
		want -= len(r.draining)
	}
	want = min(want, n)
	h := xxhash.Sum64String(key)
	i := sort.Search(len(r.hashes), func(i int) bool { return r.hashes[i] >= h })
	var out []string
	for k := 0; k < len(r.hashes) && len(out) < want; k++ {
		id := r.ids[(i+k)%len(r.hashes)]
		if (skip && r.draining[id]) || slices.Contains(out, id) {
			continue
		}
		out = append(out, id)
	}
	return out
}
