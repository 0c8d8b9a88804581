package ring

import (
	"fmt"
	"slices"
	"testing"
	"unsafe"
)

var sizes = []int{10, 100, 1000, 10_000}

// buildSizes are the memberships for the write-side benchmarks; 10,000
// members at 150 virtual nodes (1.5 M points) is what DESIGN.md "Scale" asks
// one router to hold, 50,000 with a raised max_payload.
var buildSizes = []int{1000, 10_000, 50_000}

// BenchmarkGet compares Ring.Get with the plain sort.Search baseline
// (refRing.get) over the same membership and keys, in one run.
func BenchmarkGet(b *testing.B) {
	keys := fixedKeys(1 << 16)
	for _, n := range sizes {
		ms := members(n)
		r := mustNew(b, Config{}, ms...)
		b.Run(fmt.Sprintf("impl=ring/nodes=%d", n), func(b *testing.B) { benchGet(b, r, keys) })
		ref := newRef(DefaultVirtualNodes, ms...)
		b.Run(fmt.Sprintf("impl=baseline/nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			cpu := cpuTime()
			for b.Loop() {
				_ = ref.get(keys[i&(1<<16-1)])
				i++
			}
			reportCPU(b, cpu)
		})
	}
}

// benchGet looks up keys (a power of two of them) in r round robin.
func benchGet(b *testing.B, r *Ring, keys []string) {
	b.ReportAllocs()
	i := 0
	cpu := cpuTime()
	for b.Loop() {
		if _, err := r.Get(keys[i&(len(keys)-1)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	reportCPU(b, cpu)
}

// BenchmarkGetShed is BenchmarkGet with every tenth member shedding 30 % of
// its keys (format 2); run it with BenchmarkGet to compare in one run.
func BenchmarkGetShed(b *testing.B) {
	keys := fixedKeys(1 << 16)
	for _, n := range []int{100, 1000} {
		ms := members(n)
		for i := 0; i < n; i += 10 {
			ms[i].Shed = 0.3
		}
		r := mustNew(b, Config{}, ms...)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchGet(b, r, keys) })
	}
}

// BenchmarkAppendN3Shed is BenchmarkAppendN3 with every tenth member
// shedding 30 % of its keys.
func BenchmarkAppendN3Shed(b *testing.B) {
	keys := fixedKeys(1 << 16)
	ms := members(100)
	for i := 0; i < len(ms); i += 10 {
		ms[i].Shed = 0.3
	}
	r := mustNew(b, Config{}, ms...)
	b.Run("nodes=100", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]string, 0, 3)
		i := 0
		cpu := cpuTime()
		for b.Loop() {
			buf, _ = r.AppendN(buf[:0], keys[i&(1<<16-1)], 3)
			i++
		}
		reportCPU(b, cpu)
	})
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
			cpu := cpuTime()
			for b.Loop() {
				buf, _ = r.AppendN(buf[:0], keys[i&(1<<16-1)], 3)
				i++
			}
			reportCPU(b, cpu)
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
	cpu := cpuTime()
	for b.Loop() {
		buf, _ = r.Snapshot().AppendFrom(buf[:0], keys[i&(1<<16-1)], cands, 2)
		i++
	}
	reportCPU(b, cpu)
}

// BenchmarkBuild builds a ring of n members from scratch (New). It reports
// the memory per point of the finished ring; B/op over that is how many
// rings' worth of memory a build allocates.
func BenchmarkBuild(b *testing.B) {
	for _, n := range buildSizes {
		ms := members(n)
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			var s *Snapshot
			cpu := cpuTime()
			for b.Loop() {
				s = mustNew(b, Config{}, ms...).Snapshot()
			}
			reportCPU(b, cpu)
			b.ReportMetric(bytesPerPoint(s), "B/point")
			b.ReportMetric(stateBytesPerPoint(s), "state-B/point")
		})
	}
}

// BenchmarkAddOne adds one member to a ring of n (merging its points).
func BenchmarkAddOne(b *testing.B) {
	for _, n := range buildSizes {
		base := mustNew(b, Config{}, members(n)...)
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			benchWrite(b, base, func(r *Ring) error { return r.Add(Member{ID: "newcomer"}) })
		})
	}
}

// BenchmarkRemoveOne removes one member from a ring of n.
func BenchmarkRemoveOne(b *testing.B) {
	for _, n := range buildSizes {
		base := mustNew(b, Config{}, members(n)...)
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			benchWrite(b, base, func(r *Ring) error { r.Remove("node-7"); return nil })
		})
	}
}

// BenchmarkSetOneChanged is how the router applies a new ring document:
// Set with the whole membership, sorted by id as documents are, of which
// one member was re-weighted.
func BenchmarkSetOneChanged(b *testing.B) {
	for _, n := range buildSizes {
		base := mustNew(b, Config{}, members(n)...)
		next := sortedMembers(n)
		next[n/2].Weight = 2
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			benchWrite(b, base, func(r *Ring) error { return r.Set(next) })
		})
	}
}

