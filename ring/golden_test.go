package ring

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden-*.tsv from the reference ring")

// goldenSets are the memberships whose vectors live in testdata. Their
// vectors are written by the spec-literal reference ring (refRing) and
// checked against both it and Ring, so a change in the hash, the point
// layout or the walk fails loudly.
var goldenSets = []struct {
	name    string
	vnodes  int
	members []Member
}{
	{"three", 150, []Member{{ID: "a"}, {ID: "b"}, {ID: "c"}}},
	{"weighted", 150, []Member{{ID: "node-1", Weight: 1}, {ID: "node-2", Weight: 2}, {ID: "node-3", Weight: 0.5}, {ID: "node-4", Weight: 3}, {ID: "node-5", Weight: 1.25}}},
	{"ten", 150, tenMembers(nil)},
	{"draining", 150, tenMembers(map[string]bool{"node-03": true, "node-07": true})},
	{"vnodes-10", 10, []Member{{ID: "alpha"}, {ID: "beta", Weight: 2}, {ID: "gamma"}, {ID: "delta", Weight: 0.01}}},

	// Format 2 (DESIGN.md, "Load-aware ConsistentHash"): members that shed,
	// one of them shedding every key, one draining and shedding.
	{"shed-draining", 150, shedMembers(tenMembers(map[string]bool{"node-03": true, "node-07": true}), map[string]float64{"node-01": 0.3, "node-04": 0.5, "node-07": 0.2, "node-08": 1})},
	{"shed-weighted", 150, shedMembers([]Member{{ID: "node-1", Weight: 1}, {ID: "node-2", Weight: 2}, {ID: "node-3", Weight: 0.5}, {ID: "node-4", Weight: 3}, {ID: "node-5", Weight: 1.25}}, map[string]float64{"node-2": 0.125, "node-4": 0.6, "node-5": 0.0001})},
}

func shedMembers(ms []Member, shed map[string]float64) []Member {
	for i := range ms {
		ms[i].Shed = shed[ms[i].ID]
	}
	return ms
}

func tenMembers(draining map[string]bool) []Member {
	var ms []Member
	for i := range 10 {
		id := fmt.Sprintf("node-%02d", i)
		ms = append(ms, Member{ID: id, Weight: 1, Draining: draining[id]})
	}
	return ms
}

func goldenKeys() []string {
	keys := []string{"user-42", "", "session:7f3a", "ключ", "🙂"}
	for i := range 1000 {
		keys = append(keys, "key-"+strconv.Itoa(i))
	}
	return keys
}

func TestGolden(t *testing.T) {
	for _, set := range goldenSets {
		t.Run(set.name, func(t *testing.T) {
			path := filepath.Join("testdata", "golden-"+set.name+".tsv")
			ref := newRef(set.vnodes, set.members...)
			if *update {
				writeGolden(t, path, set.vnodes, set.members, ref)
			}
			r, err := New(Config{VirtualNodes: set.vnodes}, set.members...)
			if err != nil {
				t.Fatal(err)
			}
			rows := readGolden(t, path)
			if len(rows) < 1000 {
				t.Fatalf("%s has %d vectors, want at least 1000", path, len(rows))
			}
			for _, row := range rows {
				key, owner, top3 := row[0], row[1], row[2]
				if got, _ := r.Get(key); got != owner {
					t.Errorf("Get(%q) = %q, golden %q", key, got, owner)
				}
				if got := ref.getN(key, 1)[0]; got != owner {
					t.Errorf("reference Get(%q) = %q, golden %q", key, got, owner)
				}
				got, err := r.GetN(key, 3)
				if err != nil || strings.Join(got, ",") != top3 {
					t.Errorf("GetN(%q, 3) = %v, %v; golden %s", key, got, err, top3)
				}
			}
		})
	}
}

func writeGolden(t *testing.T, path string, vnodes int, members []Member, ref *refRing) {
	t.Helper()
	var b strings.Builder
	section := "The ring"
	if slices.ContainsFunc(members, func(m Member) bool { return m.Shed != 0 }) {
		section = "Ring document format 2: load-aware lookup"
	}
	fmt.Fprintf(&b, "# natsroute ring golden vectors (see subjects.md, \"%s\")\n# vnodes: %d\n", section, vnodes)
	for _, m := range members {
		fmt.Fprintf(&b, "# member: %s weight=%v draining=%v", m.ID, m.Weight, m.Draining)
		if m.Shed != 0 {
			fmt.Fprintf(&b, " shed=%v", m.Shed)
		}
		b.WriteString("\n")
	}
	b.WriteString("# key\towner\tGetN(key,3)\n")
	for _, k := range goldenKeys() {
		fmt.Fprintf(&b, "%s\t%s\t%s\n", k, ref.getN(k, 1)[0], strings.Join(ref.getN(k, 3), ","))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readGolden(t *testing.T, path string) [][3]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run go test ./ring -run TestGolden -update to create it)", err)
	}
	defer f.Close()
	var rows [][3]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, "\t")
		if len(parts) != 3 {
			t.Fatalf("%s: bad line %q", path, line)
		}
		rows = append(rows, [3]string{parts[0], parts[1], parts[2]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// TestSubjectsMDVectors checks the golden vector tables in subjects.md
// against the ring, so the user-facing contract cannot drift from the code.
func TestSubjectsMDVectors(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "subjects.md"))
	if err != nil {
		t.Fatal(err)
	}
	rings := map[string]*Ring{}
	for _, set := range goldenSets {
		rings[set.name] = mustNew(t, Config{VirtualNodes: set.vnodes}, set.members...)
	}
	row := regexp.MustCompile("^\\| `([^`]*)`(?: \\(empty\\))? \\| (\\S+) \\| (.+) \\|$")
	name := regexp.MustCompile("^Membership `([^`]+)`")
	var current *Ring
	checked := 0
	perSet := map[string]int{}
	set := ""
	for _, line := range strings.Split(string(data), "\n") {
		if m := name.FindStringSubmatch(line); m != nil {
			set, current = m[1], rings[m[1]]
			if current == nil {
				t.Fatalf("subjects.md names membership %q, which has no golden set", m[1])
			}
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil || current == nil {
			continue
		}
		key, owner, top3 := m[1], m[2], strings.ReplaceAll(m[3], " ", "")
		if got, _ := current.Get(key); got != owner {
			t.Errorf("subjects.md: Get(%q) = %s, the ring says %s", key, owner, got)
		}
		if got, _ := current.GetN(key, 3); strings.Join(got, ",") != top3 {
			t.Errorf("subjects.md: GetN(%q, 3) = %s, the ring says %v", key, top3, got)
		}
		checked++
		perSet[set]++
	}
	if checked < 10 {
		t.Fatalf("checked only %d vectors in subjects.md", checked)
	}
	// The format-2 section ("Ring document format 2: load-aware lookup")
	// must keep its table of a shedding membership.
	if perSet["shed-draining"] < 8 {
		t.Fatalf("subjects.md has %d vectors for membership shed-draining, want at least 8", perSet["shed-draining"])
	}
}
