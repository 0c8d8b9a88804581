package ring

import (
	"fmt"
	"testing"
	"unsafe"
)

var sizes = []int{10, 100, 1000}

// BenchmarkGet compares Ring.Get with the plain sort.Search baseline
// (refRing.get) over the same membership and keys, in one run.
func BenchmarkGet(b *testing.B) {
	keys := fixedKeys(1 << 16)
	for _, n := range sizes {
		ms := members(n)
		r := mustNew(b, Config{}, ms...)
		b.Run(fmt.Sprintf("impl=ring/nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := r.Get(keys[i&(1<<16-1)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		ref := newRef(DefaultVirtualNodes, ms...)
		b.Run(fmt.Sprintf("impl=baseline/nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_ = ref.get(keys[i&(1<<16-1)])
				i++
			}
		})
	}
}

func BenchmarkGetParallel(b *testing.B) {
	r := mustNew(b, Config{}, members(100)...)
	keys := fixedKeys(1 << 16)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_, _ = r.Get(keys[i&(1<<16-1)])
			i++
		}
	})
}

func BenchmarkAppendN3(b *testing.B) {
	keys := fixedKeys(1 << 16)
	for _, n := range sizes {
		r := mustNew(b, Config{}, members(n)...)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]string, 0, 3)
			i := 0
			for b.Loop() {
				buf, _ = r.AppendN(buf[:0], keys[i&(1<<16-1)], 3)
				i++
			}
		})
	}
}

func BenchmarkGetFrom(b *testing.B) {
	r := mustNew(b, Config{}, members(100)...)
	cands := []string{"node-3", "node-17", "node-42", "node-77"}
	keys := fixedKeys(1 << 16)
	b.ReportAllocs()
	buf := make([]string, 0, 2)
	i := 0
	for b.Loop() {
		buf, _ = r.Snapshot().AppendFrom(buf[:0], keys[i&(1<<16-1)], cands, 2)
		i++
	}
}

// BenchmarkAddOne adds one member to a ring of 1,000 (merging its points);
// BenchmarkBuild builds the same 1,001-member ring from scratch. Both also
// report the memory per point of the result.
func BenchmarkAddOne(b *testing.B) {
	base := mustNew(b, Config{}, members(1000)...)
	b.ReportAllocs()
	var s *Snapshot
	for b.Loop() {
		r := &Ring{}
		r.snap.Store(base.Snapshot())
		if err := r.Add(Member{ID: "newcomer"}); err != nil {
			b.Fatal(err)
		}
		s = r.Snapshot()
	}
	b.ReportMetric(bytesPerPoint(s), "B/point")
}

func BenchmarkBuild(b *testing.B) {
	ms := append(members(1000), Member{ID: "newcomer"})
	b.ReportAllocs()
	var s *Snapshot
	for b.Loop() {
		s = mustNew(b, Config{}, ms...).Snapshot()
	}
	b.ReportMetric(bytesPerPoint(s), "B/point")
}

func bytesPerPoint(s *Snapshot) float64 {
	return float64(len(s.points)*int(unsafe.Sizeof(point{}))+len(s.table)*4) / float64(len(s.points))
}
