package resourceaware

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

var benchSizes = []int{10, 1000, 10_000}

var benchCache struct {
	sync.Mutex
	m map[int]*Balancer
}

func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%d", i)
	}
	return ids
}

func benchReport(i int) Report {
	return Report{CPUUsage: float64(i % 80), MemoryUsage: 40, ActiveConnections: int64(i % 500), AvgLatency: time.Duration(i%50) * time.Millisecond}
}

// benchBalancer returns a Balancer with n nodes that have each reported
// once, built once per size and shared by the benchmarks (with the real
// clock and the default crypto-seeded source).
func benchBalancer(b *testing.B, n int) *Balancer {
	b.Helper()
	benchCache.Lock()
	defer benchCache.Unlock()
	if bal := benchCache.m[n]; bal != nil {
		return bal
	}
	bal, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	ids := benchIDs(n)
	if err := bal.Add(ids...); err != nil {
		b.Fatal(err)
	}
	for i, id := range ids {
		if err := bal.Report(id, benchReport(i)); err != nil {
			b.Fatal(err)
		}
	}
	if benchCache.m == nil {
		benchCache.m = map[int]*Balancer{}
	}
	benchCache.m[n] = bal
	return bal
}

func BenchmarkSelect(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			bal := benchBalancer(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bal.Select(nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSelectParallel(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			bal := benchBalancer(b, n)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bal.Select(nil); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

func BenchmarkSelectCandidates(b *testing.B) {
	bal := benchBalancer(b, 1000)
	cands := []string{"node-1", "node-500", "node-999", "node-42", "elsewhere"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bal.Select(cands); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSelectN3(b *testing.B) {
	bal := benchBalancer(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bal.SelectN(nil, 3); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReport measures heartbeats: reports of known nodes, rotating
// through them, each changing the node's load.
func BenchmarkReport(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			bal := benchBalancer(b, n)
			ids := benchIDs(n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := bal.Report(ids[i%n], Report{CPUUsage: float64(i % 95), MemoryUsage: 30}); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
		})
	}
}

// BenchmarkAddMany measures making 10,000 nodes known at once, as the
// router does when it loads a ring.
func BenchmarkAddMany(b *testing.B) {
	ids := benchIDs(10_000)
	b.ReportAllocs()
	for b.Loop() {
		bal, err := New(Config{})
		if err != nil {
			b.Fatal(err)
		}
		if err := bal.Add(ids...); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCounts measures what a metrics scrape costs.
func BenchmarkCounts(b *testing.B) {
	bal := benchBalancer(b, 10_000)
	b.ReportAllocs()
	for b.Loop() {
		if known, _ := bal.Counts(); known != 10_000 {
			b.Fatal(known)
		}
	}
}

// BenchmarkReportAllShuffled measures one batch of 1,000 reports from
// known nodes, arrived over the last 5 ms but handed over in no particular
// order (the router's batch is a map), into a balancer of 50,000 nodes
// that have all reported: each report moves its node in the staleness
// list.
func BenchmarkReportAllShuffled(b *testing.B) {
	const n, k = 50_000, 1_000
	bal, ids := benchBalancer(b, n), benchIDs(n)
	rng := rand.New(rand.NewPCG(1, 2))
	batch, reps := make([]string, k), make([]Report, k)
	b.ReportAllocs()
	for b.Loop() {
		now := time.Now()
		for j := range k {
			batch[j] = ids[rng.IntN(n)]
			reps[j] = benchReport(j)
			reps[j].Received = now.Add(-time.Duration(rng.IntN(5000)) * time.Microsecond)
		}
		if err := bal.ReportAll(batch, reps); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJoinLeave measures one node joining a balancer of n reporting
// nodes and leaving again (a rolling restart's step): each re-lays the
// selection snapshot.
func BenchmarkJoinLeave(b *testing.B) {
	for _, n := range []int{10_000, 50_000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			bal := benchBalancer(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if err := bal.Report("newcomer", Report{CPUUsage: 10, MemoryUsage: 10}); err != nil {
					b.Fatal(err)
				}
				bal.Forget("newcomer")
			}
		})
	}
}
