package ring

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func mustNew(t testing.TB, cfg Config, ms ...Member) *Ring {
	t.Helper()
	r, err := New(cfg, ms...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func members(n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{ID: fmt.Sprintf("node-%d", i), Weight: 1}
	}
	return ms
}

func fixedKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	return keys
}

func owners(t testing.TB, r *Ring, keys []string) []string {
	t.Helper()
	out := make([]string, len(keys))
	for i, k := range keys {
		o, err := r.Get(k)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = o
	}
	return out
}

// TestXXH64Seed0 pins the hash: XXH64 of the empty input with seed 0 is the
// published constant, so other languages can check their library first.
func TestXXH64Seed0(t *testing.T) {
	if got := xxhash.Sum64String(""); got != 0xef46db3751d8e999 {
		t.Fatalf("xxh64(\"\") = %#x, want 0xef46db3751d8e999", got)
	}
}

func TestEmptyAndErrors(t *testing.T) {
	r := mustNew(t, Config{})
	if _, err := r.Get("k"); !errors.Is(err, ErrEmpty) {
		t.Errorf("Get on empty ring: %v, want ErrEmpty", err)
	}
	if _, err := r.GetN("k", 2); !errors.Is(err, ErrEmpty) {
		t.Errorf("GetN on empty ring: %v, want ErrEmpty", err)
	}
	r = mustNew(t, Config{}, Member{ID: "a"})
	if _, err := r.GetN("k", 0); !errors.Is(err, ErrInvalidCount) {
		t.Errorf("GetN(k, 0): %v, want ErrInvalidCount", err)
	}
	if _, err := r.GetFrom("k", nil, 1); !errors.Is(err, ErrEmpty) {
		t.Errorf("GetFrom with no candidates: %v, want ErrEmpty", err)
	}
	bad := []Member{
		{ID: ""},
		{ID: string([]byte{0xff, 0xfe})},
		{ID: string(make([]byte, MaxIDLength+1))},
		{ID: "x", Weight: -1},
		{ID: "x", Weight: math.NaN()},
		{ID: "x", Weight: math.Inf(1)},
		{ID: "x", Weight: MaxWeight * 2},
	}
	for _, m := range bad {
		if _, err := New(Config{}, m); !errors.Is(err, ErrInvalidMember) {
			t.Errorf("New(%+v): %v, want ErrInvalidMember", m, err)
		}
		if err := r.Add(m); !errors.Is(err, ErrInvalidMember) {
			t.Errorf("Add(%+v): %v, want ErrInvalidMember", m, err)
		}
		if _, err := r.GetFrom("k", []string{"a", m.ID}, 1); m.ID != "x" && !errors.Is(err, ErrInvalidMember) {
			t.Errorf("GetFrom with candidate %q: %v, want ErrInvalidMember", m.ID, err)
		}
	}
	if _, err := New(Config{}, Member{ID: "a"}, Member{ID: "a"}); !errors.Is(err, ErrInvalidMember) {
		t.Errorf("duplicate ids: %v, want ErrInvalidMember", err)
	}
	for _, v := range []int{-1, MaxVirtualNodes + 1} {
		if _, err := New(Config{VirtualNodes: v}); err == nil {
			t.Errorf("VirtualNodes %d accepted", v)
		}
	}
	if r.Len() != 1 {
		t.Errorf("failed writes changed the ring: %d members", r.Len())
	}
}

// TestInsertionOrder: however the membership is reached, the points are the same.
func TestInsertionOrder(t *testing.T) {
	ms := members(50)
	ms[3].Weight, ms[7].Weight, ms[9].Draining = 2.5, 0.2, true
	want := mustNew(t, Config{}, ms...).Snapshot()
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 20 {
		perm := slices.Clone(ms)
		rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		r := mustNew(t, Config{})
		for i := 0; i < len(perm); {
			k := min(len(perm)-i, 1+rng.IntN(5))
			if err := r.Add(perm[i : i+k]...); err != nil {
				t.Fatal(err)
			}
			i += k
		}
		// Add an extra member and remove it again: no trace may remain.
		if err := r.Add(Member{ID: "zz-temp", Weight: 3}); err != nil {
			t.Fatal(err)
		}
		r.Remove("zz-temp")
		got := r.Snapshot()
		if !slices.Equal(layoutOf(got), layoutOf(want)) || !slices.Equal(got.Members(), want.Members()) {
			t.Fatalf("trial %d: ring differs from the one built in one go", trial)
		}
	}
}

