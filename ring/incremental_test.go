package ring

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// model is the membership a test expects, by id.
type model map[string]Member

func (m model) members() []Member {
	return slices.SortedFunc(maps.Values(m), func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
}

// sameAsFresh checks that s is the ring a fresh build of want makes: the
// same points in the same order, the same members and counters, and the
// same answers to Get, GetN and GetFrom; and that its layout is sound.
func sameAsFresh(t *testing.T, s *Snapshot, want []Member, cfg Config, rng *rand.Rand) {
	t.Helper()
	sameAsFreshKeys(t, s, want, cfg, rng, 200)
}

// sameAsFreshKeys is sameAsFresh asking nkeys keys, and checking the
// layout only if nkeys >= 100.
func sameAsFreshKeys(t *testing.T, s *Snapshot, want []Member, cfg Config, rng *rand.Rand, nkeys int) {
	t.Helper()
	fresh := mustNew(t, cfg, want...).Snapshot()
	if !slices.Equal(s.Members(), fresh.Members()) {
		t.Fatalf("members %v, fresh %v", s.Members(), fresh.Members())
	}
	if a, b := layoutOf(s), layoutOf(fresh); !slices.Equal(a, b) {
		i := 0
		for i < min(len(a), len(b)) && a[i] == b[i] {
			i++
		}
		t.Fatalf("%d points differ from the fresh ring's %d from point %d on", len(a), len(b), i)
	}
	if s.Len() != fresh.Len() || s.Shedding() != fresh.Shedding() || s.nDrain != fresh.nDrain || s.nShedLive != fresh.nShedLive {
		t.Fatalf("len %d, shedding %d, draining %d, live shedders %d; fresh %d, %d, %d, %d",
			s.Len(), s.Shedding(), s.nDrain, s.nShedLive, fresh.Len(), fresh.Shedding(), fresh.nDrain, fresh.nShedLive)
	}
	for _, m := range want {
		if got, ok := s.Member(m.ID); !ok || got != mustMember(t, fresh, m.ID) {
			t.Fatalf("Member(%q) = %+v, %v", m.ID, got, ok)
		}
	}
	if len(want) == 0 {
		return
	}
	switch {
	case nkeys < 100: // the fuzzer's cheap check
	case cfg.hash == nil:
		checkLayout(t, s, newRef(s.VirtualNodes(), want...), rng)
	default:
		checkLayout(t, s, newRefHash(s.VirtualNodes(), cfg.hash, want...), rng)
	}
	var cands []string
	for _, m := range want {
		if rng.IntN(3) == 0 {
			cands = append(cands, m.ID)
		}
	}
	for _, k := range fixedKeys(nkeys) {
		for _, n := range []int{1, 3, len(want)} {
			got, err1 := s.GetN(k, n)
			exp, err2 := fresh.GetN(k, n)
			if err1 != nil || err2 != nil || !slices.Equal(got, exp) {
				t.Fatalf("GetN(%q, %d) = %v, %v; fresh %v, %v", k, n, got, err1, exp, err2)
			}
		}
		if got, _ := s.Get(k); got != mustGet(t, fresh, k) {
			t.Fatalf("Get(%q) = %q, fresh %q", k, got, mustGet(t, fresh, k))
		}
		if len(cands) > 0 {
			got, _ := s.GetFrom(k, cands, 2)
			exp, _ := fresh.GetFrom(k, cands, 2)
			if !slices.Equal(got, exp) {
				t.Fatalf("GetFrom(%q, %v, 2) = %v, fresh %v", k, cands, got, exp)
			}
		}
	}
}

func mustMember(t *testing.T, s *Snapshot, id string) Member {
	t.Helper()
	m, ok := s.Member(id)
	if !ok {
		t.Fatalf("no member %q", id)
	}
	return m
}

func mustGet(t *testing.T, s *Snapshot, key string) string {
	t.Helper()
	o, err := s.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// randomMember returns a member with id from ids and random weight, flags.
func randomMember(rng *rand.Rand, id string) Member {
	m := Member{ID: id, Weight: []float64{1, 1, 1, 0.5, 2, 0.02, 1.3}[rng.IntN(7)]}
	m.Draining = rng.IntN(7) == 0
	if rng.IntN(4) == 0 {
		m.Shed = []float64{0.1, 0.5, 1}[rng.IntN(3)]
	}
	return m
}

// TestIncrementalEqualsFresh: any sequence of Add, Remove, Set and Apply
// leaves the ring a fresh build of the final membership makes, point for
// point, with draining and shedding members, several vnodes settings, and
// hashes that collide.
func TestIncrementalEqualsFresh(t *testing.T) {
	crowded := func(s string) uint64 { // 64 distinct values: equal hashes everywhere
		x := xxhash.Sum64String(s)
		return x&(0x3f<<58) | 1
	}
	coarse := func(s string) uint64 { return xxhash.Sum64String(s) &^ (1<<52 - 1) } // 4,096 values
	cfgs := []Config{{}, {VirtualNodes: 7}, {VirtualNodes: 40, hash: coarse}, {VirtualNodes: 20, hash: crowded}}
	for ci, cfg := range cfgs {
		t.Run(fmt.Sprintf("config=%d", ci), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(ci), 77))
			ids := make([]string, 60)
			for i := range ids {
				ids[i] = fmt.Sprintf("m%02d", rng.IntN(1000))
			}
			want := model{}
			for _, id := range ids[:40] {
				want[id] = randomMember(rng, id)
			}
			r := mustNew(t, cfg, want.members()...)
			for step := range 120 {
				before := r.Snapshot()
				beforePoints := layoutOf(before)
				id := ids[rng.IntN(len(ids))]
				switch op := rng.IntN(10); {
				case op < 3:
					m := randomMember(rng, id)
					want[id] = m
					if err := r.Add(m); err != nil {
						t.Fatal(err)
					}
				case op < 5:
					delete(want, id)
					r.Remove(id, "never-a-member")
				case op < 7: // one member changed in a whole membership
					m, ok := want[id]
					if !ok {
						m = randomMember(rng, id)
					}
					switch rng.IntN(4) {
					case 0:
						m.Weight = []float64{1, 2, 0.5}[rng.IntN(3)]
					case 1:
						m.Draining = !m.Draining
					case 2:
						m.Shed = []float64{0, 0.25, 1}[rng.IntN(3)]
					}
					want[id] = m
					if err := r.Set(want.members()); err != nil {
						t.Fatal(err)
					}
				default: // a batch, with repeats: the last change to an id wins
					var chs []Change
					for range 1 + rng.IntN(4) {
						id := ids[rng.IntN(len(ids))]
						if rng.IntN(3) == 0 {
							delete(want, id)
							chs = append(chs, Change{Member: Member{ID: id}, Remove: true})
						} else {
							m := randomMember(rng, id)
							want[id] = m
							chs = append(chs, Change{Member: m})
						}
					}
					if err := r.Apply(chs...); err != nil {
						t.Fatal(err)
					}
				}
				if !slices.Equal(layoutOf(before), beforePoints) {
					t.Fatalf("step %d: a write changed the snapshot before it", step)
				}
				sameAsFresh(t, r.Snapshot(), want.members(), cfg, rng)
				if len(want) < 10 { // keep the ring big enough to patch
					for _, id := range ids[:20] {
						want[id] = randomMember(rng, id)
					}
					if err := r.Set(want.members()); err != nil {
						t.Fatal(err)
					}
				}
			}
		})
	}
}

