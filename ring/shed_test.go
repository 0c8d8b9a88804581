package ring

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
)

// randomShedMembers returns n members with random weights, about a third of
// them shedding (some fully) and about one in six draining.
func randomShedMembers(rng *rand.Rand, n int) []Member {
	ms := members(n)
	for i := range ms {
		ms[i].Weight = []float64{1, 1, 0.5, 2, 3.3}[rng.IntN(5)]
		ms[i].Draining = rng.IntN(6) == 0
		if rng.IntN(3) == 0 {
			ms[i].Shed = []float64{0.0001, 0.1, 0.3, 0.5, 0.9, 1}[rng.IntN(6)]
		}
	}
	return ms
}

func TestShedsRule(t *testing.T) {
	long := strings.Repeat("k", 300) // past the stack buffer: the streaming path
	for _, key := range append(fixedKeys(3000), "", "ключ", long, long+"x") {
		for _, id := range []string{"a", "node-17", strings.Repeat("n", MaxIDLength)} {
			for _, f := range []float64{0.0001, 0.25, 0.5, 0.9999} {
				if got, want := Sheds(key, id, f), refSheds(key, id, f); got != want {
					t.Fatalf("Sheds(%q, %q, %v) = %v, reference %v", truncate(key), truncate(id), f, got, want)
				}
			}
			if Sheds(key, id, 0) || Sheds(key, id, -1) || Sheds(key, id, math.NaN()) {
				t.Fatalf("Sheds(%q, %q) true with no shed", truncate(key), id)
			}
			if !Sheds(key, id, 1) {
				t.Fatalf("Sheds(%q, %q, 1) = false; f = 1 sheds every key", truncate(key), id)
			}
		}
	}
	// The shed share of keys is f: 100,000 keys, binomial σ ≈ 0.0015 at
	// f = 0.3, so ±0.01 is more than 6σ.
	keys := fixedKeys(100_000)
	for _, f := range []float64{0.05, 0.3, 0.7} {
		shed := 0
		for _, k := range keys {
			if Sheds(k, "node-3", f) {
				shed++
			}
		}
		if got := float64(shed) / float64(len(keys)); math.Abs(got-f) > 0.01 {
			t.Errorf("f = %v sheds %.4f of the keys, want %v ± 0.01", f, got, f)
		}
	}
	// Pinned values, for implementers in other languages (also in
	// subjects.md): x = xxh64("user-42\x00node-1") = 0x97247a0d0c68007e,
	// u = 0.5904..., so a shed of 0.59 keeps user-42 and 0.6 sheds it.
	if x := shedHash("user-42", "node-1"); x != 0x97247a0d0c68007e {
		t.Fatalf("xxh64(\"user-42\\x00node-1\") = %#x, want 0x97247a0d0c68007e", x)
	}
	if Sheds("user-42", "node-1", 0.59) || !Sheds("user-42", "node-1", 0.6) {
		t.Fatal("u(user-42, node-1) = 0.5904: a shed of 0.59 keeps it, 0.6 sheds it")
	}
}

func TestShedInvalid(t *testing.T) {
	for _, f := range []float64{-0.1, 1.0000001, 2, math.NaN(), math.Inf(1), math.Inf(-1)} {
		_, err := New(Config{}, Member{ID: "a", Shed: f})
		if !errors.Is(err, ErrInvalidMember) || !strings.Contains(err.Error(), "shed") {
			t.Errorf("shed %v: %v, want ErrInvalidMember naming the shed", f, err)
		}
	}
	r := mustNew(t, Config{}, Member{ID: "a", Shed: math.Copysign(0, -1)}, Member{ID: "b", Shed: 1}, Member{ID: "c", Shed: 0.0001})
	if m, _ := r.Snapshot().Member("a"); m.Shed != 0 || math.Signbit(m.Shed) || r.Snapshot().Shedding() != 2 {
		t.Fatalf("a = %+v, %d shedding; want shed 0, 2 shedding", m, r.Snapshot().Shedding())
	}
}

// TestShedMatchesReference: the ring answers as the literal reference on
// random memberships with shed, draining and weights, for every n.
func TestShedMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for trial := range 80 {
		n := 1 + rng.IntN(25)
		ms := randomShedMembers(rng, n)
		switch trial % 10 {
		case 0: // every member draining: the v1 walk, shed or not
			for i := range ms {
				ms[i].Draining = true
			}
		case 1: // every member sheds every key
			for i := range ms {
				ms[i].Shed = 1
			}
		}
		vnodes := []int{1, 10, 150}[trial%3]
		r := mustNew(t, Config{VirtualNodes: vnodes}, ms...)
		ref := newRef(vnodes, ms...)
		for _, k := range fixedKeys(300) {
			for _, cnt := range []int{1, 2, 3, n, n + 2} {
				got, err := r.GetN(k, cnt)
				if err != nil {
					t.Fatal(err)
				}
				if want := ref.getN(k, cnt); !slices.Equal(got, want) {
					t.Fatalf("trial %d: GetN(%q, %d) = %v, reference %v (members %+v)", trial, k, cnt, got, want, ms)
				}
			}
			if one, _ := r.Get(k); one != ref.getN(k, 1)[0] {
				t.Fatalf("trial %d: Get(%q) = %s, reference %s", trial, k, one, ref.getN(k, 1)[0])
			}
		}
	}
}

