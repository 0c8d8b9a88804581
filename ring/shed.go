package ring

import (
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Sheds reports whether a member with this id that sheds the fraction f of
// its keys sheds key (ring document format 2): with x = xxh64(key + "\x00" +
// id) and u = (x >> 11) / 2^53, it does iff u < f. f <= 0 sheds nothing and
// f >= 1 sheds every key. It allocates nothing.
func Sheds(key, id string, f float64) bool {
	if !(f > 0) {
		return false
	}
	return float64(shedHash(key, id)>>11)*0x1p-53 < f // exact: a power-of-two scale
}

// shedHash is xxh64(key + "\x00" + id) without building the string.
func shedHash(key, id string) uint64 {
	const inline = 128 // room for a short key and a typical id, on the stack
	if len(key)+1+len(id) <= inline {
		var buf [inline]byte
		n := copy(buf[:], key)
		buf[n] = 0
		n += 1 + copy(buf[n+1:], id)
		return xxhash.Sum64(buf[:n])
	}
	var d xxhash.Digest
	d.Reset()
	_, _ = d.WriteString(key)
	_, _ = d.Write([]byte{0})
	_, _ = d.WriteString(id)
	return d.Sum64()
}

// Shedding returns how many members have a Shed above 0, draining or not.
// A ring document is format 2 exactly when this is above 0.
func (s *Snapshot) Shedding() int { return s.nShed }

// getShed is Get for a snapshot in which some member that is not draining
// sheds, from point i of bucket b (number g), the key's point. Most keys
// land on a member that does not shed at all or does not shed this key, and
// return after one test.
func (s *Snapshot) getShed(key string, g int, b *bucket, i int) string {
	skip := s.skipDraining()
	o := uint32(b.points[i] & s.mask)
	for skip && s.entry(o).drain {
		if i++; i == b.len() {
			g, b = s.next(g)
			i = 0
		}
		o = uint32(b.points[i] & s.mask)
	}
	if e := s.entry(o); e.shed == 0 || !Sheds(key, e.id, e.shed) {
		return e.id
	}
	usable := s.nMembers
	if skip {
		usable -= s.nDrain
	}
	var one [1]string
	return s.walkShedFrom(one[:0], key, g, b, i, 1, usable, skip, nil)[0]
}

// walkShed is walkShedFrom the point of hash h.
func (s *Snapshot) walkShed(dst []string, key string, h uint64, want, usable int, skip bool, allowed func(uint32) bool) []string {
	g, b, i := s.seek(h)
	return s.walkShedFrom(dst, key, g, b, i, want, usable, skip, allowed)
}

// walkShedFrom appends want members for key under the format-2 rule, walking
// clockwise from point i of bucket b (number g), which may be the sentinel
// (see seek): first the members that do
// not shed key, then the ones that do, each in walk order. Members for which
// allowed (if non-nil) is false are passed over, and so are draining members
// when skip is set; usable is how many members remain, so the walk can stop
// once it has met them all. With want <= 16 and shed ranks below 1,024 (as
// many as members that shed, after a fresh build) it allocates nothing.
func (s *Snapshot) walkShedFrom(dst []string, key string, g int, b *bucket, i, want, usable int, skip bool, allowed func(uint32) bool) []string {
	// Members that do not shed at all are told apart as in walk; a member
	// with a shed is tested once, then marked in decided (by its shed rank).
	var small, smallShed [smallSet]uint32
	found := small[:0] // members without a shed so far, while want <= smallSet
	var seen []uint64  // the same as a bitset, when want > smallSet
	shedders := smallShed[:0]
	if want > smallSet {
		seen = make([]uint64, (s.nSlots+63)/64)
		shedders = make([]uint32, 0, want)
	}
	var smallDecided [16]uint64
	decided := smallDecided[:0]
	if w := int(s.nRanks+63) / 64; w <= len(smallDecided) {
		decided = smallDecided[:w]
	} else {
		decided = make([]uint64, w)
	}

	got, shed := 0, 0 // members that do not / do shed key, met so far
	ps, mask := b.points, s.mask
	for walked := 0; got < want && got+shed < usable && walked < s.n; walked++ {
		o := uint32(ps[i] & mask)
		if i++; i == len(ps) {
			g, ps, i = s.step(g)
		}
		e := s.entry(o)
		if (skip && e.drain) || (allowed != nil && !allowed(o)) {
			continue
		}
		if f := e.shed; f > 0 {
			r := e.rank
			if decided[r/64]&(1<<(r%64)) != 0 {
				continue
			}
			decided[r/64] |= 1 << (r % 64)
			if Sheds(key, e.id, f) {
				if len(shedders) < want {
					shedders = append(shedders, o)
				}
				shed++
				continue
			}
		} else if seen == nil {
			if slices.Contains(found, o) {
				continue
			}
			found = append(found, o)
		} else {
			if seen[o/64]&(1<<(o%64)) != 0 {
				continue
			}
			seen[o/64] |= 1 << (o % 64)
		}
		dst = append(dst, e.id)
		got++
	}
	for _, o := range shedders[:min(len(shedders), want-got)] {
		dst = append(dst, s.entry(o).id)
	}
	return dst
}