// TestPatchShares: a join at 2,000 members copies only the buckets its
// points fall in, the slot leaf it lands in and one id chunk; the previous
// snapshot keeps answering as before.
func TestPatchShares(t *testing.T) {
	r := mustNew(t, Config{}, members(2000)...)
	before := r.Snapshot()
	if err := r.Add(Member{ID: "newcomer"}); err != nil {
		t.Fatal(err)
	}
	after := r.Snapshot()
	copied := 0
	for g := range after.points {
		if after.points[g] != before.points[g] {
			copied++
		}
	}
	// 150 points in 8,192 buckets, plus a few neighbours whose sentinel
	// changed.
	if copied < 140 || copied > 160 {
		t.Fatalf("%d buckets copied for a join of 150 points", copied)
	}
	leaves := 0
	for l := range before.slots {
		if after.slots[l] != before.slots[l] {
			leaves++
		}
	}
	chunks := 0
	for c := range min(len(before.ids.chunks), len(after.ids.chunks)) {
		if &after.ids.chunks[c][0] != &before.ids.chunks[c][0] {
			chunks++
		}
	}
	if leaves > 1 || len(after.slots) > len(before.slots)+1 || chunks > 2 {
		t.Fatalf("%d leaves copied (%d → %d leaves), %d id chunks", leaves, len(before.slots), len(after.slots), chunks)
	}
	sameAsFresh(t, before, members(2000), Config{}, rand.New(rand.NewPCG(1, 1)))
	sameAsFresh(t, after, append(members(2000), Member{ID: "newcomer", Weight: 1}), Config{}, rand.New(rand.NewPCG(1, 1)))
}

