package resourceaware

import (
	"fmt"
	"testing"
	"time"
)

func benchBalancer(b *testing.B, n int) *Balancer {
	b.Helper()
	bal, err := New(Config{}) // real clock and the default crypto-seeded source
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if err := bal.Report(fmt.Sprintf("node-%d", i), Report{CPUUsage: float64(i % 80), MemoryUsage: 40, ActiveConnections: int64(i % 500), AvgLatency: time.Duration(i%50) * time.Millisecond}); err != nil {
			b.Fatal(err)
		}
	}
	return bal
}

var benchSizes = []int{10, 100, 1000, 10_000}

func BenchmarkSelect(b *testing.B) {
	for _, n := range benchSizes {
		bal := benchBalancer(b, n)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
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
		bal := benchBalancer(b, n)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
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

// BenchmarkReport measures report throughput with 1,000 known nodes.
func BenchmarkReport(b *testing.B) {
	bal := benchBalancer(b, 1000)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%d", i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := bal.Report(ids[i%1000], Report{CPUUsage: float64(i % 95), MemoryUsage: 30}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
}