// TestShedWide covers the walks that leave the stack: more than 16 members
// wanted, more than 16 members shedding a key, and more than 1,024 shedding
// members.
func TestShedWide(t *testing.T) {
	for _, c := range []struct {
		name    string
		n, shed int
		f       float64
		counts  []int
	}{
		{"many-shed-one-key", 60, 40, 1, []int{1, 3, 20, 59, 70}},
		{"many-shedding-members", 1100, 1060, 0.9, []int{1, 2, 17}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ms := members(c.n)
			for i := range c.shed {
				ms[i].Shed = c.f
			}
			ms[c.n-1].Draining = true
			r := mustNew(t, Config{VirtualNodes: 4}, ms...)
			ref := newRef(4, ms...)
			for _, k := range fixedKeys(100) {
				for _, cnt := range c.counts {
					got, _ := r.GetN(k, cnt)
					if want := ref.getN(k, cnt); !slices.Equal(got, want) {
						t.Fatalf("GetN(%q, %d) = %v, reference %v", k, cnt, got, want)
					}
				}
			}
		})
	}
}

// TestShedWithoutShedIsFormat1: with no member shedding the answers are
// exactly those of v1 (the walk as it was before format 2), and with members
// shedding, every key that none of them sheds is answered as in v1 too.
func TestShedWithoutShedIsFormat1(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for range 40 {
		ms := randomShedMembers(rng, 1+rng.IntN(30))
		plain := slices.Clone(ms)
		for i := range plain {
			plain[i].Shed = 0
		}
		r := mustNew(t, Config{}, plain...)
		shedding := mustNew(t, Config{}, ms...)
		ref := newRef(150, plain...)
		for _, k := range fixedKeys(300) {
			want := v1GetN(ref, k, 4)
			if got, _ := r.GetN(k, 4); !slices.Equal(got, want) {
				t.Fatalf("no shed: GetN(%q, 4) = %v, v1 says %v", k, got, want)
			}
			if slices.ContainsFunc(ms, func(m Member) bool { return Sheds(k, m.ID, m.Shed) }) {
				continue
			}
			if got, _ := shedding.GetN(k, 4); !slices.Equal(got, want) {
				t.Fatalf("no member sheds %q: GetN(%q, 4) = %v, v1 says %v", k, k, got, want)
			}
		}
	}
}

// v1GetN is the v1 walk: distinct members clockwise from the key's point,
// draining members passed over unless all are draining.
func v1GetN(r *refRing, key string, n int) []string {
	skip := len(r.draining) > 0 && len(r.draining) < r.members
	h := r.keyHash(key)
	start := sort.Search(len(r.hashes), func(i int) bool { return r.hashes[i] >= h })
	var out []string
	for k := 0; k < len(r.hashes) && len(out) < n; k++ {
		id := r.ids[(start+k)%len(r.hashes)]
		if (skip && r.draining[id]) || slices.Contains(out, id) {
			continue
		}
		out = append(out, id)
	}
	return out
}

// TestShedMovesOnlyShedKeys: shedding never moves a key between two members
// that do not shed it. A key whose plain owner does not shed it keeps its
// owner; a key that moves leaves a member that sheds it; a shedding member
// hands on about f of its keys; and removing the shed restores every owner,
// with the points untouched throughout.
func TestShedMovesOnlyShedKeys(t *testing.T) {
	keys := fixedKeys(60_000)
	ms := members(20)
	ms[4].Draining = true
	r := mustNew(t, Config{}, ms...)
	plain := owners(t, r, keys)
	points := &r.Snapshot().points[0]

	ms[2].Shed, ms[9].Shed, ms[13].Shed, ms[4].Shed = 0.3, 0.05, 1, 0.5
	if err := r.Set(ms); err != nil {
		t.Fatal(err)
	}
	shed := owners(t, r, keys)
	byID := map[string]Member{}
	for _, m := range ms {
		byID[m.ID] = m
	}
	owned, moved := map[string]int{}, map[string]int{}
	for i, k := range keys {
		p := byID[plain[i]]
		owned[p.ID]++
		if !Sheds(k, p.ID, p.Shed) {
			if shed[i] != plain[i] {
				t.Fatalf("key %q moved from %s, which does not shed it, to %s", k, plain[i], shed[i])
			}
			continue
		}
		moved[p.ID]++
		if q := byID[shed[i]]; shed[i] == plain[i] || q.Draining {
			t.Fatalf("key %q shed by %s went to %s", k, plain[i], shed[i])
		}
	}
	for _, id := range []string{"node-2", "node-9", "node-13"} {
		f := byID[id].Shed
		got := float64(moved[id]) / float64(owned[id])
		// About 3,000 keys each: σ <= 0.01; ±0.04 is 4σ.
		if math.Abs(got-f) > 0.04 {
			t.Errorf("%s sheds %.3f of its %d keys, want %v ± 0.04", id, got, owned[id], f)
		}
	}
	if &r.Snapshot().points[0] != points {
		t.Fatal("setting shed rebuilt the points")
	}

	for i := range ms {
		ms[i].Shed = 0
	}
	if err := r.Set(ms); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, r, keys); !slices.Equal(got, plain) || &r.Snapshot().points[0] != points {
		t.Fatal("removing the shed did not restore every key's plain owner on the same points")
	}
}