// benchWrite applies write to a ring holding base's snapshot, afresh in each
// iteration, and reports the memory per point of the result.
func benchWrite(b *testing.B, base *Ring, write func(*Ring) error) {
	b.Helper()
	b.ReportAllocs()
	var s *Snapshot
	cpu := cpuTime()
	for b.Loop() {
		r := &Ring{}
		r.snap.Store(base.Snapshot())
		if err := write(r); err != nil {
			b.Fatal(err)
		}
		s = r.Snapshot()
	}
	reportCPU(b, cpu)
	if s == base.Snapshot() {
		b.Fatal("the write did not change the ring")
	}
	b.ReportMetric(bytesPerPoint(s), "B/point")
}

// reportCPU reports the process CPU time per iteration since start. On a
// shared machine wall time (ns/op) also counts the time spent waiting for a
// core; CPU time does not, so it is the steadier figure to compare.
func reportCPU(b *testing.B, start int64) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// bytesPerPoint is what the points take, per point: the bucket directory,
// the buckets and their point arrays (as allocated, rounded up to the
// allocator's size class). The old layout's figure was its points and its
// table.
func bytesPerPoint(s *Snapshot) float64 {
	n := len(s.points) * int(unsafe.Sizeof(s.points[0]))
	for g, b := range s.points {
		if g == 0 || b != s.points[g-1] { // a run of empty buckets shares one
			n += roundupsize(int(unsafe.Sizeof(*b))) + roundupsize(cap(b.points)*8)
		}
	}
	return float64(n) / float64(s.Points())
}

// stateBytesPerPoint is bytesPerPoint plus the members: the slot table and
// the id index, per point. The old layout's members took 41 bytes a member
// (a Member and a draining flag), 0.27 bytes a point at 150 points a member.
func stateBytesPerPoint(s *Snapshot) float64 {
	n := bytesPerPoint(s) * float64(s.Points())
	n += float64(len(s.slots)*8 + len(s.slots)*roundupsize(int(unsafe.Sizeof(leaf{}))))
	n += float64(len(s.ids.chunks) * (24 + 16))
	for _, ch := range s.ids.chunks {
		n += float64(roundupsize(cap(ch) * int(unsafe.Sizeof(idRef{}))))
	}
	return n / float64(s.Points())
}

// sizeClasses are the Go allocator's small object sizes (runtime/sizeclasses.go).
var sizeClasses = []int{8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792, 2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672, 32768}

// roundupsize is the bytes the allocator hands out for a request of n.
func roundupsize(n int) int {
	if n == 0 {
		return 0
	}
	if i, _ := slices.BinarySearch(sizeClasses, n); i < len(sizeClasses) {
		return sizeClasses[i]
	}
	return (n + 8191) &^ 8191
}

// BenchmarkApply applies a batch: one member joins (changes=1), or a burst
// of n members joins an empty ring (changes=n, one fresh build).
func BenchmarkApply(b *testing.B) {
	for _, n := range buildSizes {
		base := mustNew(b, Config{}, members(n)...)
		b.Run(fmt.Sprintf("changes=1/members=%d", n), func(b *testing.B) {
			benchWrite(b, base, func(r *Ring) error { return r.Apply(Change{Member: Member{ID: "newcomer"}}) })
		})
		chs := make([]Change, n)
		for i, m := range members(n) {
			chs[i] = Change{Member: m}
		}
		empty := mustNew(b, Config{})
		b.Run(fmt.Sprintf("changes=%d/members=0", n), func(b *testing.B) {
			benchWrite(b, empty, func(r *Ring) error { return r.Apply(chs...) })
		})
	}
}

// BenchmarkApplyShare applies a batch of joins that is a share of the ring
// (1/16, 1/8, 1/4, 1/2 of 40,000 members), as a reader meets during a
// burst: what rebuildShare chooses between patching and rebuilding; and a
// batch in which every other member leaves (leaves=1_2), which rebuilds.
func BenchmarkApplyShare(b *testing.B) {
	const n = 40_000
	all := members(n + n/2)
	base := mustNew(b, Config{}, all[:n]...)
	for _, share := range []int{16, 8, 4, 2} {
		chs := make([]Change, n/share)
		for i, m := range all[n : n+n/share] {
			chs[i] = Change{Member: m}
		}
		b.Run(fmt.Sprintf("joins=1_%d", share), func(b *testing.B) {
			benchWrite(b, base, func(r *Ring) error { return r.Apply(chs...) })
		})
	}
	leaves := make([]Change, 0, n/2)
	for i := 0; i < n; i += 2 {
		leaves = append(leaves, Change{Member: Member{ID: all[i].ID}, Remove: true})
	}
	b.Run("leaves=1_2", func(b *testing.B) {
		benchWrite(b, base, func(r *Ring) error { return r.Apply(leaves...) })
	})
}
