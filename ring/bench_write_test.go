package ring

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// The write benchmarks here use only what every version of the ring has
// (New, Add, Set, benchWrite), so that this file can be compiled against an
// older ring and run beside it in one session.

// BenchmarkSetOneFlag is BenchmarkSetOneChanged with a change that moves no
// point: one member starts draining, or shedding.
func BenchmarkSetOneFlag(b *testing.B) {
	for _, flag := range []string{"draining", "shed"} {
		for _, n := range buildSizes {
			base := mustNew(b, Config{}, members(n)...)
			next := sortedMembers(n)
			if flag == "draining" {
				next[n/2].Draining = true
			} else {
				next[n/2].Shed = 0.25
			}
			b.Run(fmt.Sprintf("flag=%s/members=%d", flag, n), func(b *testing.B) {
				benchWrite(b, base, func(r *Ring) error { return r.Set(next) })
			})
		}
	}
}

// BenchmarkAddWeighted re-weights one member with Add (its points from 150
// to 300).
func BenchmarkAddWeighted(b *testing.B) {
	for _, n := range buildSizes {
		base := mustNew(b, Config{}, members(n)...)
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			benchWrite(b, base, func(r *Ring) error { return r.Add(Member{ID: "node-7", Weight: 2}) })
		})
	}
}

// BenchmarkJoinBurst: n members join an empty ring in one write (Set), as
// a reader that applies a whole burst of joins at once does.
func BenchmarkJoinBurst(b *testing.B) {
	for _, n := range buildSizes {
		ms := sortedMembers(n)
		base := mustNew(b, Config{})
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			benchWrite(b, base, func(r *Ring) error { return r.Set(ms) })
		})
	}
}

// sortedMembers is members(n) sorted by id, as ring documents list them.
func sortedMembers(n int) []Member {
	ms := members(n)
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return ms
}