// TestGetFromShed: a restricted lookup with shedding candidates answers as a
// fresh ring of exactly the candidates, each with its shed and draining mark
// (a stranger: weight 1, no shed).
func TestGetFromShed(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	for trial := range 60 {
		ms := randomShedMembers(rng, 1+rng.IntN(40))
		r := mustNew(t, Config{VirtualNodes: 20 + rng.IntN(200)}, ms...)
		var cands []string
		var sub []Member
		for _, m := range ms {
			if rng.IntN(3) == 0 {
				cands, sub = append(cands, m.ID), append(sub, m)
			}
		}
		if rng.IntN(4) == 0 {
			cands, sub = append(cands, "stranger"), append(sub, Member{ID: "stranger", Weight: 1})
		}
		if len(cands) == 0 {
			continue
		}
		if len(cands) > 1 {
			cands = append(cands, cands[len(cands)-1])
		}
		fresh := mustNew(t, Config{VirtualNodes: r.Snapshot().VirtualNodes()}, sub...)
		for _, k := range fixedKeys(300) {
			cnt := 1 + rng.IntN(5)
			got, err := r.GetFrom(k, cands, cnt)
			if err != nil {
				t.Fatal(err)
			}
			if want, _ := fresh.GetN(k, cnt); !slices.Equal(got, want) {
				t.Fatalf("trial %d key %q: GetFrom(%v, %d) = %v, fresh ring %v", trial, k, cands, cnt, got, want)
			}
		}
	}
}

func TestShedNoAllocs(t *testing.T) {
	ms := members(100)
	for i := 0; i < len(ms); i += 10 {
		ms[i].Shed = 0.3
	}
	ms[5].Shed, ms[7].Draining = 1, true // a member that sheds every key
	r := mustNew(t, Config{}, ms...)
	s := r.Snapshot()
	buf := make([]string, 0, 16)
	cands := []string{"node-0", "node-5", "node-10", "node-7", "node-99", "node-50"}
	keys := fixedKeys(512)
	long := strings.Repeat("k", 200)
	i := 0
	for name, f := range map[string]func(){
		"Get":         func() { _, _ = r.Get(keys[i%len(keys)]); i++ },
		"AppendN":     func() { buf, _ = s.AppendN(buf[:0], keys[i%len(keys)], 3); i++ },
		"AppendN16":   func() { buf, _ = s.AppendN(buf[:0], keys[i%len(keys)], 16); i++ },
		"AppendFrom":  func() { buf, _ = s.AppendFrom(buf[:0], keys[i%len(keys)], cands, 2); i++ },
		"Sheds":       func() { _ = Sheds(keys[i%len(keys)], "node-5", 0.5); i++ },
		"Sheds(long)": func() { _ = Sheds(long, "node-5", 0.5) },
	} {
		if a := testing.AllocsPerRun(2000, f); a != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, a)
		}
	}
}

func TestShedWalkShowsShed(t *testing.T) {
	ms := members(5)
	ms[1].Shed = 1
	r := mustNew(t, Config{}, ms...)
	for _, k := range fixedKeys(200) {
		owner, _ := r.Get(k)
		var passed []string
		r.Snapshot().Walk(k, func(m Member) bool {
			if m.ID == owner {
				return false
			}
			if Sheds(k, m.ID, m.Shed) {
				passed = append(passed, m.ID)
			}
			return true
		})
		if len(passed) > 1 || (len(passed) == 1 && passed[0] != "node-1") {
			t.Fatalf("Walk(%q) before owner %s passed shedding members %v", k, owner, passed)
		}
		if owner == "node-1" {
			t.Fatalf("key %q owned by node-1, which sheds every key", k)
		}
	}
}