// TestCollision forces every member's point 0 onto the same hash: the ring
// orders them by id, and removing one member keeps the others' points.
func TestCollision(t *testing.T) {
	h := func(s string) uint64 {
		if len(s) > 2 && s[len(s)-2:] == ":0" {
			return 1 << 63
		}
		return xxhash.Sum64String(s)
	}
	cfg := Config{VirtualNodes: 4, hash: h}
	r := mustNew(t, cfg, Member{ID: "c"}, Member{ID: "a"}, Member{ID: "b"})
	at := colliding(r.Snapshot(), 1<<63)
	if !slices.Equal(at, []string{"a", "b", "c"}) {
		t.Fatalf("colliding points ordered %v, want [a b c]", at)
	}
	if got, _ := r.Get("x"); got == "" {
		t.Fatal("empty owner")
	}
	r.Remove("a")
	s := r.Snapshot()
	at = colliding(s, 1<<63)
	if !slices.Equal(at, []string{"b", "c"}) {
		t.Fatalf("after removing a, colliding points are %v, want [b c]", at)
	}
	if s.Points() != 8 {
		t.Fatalf("after removing a: %d points, want 8", s.Points())
	}
	// A key hashing exactly onto the collision belongs to the smallest id.
	owner := func(r *Ring) string {
		s := r.Snapshot()
		_, b, i := s.at(1 << 63)
		return s.entry(uint32(b.points[i] & s.mask)).id
	}
	if got := owner(r); got != "b" {
		t.Fatalf("owner at the collision = %q, want b", got)
	}
}

// colliding returns, in ring order, the owners of the points at hash h.
func colliding(s *Snapshot, h uint64) []string {
	var at []string
	for ph, o := range s.all {
		if ph == h {
			at = append(at, s.entry(o).id)
		}
	}
	return at
}

func TestMinimalMovement(t *testing.T) {
	keys := fixedKeys(100_000)
	for _, n := range []int{10, 100} {
		t.Run(fmt.Sprintf("add/n=%d", n), func(t *testing.T) {
			r := mustNew(t, Config{}, members(n)...)
			before := owners(t, r, keys)
			if err := r.Add(Member{ID: "newcomer"}); err != nil {
				t.Fatal(err)
			}
			after := owners(t, r, keys)
			moved := 0
			for i := range keys {
				if before[i] != after[i] {
					moved++
					if after[i] != "newcomer" {
						t.Fatalf("key %q moved from %s to %s, not to the new member", keys[i], before[i], after[i])
					}
				}
			}
			want := float64(len(keys)) / float64(n+1)
			if f := float64(moved) / want; f < 0.75 || f > 1.25 {
				t.Fatalf("moved %d keys, want %.0f ±25%%", moved, want)
			}
			t.Logf("n=%d: moved %d of %d keys (ideal %.0f)", n, moved, len(keys), want)
		})
		t.Run(fmt.Sprintf("remove/n=%d", n), func(t *testing.T) {
			r := mustNew(t, Config{}, members(n)...)
			before := owners(t, r, keys)
			r.Remove("node-3")
			after := owners(t, r, keys)
			for i := range keys {
				if before[i] != after[i] && before[i] != "node-3" {
					t.Fatalf("key %q moved from %s to %s though node-3 was removed", keys[i], before[i], after[i])
				}
				if after[i] == "node-3" {
					t.Fatalf("key %q still on removed node", keys[i])
				}
			}
		})
	}
}

func TestWeights(t *testing.T) {
	var ms []Member
	for i := range 10 {
		ms = append(ms, Member{ID: fmt.Sprintf("one-%d", i), Weight: 1}, Member{ID: fmt.Sprintf("two-%d", i), Weight: 2})
	}
	r := mustNew(t, Config{}, ms...)
	count := map[byte]int{}
	for _, o := range owners(t, r, fixedKeys(200_000)) {
		count[o[0]]++
	}
	ratio := float64(count['t']) / float64(count['o'])
	// Tolerance ±10%: ten members per group at 150 points each keep the
	// group's share within a few percent of its point share.
	if ratio < 1.8 || ratio > 2.2 {
		t.Fatalf("weight-2 members own %.3f× the keys of weight-1 members, want 2 ±10%%", ratio)
	}
	t.Logf("weight 2 / weight 1 key ratio: %.3f", ratio)

	shares := r.Snapshot().Shares()
	var sum, one, two float64
	for id, f := range shares {
		sum += f
		if id[0] == 't' {
			two += f
		} else {
			one += f
		}
	}
	if math.Abs(sum-1) > 1e-9 || two/one < 1.8 || two/one > 2.2 {
		t.Fatalf("shares sum to %v; weight-2 / weight-1 share %.3f, want 2 ±10%%", sum, two/one)
	}
	if got := mustNew(t, Config{VirtualNodes: 1}, Member{ID: "solo"}).Snapshot().Shares(); got["solo"] != 1 {
		t.Fatalf("a lone member's share: %v", got)
	}

	tiny := mustNew(t, Config{}, Member{ID: "tiny", Weight: 1e-9}, Member{ID: "big"})
	if m, _ := tiny.Snapshot().Member("tiny"); m.Weight != 1e-9 || tiny.Snapshot().Points() != 151 {
		t.Fatalf("tiny weight: %d points, want 150+1", tiny.Snapshot().Points())
	}
	if err := tiny.Add(Member{ID: "tiny", Weight: 2}); err != nil {
		t.Fatal(err)
	}
	if p := tiny.Snapshot().Points(); p != 450 {
		t.Fatalf("after re-weighting tiny to 2: %d points, want 450", p)
	}
}

