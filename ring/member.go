package ring

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"
)

// Member is one participant of the ring.
type Member struct {
	// ID names the member; 1 to MaxIDLength bytes of valid UTF-8.
	ID string
	// Weight scales the member's share of the key space: it owns
	// max(1, round(VirtualNodes·Weight)) points. 0 means 1; otherwise it must
	// be finite, > 0 and at most MaxWeight.
	Weight float64
	// Draining members keep their points but get no lookups while any member
	// in play is not draining.
	Draining bool
	// Shed is the fraction of its keys the member hands on to the next
	// members (ring document format 2): it sheds key k iff Sheds(k, ID, Shed).
	// 0 means it sheds nothing; otherwise it must be in (0, 1]. Like
	// Draining, a change of Shed alone keeps every point where it is.
	Shed float64
}

// normalize validates m and fills in the default weight.
func (m Member) normalize() (Member, error) {
	if m.ID == "" || len(m.ID) > MaxIDLength || !utf8.ValidString(m.ID) {
		return m, fmt.Errorf("%w: id %q must be 1 to %d bytes of UTF-8", ErrInvalidMember, truncate(m.ID), MaxIDLength)
	}
	if m.Weight == 0 {
		m.Weight = 1
	}
	if math.IsNaN(m.Weight) || m.Weight <= 0 || m.Weight > MaxWeight {
		return m, fmt.Errorf("%w: %q has weight %v, want > 0 and <= %v", ErrInvalidMember, m.ID, m.Weight, MaxWeight)
	}
	if m.Shed != 0 && !(m.Shed > 0 && m.Shed <= 1) { // NaN fails both tests
		return m, fmt.Errorf("%w: %q has shed %v, want 0 (sheds nothing) or a fraction in (0, 1]", ErrInvalidMember, m.ID, m.Shed)
	}
	m.Shed = max(m.Shed, 0) // -0 is 0
	return m, nil
}

// normalizeAll validates members and returns them sorted by ID. Duplicate
// ids are an error unless dedupe is set, in which case the first wins.
// Memberships usually arrive sorted and normalized (ring documents list
// nodes by id), and then members itself is returned: a Set of 50,000
// members that copied them allocated 2 MB, more than the change it applies.
// Callers only read the result.
func normalizeAll(members []Member, dedupe bool) ([]Member, error) {
	if normal(members) {
		return members, nil
	}
	out := make([]Member, 0, len(members))
	for _, m := range members {
		m, err := m.normalize()
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	byID := func(a, b Member) int { return cmp.Compare(a.ID, b.ID) }
	if !slices.IsSortedFunc(out, byID) {
		slices.SortStableFunc(out, byID)
	}
	for i := 1; i < len(out); i++ {
		if out[i].ID == out[i-1].ID {
			if !dedupe {
				return nil, fmt.Errorf("%w: %q given twice", ErrInvalidMember, out[i].ID)
			}
			out = slices.Delete(out, i, i+1)
			i--
		}
	}
	return out, nil
}

// normal reports whether members are valid, normalized and sorted by
// unique ID already.
func normal(members []Member) bool {
	for i, m := range members {
		n, err := m.normalize()
		if err != nil || n.Weight != m.Weight || math.Float64bits(n.Shed) != math.Float64bits(m.Shed) {
			return false
		}
		if i > 0 && members[i-1].ID >= m.ID {
			return false
		}
	}
	return true
}

// points returns how many points a member of this weight owns.
func points(vnodes int, weight float64) int {
	return max(1, int(math.Round(float64(vnodes)*weight)))
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
