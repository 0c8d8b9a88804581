package embedded_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
)

// TestSoak runs mixed requests, reports and membership churn against two
// replicas and a RingCache for NATSROUTE_SOAK (default 60s): no request may
// fail, and heap and goroutine counts must be stable between the first and
// the last 10 s.
func TestSoak(t *testing.T) {
	duration := 60 * time.Second
	if v := os.Getenv("NATSROUTE_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 25*time.Second {
			t.Fatalf("NATSROUTE_SOAK=%q: want a duration of at least 25s", v)
		}
		duration = d
	}
	s := runServer(t)
	cfg := testConfig(t)
	cfg.MemberTTL = 2 * time.Second // silent transient nodes expire too
	r1 := startRouter(t, connect(t, s.ClientURL()), cfg)
	r2 := startRouter(t, connect(t, s.ClientURL()), cfg)
	js, _ := jetstream.New(connect(t, s.ClientURL()))
	cache, err := bus.WatchRing(ctxT(t), js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	pub := connect(t, s.ClientURL())
	stable := make([]string, 30)
	for i := range stable {
		stable[i] = fmt.Sprintf("s%02d", i)
	}
	stop := make(chan struct{})
	stopReports := keepReporting(t, pub, stable, stop)
	// Both replicas answer the queue group: load starts once each of them
	// (and the cache) has the 30 members, not just the one that wrote them.
	waitFor(t, 10*time.Second, "30 members on both routers and the cache", func() bool {
		d1, rev1 := r1.Ring()
		d2, rev2 := r2.Ring()
		return len(d1.Nodes) == 30 && len(d2.Nodes) == 30 && rev1 == rev2 && cache.Revision() == rev1
	})
	loadStart := time.Now()

	var requests, failures, churn atomic.Int64
	var wg sync.WaitGroup
	client, _ := bus.NewClient(connect(t, s.ClientURL()))
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				var err error
				switch i % 4 {
				case 0, 1:
					_, err = client.Pick(ctx, fmt.Sprintf("w%d-%d", w, i))
				case 2:
					_, err = client.PickHealthy(ctx)
				case 3:
					_, err = client.PickBatch(ctx, []string{"x", "y", "z"})
				}
				cancel()
				requests.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("request failed %v into the load: %v", time.Since(loadStart).Round(time.Millisecond), err)
				}
				_, _ = cache.Get("local")
			}
		})
	}
	wg.Go(func() { // churn: a transient node joins every 100 ms; some leave, the rest expire
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			id := fmt.Sprintf("t%d", i)
			health(t, pub, id, okHealth)
			if i%2 == 0 {
				h := okHealth
				h.Status = bus.StatusLeaving
				health(t, pub, fmt.Sprintf("t%d", i-4), h)
			}
			churn.Add(1)
		}
	})

	type sample struct {
		heap       uint64
		goroutines int
	}
	var samples []sample
	start := time.Now()
	for time.Since(start) < duration {
		time.Sleep(time.Second)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		samples = append(samples, sample{ms.HeapInuse, runtime.NumGoroutine()})
	}
	close(stop)
	wg.Wait()
	stopReports()

	avg := func(ss []sample) (float64, float64) {
		var h, g float64
		for _, x := range ss {
			h += float64(x.heap)
			g += float64(x.goroutines)
		}
		return h / float64(len(ss)), g / float64(len(ss))
	}
	h0, g0 := avg(samples[:10])
	h1, g1 := avg(samples[len(samples)-10:])
	t.Logf("%v: %d requests, %d failed, %d churn steps, KV writes %d+%d; heap in use %.1f MiB -> %.1f MiB, goroutines %.1f -> %.1f",
		duration, requests.Load(), failures.Load(), churn.Load(), r1.Stats().KVWrites, r2.Stats().KVWrites, h0/(1<<20), h1/(1<<20), g0, g1)
	if failures.Load() > 0 || requests.Load() == 0 {
		t.Fatalf("%d of %d requests failed", failures.Load(), requests.Load())
	}
	if g1 > g0+5 {
		t.Errorf("goroutines grew from %.1f to %.1f", g0, g1)
	}
	if h1 > h0*1.5+4<<20 {
		t.Errorf("heap grew from %.1f MiB to %.1f MiB", h0/(1<<20), h1/(1<<20))
	}
}