func TestDraining(t *testing.T) {
	keys := fixedKeys(20_000)
	ms := members(10)
	r := mustNew(t, Config{}, ms...)
	before := owners(t, r, keys)
	ms[4].Draining = true
	if err := r.Add(ms[4]); err != nil {
		t.Fatal(err)
	}
	after := owners(t, r, keys)
	ref := newRef(150, ms...)
	for i, k := range keys {
		switch {
		case after[i] == "node-4":
			t.Fatalf("key %q routed to draining node", k)
		case before[i] != "node-4" && after[i] != before[i]:
			t.Fatalf("key %q moved from %s to %s though it was not on the draining node", k, before[i], after[i])
		case after[i] != ref.getN(k, 1)[0]:
			t.Fatalf("key %q: ring %s, reference %s", k, after[i], ref.getN(k, 1)[0])
		}
		if got, _ := r.GetN(k, 20); len(got) != 9 || slices.Contains(got, "node-4") {
			t.Fatalf("GetN(%q, 20) = %v, want the 9 members that are not draining", k, got)
		}
	}
	// Walk shows the draining member a lookup passed over.
	for i, k := range keys[:2000] {
		var visited []string
		r.Snapshot().Walk(k, func(m Member) bool {
			visited = append(visited, m.ID)
			return !(m.ID == after[i])
		})
		want := []string{after[i]}
		if before[i] == "node-4" {
			want = []string{"node-4", after[i]}
		}
		if !slices.Equal(visited, want) {
			t.Fatalf("Walk(%q) visited %v, want %v", k, visited, want)
		}
	}
	// All draining: used as if none were.
	for i := range ms {
		ms[i].Draining = true
	}
	if err := r.Set(ms); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, r, keys); !slices.Equal(got, before) {
		t.Fatal("with every member draining, the ring must answer as if none were")
	}
}

// TestGetFromEqualsFreshRing: a restricted lookup answers as a ring built of
// exactly the candidates, on random memberships.
func TestGetFromEqualsFreshRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := range 60 {
		n := 1 + rng.IntN(40)
		ms := members(n)
		for i := range ms {
			ms[i].Weight = []float64{1, 1, 0.5, 2, 3.3}[rng.IntN(5)]
			ms[i].Draining = rng.IntN(6) == 0
		}
		r := mustNew(t, Config{VirtualNodes: 20 + rng.IntN(200)}, ms...)
		var cands []string
		var sub []Member
		for _, m := range ms {
			if rng.IntN(3) == 0 {
				cands, sub = append(cands, m.ID), append(sub, m)
			}
		}
		if rng.IntN(4) == 0 { // a non-member, weight 1
			cands, sub = append(cands, "stranger"), append(sub, Member{ID: "stranger", Weight: 1})
		}
		if len(cands) == 0 {
			continue
		}
		if len(cands) > 1 { // a duplicate changes nothing
			cands = append(cands, cands[0])
		}
		fresh := mustNew(t, Config{VirtualNodes: r.Snapshot().VirtualNodes()}, sub...)
		for _, k := range fixedKeys(500) {
			cnt := 1 + rng.IntN(4)
			got, err := r.GetFrom(k, cands, cnt)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := fresh.GetN(k, cnt)
			if !slices.Equal(got, want) {
				t.Fatalf("trial %d key %q: GetFrom(%v, %d) = %v, fresh ring says %v", trial, k, cands, cnt, got, want)
			}
		}
	}
}

func TestGetNMatchesReference(t *testing.T) {
	ms := members(40)
	ms[5].Draining, ms[6].Weight = true, 4
	r := mustNew(t, Config{}, ms...)
	ref := newRef(150, ms...)
	for _, k := range fixedKeys(2000) {
		for _, n := range []int{1, 3, 17, 39, 100} {
			got, err := r.GetN(k, n)
			if err != nil {
				t.Fatal(err)
			}
			if want := ref.getN(k, n); !slices.Equal(got, want) {
				t.Fatalf("GetN(%q, %d) = %v, reference %v", k, n, got, want)
			}
		}
	}
}

