package ring

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// sameSnapshot checks that s is b field for field (see snapshotDiff).
func sameSnapshot(t *testing.T, s, b *Snapshot) {
	t.Helper()
	if d := snapshotDiff(s, b); d != "" {
		t.Fatal(d)
	}
}

// snapshotDiff describes the first difference between s and a fresh build
// b, or returns "": table, counters, slots, shed ranks, id index and every
// bucket's points, sentinel and slot starts.
func snapshotDiff(s, b *Snapshot) string {
	type head struct {
		vnodes, n, nFat, nMembers, nDrain, nShed, nShedLive int
		bits, shift, gshift                                 uint
		mask                                                uint64
		nSlots, nRanks                                      uint32
		free, freeRank                                      int
		slots, chunks, buckets                              int
	}
	hd := func(s *Snapshot) head {
		return head{s.vnodes, s.n, s.nFat, s.nMembers, s.nDrain, s.nShed, s.nShedLive, s.bits, s.shift, s.gshift, s.mask,
			s.nSlots, s.nRanks, s.free.size(), s.freeRank.size(), len(s.slots), len(s.ids.chunks), len(s.points)}
	}
	if a, w := hd(s), hd(b); a != w {
		return fmt.Sprintf("snapshot %+v, fresh %+v", a, w)
	}
	for l := range s.slots {
		if *s.slots[l] != *b.slots[l] {
			return fmt.Sprintf("slot leaf %d differs from the fresh build's", l)
		}
	}
	for c := range s.ids.chunks {
		if !slices.Equal(s.ids.chunks[c], b.ids.chunks[c]) || s.ids.firsts[c] != b.ids.firsts[c] {
			return fmt.Sprintf("id chunk %d differs from the fresh build's", c)
		}
	}
	for g := range s.points {
		x, y := s.points[g], b.points[g]
		if !slices.Equal(x.points, y.points) || x.table != y.table {
			return fmt.Sprintf("bucket %d: %d points %x, fresh %d points %x", g, x.len(), x.points, y.len(), y.points)
		}
		for u := range uint64(bucketSlots) {
			lo1, hi1 := x.bounds(u)
			lo2, hi2 := y.bounds(u)
			if lo1 != lo2 || hi1 != hi2 {
				return fmt.Sprintf("bucket %d slot %d: [%d, %d), fresh [%d, %d)", g, u, lo1, hi1, lo2, hi2)
			}
		}
	}
	return ""
}

// TestRebuildEqualsFresh: rebuild, from rings whose slots a run of patches
// has left out of id order and with free slots and ranks, makes the
// snapshot a fresh build of the same membership makes, for batches of
// joins, leaves, weights up and down and flags, large enough to grow or
// shrink the table, with hashes that collide; and apply, which rebuilds
// when a batch moves more than an eighth of the points, agrees.
func TestRebuildEqualsFresh(t *testing.T) {
	crowded := func(s string) uint64 { // 64 distinct values: equal hashes everywhere
		x := xxhash.Sum64String(s)
		return x&(0x3f<<58) | 1
	}
	coarse := func(s string) uint64 { return xxhash.Sum64String(s) &^ (1<<52 - 1) } // 4,096 values
	cfgs := []Config{{}, {VirtualNodes: 7}, {VirtualNodes: 40, hash: coarse}, {VirtualNodes: 20, hash: crowded}, {VirtualNodes: 1}}
	for ci, cfg := range cfgs {
		t.Run(fmt.Sprintf("config=%d", ci), func(t *testing.T) {
			cfg := cfg.withDefaults()
			rng := rand.New(rand.NewPCG(uint64(ci), 99))
			ids := make([]string, 400)
			for i := range ids {
				ids[i] = fmt.Sprintf("m%04d", rng.IntN(2000))
			}
			want := model{}
			for _, id := range ids[:30] {
				want[id] = randomMember(rng, id)
			}
			r := mustNew(t, cfg, want.members()...)
			rebuilds, applied := 0, 0
			for range 40 {
				// A few patches, to scramble the slots.
				for range 1 + rng.IntN(8) {
					id := ids[rng.IntN(len(ids))]
					if _, ok := want[id]; ok && rng.IntN(2) == 0 {
						delete(want, id)
						r.Remove(id)
						continue
					}
					want[id] = randomMember(rng, id)
					if err := r.Add(want[id]); err != nil {
						t.Fatal(err)
					}
				}
				old := r.Snapshot()
				// A batch: joins, leaves, weights and flags, its size a
				// share of the ring or of the ids, so that rings grow
				// from tens to hundreds of members and back.
				var chs []change
				size := 1 + rng.IntN(max(1, []int{len(want) / 2, len(want) * 3, len(ids) / 2, 4}[rng.IntN(4)]))
				leaveBias := rng.IntN(3) // 0: mostly joins, 2: mostly leaves
				for range size {
					id := ids[rng.IntN(len(ids))]
					m, ok := want[id]
					switch op := rng.IntN(6); {
					case ok && op < 2+leaveBias:
						delete(want, id)
						chs = append(chs, change{m: Member{ID: id}, remove: true})
						continue
					case ok && op == 5: // a weight up or down, or a flag
						switch rng.IntN(3) {
						case 0:
							m.Weight = []float64{0.5, 1, 2, 3, 0.02}[rng.IntN(5)]
						case 1:
							m.Draining = !m.Draining
						case 2:
							m.Shed = []float64{0, 0.25, 1}[rng.IntN(3)]
						}
					default:
						m = randomMember(rng, id)
					}
					m, _ = m.normalize()
					want[id] = m
					chs = append(chs, change{m: m})
				}
				chs = sortChanges(chs)
				full := want.members()
				fresh := build(cfg.VirtualNodes, cfg.hash, full)
				if old.n > 0 {
					sameSnapshot(t, old.rebuild(full), fresh)
					sameSnapshot(t, old.rebuild(old.merged(chs)), fresh)
					rebuilds++
				}
				next := old.apply(chs, nil)
				if next != old && snapshotDiff(next, fresh) == "" {
					applied++ // rebuilt, most likely: a patch keeps slots where they were
				}
				r.snap.Store(next)
				sameAsFresh(t, next, full, cfg, rng)
				if len(want) < 5 {
					for _, id := range ids[:20] {
						want[id] = randomMember(rng, id)
					}
					if err := r.Set(want.members()); err != nil {
						t.Fatal(err)
					}
				}
			}
			if rebuilds < 30 || applied < 5 {
				t.Fatalf("%d rebuilds, %d of them through apply", rebuilds, applied)
			}
			t.Logf("%d rebuilds checked, apply rebuilt at least %d times", rebuilds, applied)
		})
	}
}