// TestApplyBurstRebuilds: a burst that moves more than an eighth of the
// points is one fresh build, and matches one.
func TestApplyBurstRebuilds(t *testing.T) {
	r := mustNew(t, Config{})
	ms := members(3000)
	chs := make([]Change, len(ms))
	for i, m := range ms {
		chs[i] = Change{Member: m}
	}
	if err := r.Apply(chs...); err != nil {
		t.Fatal(err)
	}
	sameAsFresh(t, r.Snapshot(), ms, Config{}, rand.New(rand.NewPCG(2, 2)))
	if err := r.Apply(Change{Member: Member{ID: "bad", Weight: -1}}, Change{Member: Member{ID: "x"}}); err == nil || r.Len() != 3000 {
		t.Fatalf("an invalid change: %v, %d members", err, r.Len())
	}
	// A reused slot: leave, then join, then a member of a larger weight.
	r.Remove("node-17")
	if err := r.Apply(Change{Member: Member{ID: "node-x", Weight: 3}}, Change{Member: Member{ID: "node-17"}, Remove: true}); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Delete(slices.Clone(ms), 17, 18), Member{ID: "node-x", Weight: 3})
	want, _ = normalizeAll(want, false)
	sameAsFresh(t, r.Snapshot(), want, Config{}, rand.New(rand.NewPCG(3, 3)))
}

// FuzzRingIncremental drives a ring through a sequence of writes read from
// the input and checks it against a fresh build of the same membership
// after each. Ops are 3 bytes: op, id (of 24), weight/flags.
func FuzzRingIncremental(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 2, 1, 1, 3, 2, 2, 4, 0x13, 3, 5, 0x44})
	f.Add([]byte{1, 0, 0, 1, 1, 0, 0, 0, 0x80, 3, 9, 0x21, 2, 9, 0xff})
	f.Add([]byte{0x80, 0, 0, 0, 2, 4, 0, 3, 5, 1, 0, 0, 1, 7, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 3*64 {
			return
		}
		cfg := Config{VirtualNodes: 8}
		if len(ops) > 0 && ops[0]&0x80 != 0 { // collisions: 256 hash values
			cfg.hash = func(s string) uint64 { return xxhash.Sum64String(s) &^ (1<<56 - 1) }
		}
		id := func(b byte) string { return fmt.Sprintf("n%d", b%24) }
		member := func(b, f byte) Member {
			return Member{ID: id(b), Weight: []float64{1, 1, 0.5, 2, 0.125, 1.5, 3, 1}[f&7], Draining: f&8 != 0, Shed: []float64{0, 0, 0.3, 1}[f>>4&3]}
		}
		want := model{}
		for i := range 16 {
			want[id(byte(i))] = member(byte(i), 0)
		}
		r := mustNew(t, cfg, want.members()...)
		rng := rand.New(rand.NewPCG(5, 5))
		for ; len(ops) >= 3; ops = ops[3:] {
			op, b, fl := ops[0], ops[1], ops[2]
			switch op & 3 {
			case 0:
				m := member(b, fl)
				want[m.ID] = m
				if err := r.Add(m); err != nil {
					t.Fatal(err)
				}
			case 1:
				delete(want, id(b))
				r.Remove(id(b))
			case 2:
				m := member(b, fl)
				want[m.ID] = m
				if err := r.Set(want.members()); err != nil {
					t.Fatal(err)
				}
			case 3:
				m := member(b, fl)
				want[m.ID] = m
				delete(want, id(b+1))
				if err := r.Apply(Change{Member: Member{ID: id(b + 1)}, Remove: true}, Change{Member: m}); err != nil {
					t.Fatal(err)
				}
			}
			sameAsFreshKeys(t, r.Snapshot(), want.members(), cfg, rng, 20)
		}
	})
}

// TestSetInput: Set takes memberships in any order; a duplicate or an
// invalid member anywhere fails the whole Set and changes nothing, whether
// the rest matches the ring or not.
func TestSetInput(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	ms := sortedMembers(300)
	r := mustNew(t, Config{}, ms...)
	for trial := range 20 {
		next := slices.Clone(ms)
		next[rng.IntN(len(next))].Weight = 2
		next[rng.IntN(len(next))].Draining = true
		next = append(next, Member{ID: fmt.Sprintf("zz-%d", trial)}, Member{ID: fmt.Sprintf("0-%d", trial), Shed: 0.5})
		next = slices.Delete(next, 5, 6+rng.IntN(3))
		want, _ := normalizeAll(slices.Clone(next), false)
		if trial%2 == 0 {
			rng.Shuffle(len(next), func(i, j int) { next[i], next[j] = next[j], next[i] })
		}
		before := r.Snapshot()
		for _, bad := range [][]Member{
			append(slices.Clone(next), next[len(next)/2]),           // a duplicate
			append(slices.Clone(next), Member{ID: "x", Weight: -1}), // invalid, new
			append(slices.Clone(next[1:]), Member{ID: next[0].ID, Shed: 2}),
		} {
			if err := r.Set(bad); !errors.Is(err, ErrInvalidMember) || r.Snapshot() != before {
				t.Fatalf("trial %d: Set of a bad membership: %v", trial, err)
			}
		}
		if err := r.Set(next); err != nil {
			t.Fatal(err)
		}
		sameAsFresh(t, r.Snapshot(), want, Config{}, rng)
		ms = want
	}
}