func TestNoAllocs(t *testing.T) {
	r := mustNew(t, Config{}, members(100)...)
	s := r.Snapshot()
	buf := make([]string, 0, 8)
	cands := []string{"node-1", "node-50", "node-99", "node-7"}
	for name, f := range map[string]func(){
		"Get":        func() { _, _ = r.Get("user-42") },
		"AppendN":    func() { buf, _ = s.AppendN(buf[:0], "user-42", 3) },
		"AppendFrom": func() { buf, _ = s.AppendFrom(buf[:0], "user-42", cands, 2) },
	} {
		if a := testing.AllocsPerRun(200, f); a != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, a)
		}
	}
}

func TestConcurrentReadWrite(t *testing.T) {
	r := mustNew(t, Config{}, members(20)...)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			buf := make([]string, 0, 4)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("g%d-%d", g, i)
				if _, err := r.Get(k); err != nil {
					t.Error(err)
					return
				}
				s := r.Snapshot()
				var err error
				if buf, err = s.AppendN(buf[:0], k, 3); err != nil || len(buf) != min(3, s.Len()) {
					t.Errorf("AppendN: %v %v", buf, err)
					return
				}
			}
		})
	}
	for i := range 300 {
		id := fmt.Sprintf("w-%d", i%7)
		switch i % 3 {
		case 0:
			_ = r.Add(Member{ID: id, Weight: float64(1 + i%3)})
		case 1:
			r.Remove(id)
		case 2:
			_ = r.Set(append(members(20), Member{ID: id, Draining: i%2 == 0}))
		}
	}
	close(stop)
	wg.Wait()
}

func FuzzRing(f *testing.F) {
	f.Add("a,b,c", "user-42", uint8(2), uint8(0), 1.0, uint8(0), 0.0)
	f.Add("x", "", uint8(1), uint8(1), 0.5, uint8(0), 0.0)
	f.Add("n1,n2,n3,n4,n1", "ключ", uint8(9), uint8(3), 3.0, uint8(0), 0.0)
	f.Add("a,b,c", "user-42", uint8(2), uint8(0), 1.0, uint8(1), 0.6)
	f.Add("a,b,c,d,e", "k", uint8(3), uint8(4), 2.0, uint8(0xff), 1.0)
	f.Add("n1,n2,n3,n4", "key-7", uint8(1), uint8(2), 1.0, uint8(6), 0.25)
	f.Add("a,b", "", uint8(0), uint8(0), 1.0, uint8(1), 1.5)
	f.Fuzz(func(t *testing.T, ids, key string, n, drainMask uint8, w float64, shedMask uint8, shed float64) {
		var ms []Member
		seen := map[string]bool{}
		for i, id := range splitComma(ids) {
			if seen[id] {
				continue
			}
			seen[id] = true
			m := Member{ID: id, Weight: 1, Draining: drainMask&(1<<(i%8)) != 0}
			if i == 0 {
				m.Weight = w
			}
			if shedMask&(1<<(i%8)) != 0 {
				m.Shed = shed
			}
			ms = append(ms, m)
		}
		r, err := New(Config{VirtualNodes: 16}, ms...)
		if err != nil {
			if !errors.Is(err, ErrInvalidMember) {
				t.Fatalf("New: unexpected error kind %v", err)
			}
			return
		}
		got, err := r.GetN(key, int(n)+1)
		if len(ms) == 0 {
			if !errors.Is(err, ErrEmpty) {
				t.Fatalf("empty ring: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := newRef(16, r.Members()...).getN(key, int(n)+1); !slices.Equal(got, want) {
			t.Fatalf("GetN = %v, reference %v", got, want)
		}
		one, _ := r.Get(key)
		if one != got[0] {
			t.Fatalf("Get = %q, GetN[0] = %q", one, got[0])
		}
		if s := r.Snapshot(); s.nShedLive > 0 && slices.ContainsFunc(s.Members(), func(m Member) bool { return !m.Draining && !Sheds(key, m.ID, m.Shed) }) {
			if m, _ := s.Member(one); Sheds(key, m.ID, m.Shed) {
				t.Fatalf("Get = %q, which sheds the key, though a member that does not is usable", one)
			}
		}
		from, err := r.GetFrom(key, splitComma(ids), int(n)+1)
		if err != nil || !slices.Equal(from, got) {
			t.Fatalf("GetFrom(all members) = %v, %v; GetN = %v", from, err, got)
		}
	})
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}
