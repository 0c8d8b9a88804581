package bus

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/ring"
)

// fakeEntry is a KV entry without a bucket.
type fakeEntry struct {
	key   string
	value []byte
	rev   uint64
	op    jetstream.KeyValueOp
}

func (e fakeEntry) Key() string                     { return e.key }
func (e fakeEntry) Value() []byte                   { return e.value }
func (e fakeEntry) Revision() uint64                { return e.rev }
func (e fakeEntry) Operation() jetstream.KeyValueOp { return e.op }

func put(key, value string, rev uint64) fakeEntry {
	return fakeEntry{key: key, value: []byte(value), rev: rev, op: jetstream.KeyValuePut}
}

func mustPublish(t testing.TB, v *PoolView) *PoolSnapshot {
	t.Helper()
	s, err := v.Publish()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPoolView(t *testing.T) {
	v, err := NewPoolView("default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewPoolView("a.b"); !errors.Is(err, ErrInvalidPool) {
		t.Fatalf("NewPoolView(a.b) = %v, want ErrInvalidPool", err)
	}
	// Members before the pool key (a pool key rewritten later in the stream
	// comes after them in a watch's initial values): not v3 yet.
	for _, e := range []fakeEntry{
		put("members.default.a", `{"weight":1}`, 2),
		put("members.default.b", `{"weight":2}`, 3),
		put("members.other.z", `{"weight":1}`, 4), // another pool: ignored
		put("ring", `{}`, 5),                      // not a v3 key: ignored
	} {
		if err := v.Apply(e); err != nil {
			t.Fatal(err)
		}
	}
	s := mustPublish(t, v)
	if s.V3 || s.Revision != 3 || s.Ring != nil || v.V3() {
		t.Fatalf("before pools.default: %+v", s)
	}
	if err := v.Apply(put("pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`, 6)); err != nil {
		t.Fatal(err)
	}
	s = mustPublish(t, v)
	if !s.V3 || s.Revision != 6 || s.Ring.Len() != 2 || s.VNodes != 150 {
		t.Fatalf("after pools.default: %+v", s)
	}
	if again := mustPublish(t, v); again != s {
		t.Fatal("Publish with nothing applied made a new snapshot")
	}
	want := RingDocument{Format: 1, Hash: DocumentHash, VNodes: 150, Nodes: []RingNode{{ID: "a", Weight: 1}, {ID: "b", Weight: 2}}}
	if d := s.Document(); !d.Equal(want) {
		t.Fatalf("document %+v, want %+v", d, want)
	}

	// A refused member value counts as no value, and as a revision.
	err = v.Apply(put("members.default.a", `{"weight":0}`, 7))
	if !errors.Is(err, ErrInvalidEntry) {
		t.Fatalf("Apply of weight 0 = %v", err)
	}
	s = mustPublish(t, v)
	if s.Revision != 7 || s.Ring.Len() != 1 || v.Err() == nil {
		t.Fatalf("after a refused entry: rev %d, %d members, err %v", s.Revision, s.Ring.Len(), v.Err())
	}
	// A delete of a key that holds nothing changes only the revision.
	if err := v.Apply(fakeEntry{key: "members.default.a", rev: 8, op: jetstream.KeyValueDelete}); err != nil {
		t.Fatal(err)
	}
	s2 := mustPublish(t, v)
	if s2 == s || s2.Revision != 8 || s2.Ring != s.Ring || v.Err() != nil {
		t.Fatalf("after a delete of a refused member: %+v (err %v)", s2, v.Err())
	}
	// A bad member key is refused but counted.
	if err := v.Apply(put("members.default.a=b", `{"weight":1}`, 9)); !errors.Is(err, ErrInvalidEntry) {
		t.Fatalf("Apply of a bad node id = %v", err)
	}
	if v.Revision() != 9 {
		t.Fatalf("revision %d after a bad key, want 9", v.Revision())
	}
	// A pool value of another format stops publication; the caller keeps
	// its last snapshot. A good value again resumes.
	if err := v.Apply(put("pools.default", `{"format":4,"hash":"xxhash64","vnodes":150}`, 10)); !errors.Is(err, ErrInvalidEntry) {
		t.Fatalf("Apply of format 4 = %v", err)
	}
	if _, err := v.Publish(); !errors.Is(err, ErrInvalidEntry) || !v.V3() {
		t.Fatalf("Publish after format 4 = %v", err)
	}
	if err := v.Apply(put("pools.default", `{"format":3,"hash":"xxhash64","vnodes":10}`, 11)); err != nil {
		t.Fatal(err)
	}
	s = mustPublish(t, v)
	if s.VNodes != 10 || s.Ring.Points() != 20 || s.Revision != 11 {
		t.Fatalf("after vnodes 10: %+v, %d points", s, s.Ring.Points())
	}
	// Deleting the pool key leaves v3; members are kept for when it returns.
	if err := v.Apply(fakeEntry{key: "pools.default", rev: 12, op: jetstream.KeyValuePurge}); err != nil {
		t.Fatal(err)
	}
	if s = mustPublish(t, v); s.V3 || v.V3() || v.Len() != 1 {
		t.Fatalf("after purging pools.default: %+v", s)
	}
}

// v3Step is one KV operation of the golden sequence.
type v3Step struct {
	op    string // create, update, delete, purge, put
	key   string
	value string
}

// v3GoldenSteps is the golden sequence of subjects.md ("Golden sequence"),
// written to a fresh bucket: step i gets revision i+1.
var v3GoldenSteps = []v3Step{
	{"create", "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`},
	{"create", "members.default.a", `{"weight":1}`},
	{"create", "members.default.b", `{"weight":2}`},
	{"update", "members.default.a", `{"weight":1,"status":"draining"}`},
	{"create", "members.default.c", `{"weight":1,"shed":0.25}`},
	{"delete", "members.default.b", ""},
	{"create", "members.default.d", `{"weight":0.5}`},
	{"purge", "members.default.a", ""},
	{"update", "members.default.c", `{"weight":1}`},
	{"delete", "members.default.x", ""},
	{"put", "pools.default", `{"format":3,"hash":"xxhash64","vnodes":150}`},
	{"update", "members.default.d", `{"weight":3}`},
}

// v3GoldenKeys are the keys whose owners the golden sequence lists.
var v3GoldenKeys = []string{"user-1", "user-42", "session:7f3a", "cart-9", "key-0", "key-10"}

func (s v3Step) entry(rev uint64) fakeEntry {
	e := fakeEntry{key: s.key, value: []byte(s.value), rev: rev, op: jetstream.KeyValuePut}
	switch s.op {
	case "delete":
		e.op, e.value = jetstream.KeyValueDelete, nil
	case "purge":
		e.op, e.value = jetstream.KeyValuePurge, nil
	}
	return e
}

// v3GoldenRows returns the two tables of the golden sequence as subjects.md
// shows them, computed with a PoolView and checked against a ring built
// from scratch from the document at every step.
func v3GoldenRows(t *testing.T) (docRows, ownerRows []string) {
	t.Helper()
	v, err := NewPoolView("default")
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range v3GoldenSteps {
		rev := uint64(i + 1)
		if err := v.Apply(st.entry(rev)); err != nil {
			t.Fatal(err)
		}
		s := mustPublish(t, v)
		d := s.Document()
		if err := d.Validate(); err != nil {
			t.Fatalf("step %d: %v", rev, err)
		}
		nodes, _ := d.Encode()
		nodesJSON := strings.TrimSuffix(string(nodes)[strings.Index(string(nodes), `"nodes":`)+len(`"nodes":`):], "}")
		value := "—"
		if st.value != "" {
			value = "`" + st.value + "`"
		}
		docRows = append(docRows, fmt.Sprintf("| %d | %s | `%s` | %s | %d | `%s` |", s.Revision, st.op, st.key, value, d.Format, nodesJSON))
		fresh, err := ring.New(ring.Config{VirtualNodes: d.VNodes}, d.Members()...)
		if err != nil {
			t.Fatal(err)
		}
		cells := []string{strconv.FormatUint(s.Revision, 10)}
		for _, k := range v3GoldenKeys {
			got, err := s.Ring.Get(k)
			want, werr := fresh.Get(k)
			if got != want || (err == nil) != (werr == nil) {
				t.Fatalf("step %d: Get(%q) = %q, %v from the view, %q, %v from scratch", rev, k, got, err, want, werr)
			}
			if err != nil {
				got = "(empty)"
			}
			cells = append(cells, got)
		}
		ownerRows = append(ownerRows, "| "+strings.Join(cells, " | ")+" |")
	}
	return docRows, ownerRows
}

// TestSubjectsMDV3Sequence checks subjects.md's golden sequence of the
// one-key-per-member layout against the code, row for row. Run with
// NATSROUTE_PRINT_V3_GOLDEN=1 -v to print the tables.
func TestSubjectsMDV3Sequence(t *testing.T) {
	docRows, ownerRows := v3GoldenRows(t)
	if os.Getenv("NATSROUTE_PRINT_V3_GOLDEN") != "" {
		t.Logf("\n%s\n\n%s", strings.Join(docRows, "\n"), strings.Join(ownerRows, "\n"))
	}
	data, err := os.ReadFile(filepath.Join("..", "subjects.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(data)
	start := strings.Index(md, "### Golden sequence (v3)")
	if start < 0 {
		t.Fatal(`subjects.md has no "### Golden sequence (v3)" section`)
	}
	md = md[start:]
	if end := strings.Index(md[4:], "\n## "); end >= 0 {
		md = md[:end+4]
	}
	row := regexp.MustCompile(`^\| [0-9]+ \|`)
	var got []string
	for _, line := range strings.Split(md, "\n") {
		if row.MatchString(line) {
			got = append(got, line)
		}
	}
	want := append(docRows, ownerRows...)
	if len(got) != len(want) {
		t.Fatalf("subjects.md's golden sequence has %d rows, the code %d:\n%s", len(got), len(want), strings.Join(want, "\n"))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("subjects.md row:\n  %s\nthe code says:\n  %s", got[i], want[i])
		}
	}
	header := "| revision | " + strings.Join(v3GoldenKeys, " | ") + " |"
	if !strings.Contains(md, header) {
		t.Errorf("subjects.md's owner table header is not %q", header)
	}
}

// TestPoolViewMatchesRebuild applies random entries in random batches and
// checks every published snapshot against a ring built from scratch from
// the same entries: same members, same owners.
func TestPoolViewMatchesRebuild(t *testing.T) {
	keys := make([]string, 300)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	for seed := uint64(1); seed <= 5; seed++ {
		rnd := rand.New(rand.NewPCG(seed, 7))
		v, _ := NewPoolView("p")
		vnodes := 0 // of the pool value; 0: none
		want := map[string]ring.Member{}
		rev := uint64(0)
		for step := 0; step < 400; step++ {
			for range 1 + rnd.IntN(8) {
				rev++
				id := "n" + strconv.Itoa(rnd.IntN(40))
				var e fakeEntry
				switch x := rnd.IntN(100); {
				case x < 3:
					vnodes = []int{150, 10, 40}[rnd.IntN(3)]
					e = put("pools.p", fmt.Sprintf(`{"format":3,"hash":"xxhash64","vnodes":%d}`, vnodes), rev)
				case x < 4:
					vnodes = 0
					e = fakeEntry{key: "pools.p", rev: rev, op: jetstream.KeyValueDelete}
				case x < 65:
					m := ring.Member{ID: id, Weight: []float64{0.5, 1, 2}[rnd.IntN(3)], Draining: rnd.IntN(4) == 0}
					if rnd.IntN(4) == 0 {
						m.Shed = []float64{0.25, 1, 0.0001}[rnd.IntN(3)]
					}
					b, _ := MemberEntry{Weight: m.Weight, Shed: m.Shed, Status: map[bool]string{true: StatusDraining}[m.Draining]}.Encode(Encoding(rnd.IntN(2)))
					e = fakeEntry{key: "members.p." + id, value: b, rev: rev, op: jetstream.KeyValuePut}
					want[id] = m
				default:
					e = fakeEntry{key: "members.p." + id, rev: rev, op: []jetstream.KeyValueOp{jetstream.KeyValueDelete, jetstream.KeyValuePurge}[rnd.IntN(2)]}
					delete(want, id)
				}
				if err := v.Apply(e); err != nil {
					t.Fatal(err)
				}
			}
			s := mustPublish(t, v)
			if s.Revision != rev || s.V3 != (vnodes != 0) {
				t.Fatalf("seed %d step %d: revision %d v3 %v, want %d %v", seed, step, s.Revision, s.V3, rev, vnodes != 0)
			}
			if vnodes == 0 {
				continue
			}
			ms := slices.Collect(maps.Values(want))
			slices.SortFunc(ms, func(a, b ring.Member) int { return cmp.Compare(a.ID, b.ID) })
			fresh, err := ring.New(ring.Config{VirtualNodes: vnodes}, ms...)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Ring.Members(); !slices.Equal(got, ms) || s.Ring.Points() != fresh.Snapshot().Points() {
				t.Fatalf("seed %d step %d: members %v, want %v", seed, step, got, ms)
			}
			if got := s.Document().Members(); !slices.Equal(got, ms) {
				t.Fatalf("seed %d step %d: document members %v, want %v", seed, step, got, ms)
			}
			for _, k := range keys {
				got, gerr := s.Ring.GetN(k, 2)
				exp, werr := fresh.GetN(k, 2)
				if !slices.Equal(got, exp) || (gerr == nil) != (werr == nil) {
					t.Fatalf("seed %d step %d: GetN(%q, 2) = %v, %v; from scratch %v, %v", seed, step, k, got, gerr, exp, werr)
				}
			}
		}
	}
}
