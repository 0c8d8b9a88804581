package resourceaware

import "slices"

// class orders nodes for selection: picks come from the lowest class present.
type class uint8

const (
	classEligible   class = iota // fresh and under every threshold, or neutral
	classOverloaded              // fresh report above a threshold
	classDraining                // status draining
)

// pickSet is what one selection draws from: the nodes of the lowest class
// present and their cumulative selection weights.
type pickSet struct {
	idx      []int32   // node positions (in the snapshot, or in a candidate list)
	cum      []float64 // cum[i] = sum of the weights of idx[0..i]; nil means uniform
	positive int       // nodes a weighted draw can hit (all of them when uniform)
}

// buildPickSet fills ps from n nodes whose weight and class weightOf gives,
// reusing the capacity of idx and cum.
func buildPickSet(n int, weightOf func(int) (float64, class), idx []int32, cum []float64) pickSet {
	lowest := classDraining
	for i := range n {
		if _, c := weightOf(i); c < lowest {
			lowest = c
		}
	}
	idx, cum = idx[:0], cum[:0]
	total, positive := 0.0, 0
	for i := range n {
		w, c := weightOf(i)
		if c != lowest {
			continue
		}
		if total+w > total {
			positive++
		}
		total += w
		idx, cum = append(idx, int32(i)), append(cum, total)
	}
	if total == 0 { // every score is zero: uniform
		cum, positive = nil, len(idx)
	}
	return pickSet{idx: idx, cum: cum, positive: positive}
}

// draw returns a position in ps.idx, chosen with probability proportional
// to its weight (uniformly if all weights are zero), from 64 random bits.
func (ps *pickSet) draw(u uint64) int {
	if ps.cum == nil {
		return int((u >> 32) * uint64(len(ps.idx)) >> 32)
	}
	total := ps.cum[len(ps.cum)-1]
	x := float64(u>>11) * 0x1p-53 * total // uniform in [0, total)
	lo, hi := 0, len(ps.cum)
	for lo < hi { // first i with cum[i] > x: zero-weight nodes are never hit
		m := int(uint(lo+hi) >> 1)
		if ps.cum[m] <= x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(ps.cum) { // x rounded up to total: take the last weighted node
		for lo--; lo > 0 && ps.cum[lo] == ps.cum[lo-1]; lo-- {
		}
	}
	return lo
}

// drawN returns up to n distinct items of a set of size items, positive of
// which have a weight > 0, by weighted sampling without replacement: each
// next pick is drawn from the remaining items in proportion to their
// weights, then uniformly among the rest once no weighted item remains. draw
// makes one weighted draw (of the whole set) from 64 random bits; it redraws
// on a repeat (which leaves the distribution exact) and, after a run of
// repeats, draws from the explicit list of the set that list returns.
func drawN(n, size, positive int, draw func(uint64) int, list func() pickSet, rnd func() uint64) []int {
	want := min(n, size)
	out := make([]int, 0, want)
	var all *pickSet
	explicit := func() *pickSet {
		if all == nil {
			ps := list()
			all = &ps
		}
		return all
	}
	for len(out) < want {
		if len(out) < positive {
			for try := 0; ; try++ {
				if try == 32 {
					out = append(out, explicit().drawExcluding(out, rnd(), false))
					break
				}
				if i := draw(rnd()); !slices.Contains(out, i) {
					out = append(out, i)
					break
				}
			}
			continue
		}
		out = append(out, explicit().drawExcluding(out, rnd(), true))
	}
	return out
}

func (ps *pickSet) weight(i int) float64 {
	if ps.cum == nil {
		return 1
	}
	if i == 0 {
		return ps.cum[0]
	}
	return ps.cum[i] - ps.cum[i-1]
}

// drawExcluding draws one item of ps.idx not in taken, by weight or
// uniformly.
func (ps *pickSet) drawExcluding(taken []int, u uint64, uniform bool) int {
	sub := pickSet{idx: make([]int32, 0, len(ps.idx)-len(taken))}
	total := 0.0
	for i, item := range ps.idx {
		if slices.Contains(taken, int(item)) {
			continue
		}
		w := 1.0
		if !uniform {
			w = ps.weight(i)
		}
		total += w
		sub.idx, sub.cum = append(sub.idx, item), append(sub.cum, total)
	}
	if total == 0 {
		sub.cum = nil
	}
	return int(sub.idx[sub.draw(u)])
}
