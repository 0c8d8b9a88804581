package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/vmihailenco/msgpack/v5"
)

// benchEnv is one embedded server with a router holding 150 members and a
// no-op responder that replies a fixed 40-byte payload.
type benchEnv struct {
	nc     *nats.Conn
	single [][]byte // msgpack {"key": "user-i"}
	batch  []byte   // msgpack {"keys": [100 keys]}
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	s := runServer(b)
	r := startRouter(b, connect(b, s.ClientURL()), testConfig(b))
	pub := connect(b, s.ClientURL())
	for i := range 150 {
		health(b, pub, fmt.Sprintf("node-%03d", i), okHealth)
	}
	waitFor(b, 10*time.Second, "150 members", func() bool { d, _ := r.Ring(); return len(d.Nodes) == 150 })

	noop := connect(b, s.ClientURL())
	reply := make([]byte, 40)
	if _, err := noop.QueueSubscribe("noop.request", "q", func(m *nats.Msg) { _ = m.Respond(reply) }); err != nil {
		b.Fatal(err)
	}
	if err := noop.Flush(); err != nil {
		b.Fatal(err)
	}
	env := &benchEnv{nc: connect(b, s.ClientURL())}
	for i := range 1024 {
		p, _ := msgpack.Marshal(&bus.Request{Key: fmt.Sprintf("user-%d", i)})
		env.single = append(env.single, p)
	}
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	env.batch, _ = msgpack.Marshal(&bus.Request{Keys: keys})
	return env
}

// do sends one request and returns what went wrong, if anything. It does
// not fail the benchmark itself: b.Fatal may be called only from the
// benchmark's own goroutine, and inflight's workers call do too.
func (e *benchEnv) do(subject string, body []byte) error {
	m, err := e.nc.Request(subject, body, 5*time.Second)
	if err != nil {
		return err
	}
	if m.Header.Get("Nats-Service-Error") != "" {
		return fmt.Errorf("error reply: %s", m.Header.Get("Nats-Service-Error"))
	}
	return nil
}

// inflight calls do(0) to do(n-1) from workers goroutines and returns the
// first error; after one, the remaining calls are skipped. The caller fails
// the benchmark from its own goroutine.
func inflight(n, workers int, do func(i int) error) error {
	var (
		wg       sync.WaitGroup
		failed   atomic.Bool
		errMu    sync.Mutex // guards firstErr
		firstErr error
	)
	work := make(chan int, workers)
	for range workers {
		wg.Go(func() {
			for i := range work { // drain even after a failure, so the sender never blocks
				if failed.Load() {
					continue
				}
				if err := do(i); err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("request %d: %w", i, err)
					}
					errMu.Unlock()
					failed.Store(true)
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return firstErr
}

// BenchmarkRequest compares route.request (ConsistentHash, msgpack, 150
// members) with a no-op responder under the same load, in one run:
// sequential round trips (p50 reported) and 64 requests in flight on one
// connection (req/s reported).
func BenchmarkRequest(b *testing.B) {
	env := newBenchEnv(b)
	for _, target := range []struct{ name, subject string }{{"noop", "noop.request"}, {"router", bus.SubjectRequest}} {
		b.Run("target="+target.name+"/mode=sequential", func(b *testing.B) {
			lat := make([]time.Duration, 0, 1<<16)
			i := 0
			for b.Loop() {
				t0 := time.Now()
				if err := env.do(target.subject, env.single[i&1023]); err != nil {
					b.Fatal(err)
				}
				if len(lat) < cap(lat) {
					lat = append(lat, time.Since(t0))
				}
				i++
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
		b.Run("target="+target.name+"/mode=inflight64", func(b *testing.B) {
			start := time.Now()
			err := inflight(b.N, 64, func(i int) error { return env.do(target.subject, env.single[i&1023]) })
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
	b.Run("target=router/mode=batch100", func(b *testing.B) {
		for b.Loop() {
			if err := env.do(bus.SubjectRequest, env.batch); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPick compares a local RingCache lookup with a Client.Pick round
// trip to the router, in one run, over the same 150-member ring.
func BenchmarkPick(b *testing.B) {
	env := newBenchEnv(b)
	js, _ := jetstream.New(env.nc)
	cache, err := bus.WatchRing(context.Background(), js, "", bus.WithRingCacheLogger(testLogger(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer cache.Close()
	client, err := bus.NewClient(env.nc)
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	b.Run("via=ringcache", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := cache.Get(keys[i&1023]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("via=client", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		i := 0
		for b.Loop() {
			if _, err := client.Pick(ctx, keys[i&1023]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkPropagation measures, over 200 membership changes (100 new
// nodes joining and leaving again, on a ring of 50), the time from the
// health report that changes the membership to three watching RingCaches
// all having the change. Two paces: changes spaced wider than the router's
// write window (router.DefaultCoalesce, 5 ms), and back to back, where each
// change may wait up to one window. Then the same with the caches in a
// process of their own (the test binary re-run as a cache process), as an
// application holds them. As a baseline in the same run: a raw KV put of a
// 2 KB value until a watcher sees it.
func BenchmarkPropagation(b *testing.B) {
	s := runServer(b)
	r := startRouter(b, connect(b, s.ClientURL()), testConfig(b))
	pub := connect(b, s.ClientURL())
	for i := range 50 {
		health(b, pub, fmt.Sprintf("base-%02d", i), okHealth)
	}
	waitFor(b, 10*time.Second, "50 members", func() bool { d, _ := r.Ring(); return len(d.Nodes) == 50 })
	var caches []*bus.RingCache
	for range 3 {
		js, _ := jetstream.New(connect(b, s.ClientURL()))
		c, err := bus.WatchRing(context.Background(), js, "", bus.WithRingCacheLogger(testLogger(b)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		caches = append(caches, c)
	}
	report := func(b *testing.B, lat []time.Duration) {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
	paces := []struct {
		name string
		gap  time.Duration
	}{{"spaced", router.DefaultCoalesce + time.Millisecond}, {"back-to-back", 0}}
	// measure times 100 nodes joining and leaving again at each pace, for
	// each count of caches to wait for. change publishes one report and
	// returns how long until the first n caches show it.
	n := 0 // node ids stay new across runs
	measure := func(path string, counts []int, change func(b *testing.B, id string, h bus.Health, member bool, n int) time.Duration) {
		leaving := okHealth
		leaving.Status = bus.StatusLeaving
		for _, pace := range paces {
			for _, nc := range counts {
				b.Run(fmt.Sprintf("path=%s/pace=%s/caches=%d", path, pace.name, nc), func(b *testing.B) {
					var lat []time.Duration
					for b.Loop() {
						for range 100 {
							id := fmt.Sprintf("p%d", n)
							n++
							time.Sleep(pace.gap)
							lat = append(lat, change(b, id, okHealth, true, nc))
							time.Sleep(pace.gap)
							lat = append(lat, change(b, id, leaving, false, nc))
						}
					}
					report(b, lat)
				})
			}
		}
	}
	measure("report-to-caches", []int{1, 3}, func(b *testing.B, id string, h bus.Health, member bool, n int) time.Duration {
		t0 := time.Now()
		health(b, pub, id, h)
		waitMember(caches[:n], id, member)
		return time.Since(t0)
	})
	// The same changes with the caches in a process of their own, as in an
	// application: the server and router's process no longer carries the
	// caches' garbage, nor they its.
	for _, c := range caches {
		c.Close()
	}
	proc := startCacheProc(b, s.ClientURL())
	measure("report-to-caches-in-own-process", []int{1, cacheProcCaches}, func(b *testing.B, id string, h bus.Health, member bool, n int) time.Duration {
		return proc.change(b, id, member, n, func() { health(b, pub, id, h) })
	})
	js, _ := jetstream.New(pub)
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "rawbench"})
	if err != nil {
		b.Fatal(err)
	}
	for _, pace := range paces {
		b.Run("path=raw-kv-put-to-watch/pace="+pace.name, func(b *testing.B) {
			ctx := context.Background()
			w, err := kv.Watch(ctx, "k", jetstream.UpdatesOnly())
			if err != nil {
				b.Fatal(err)
			}
			defer w.Stop()
			val := make([]byte, 2048)
			var lat []time.Duration
			for b.Loop() {
				for range 200 {
					time.Sleep(pace.gap)
					t0 := time.Now()
					rev, err := kv.Put(ctx, "k", val)
					if err != nil {
						b.Fatal(err)
					}
					for e := range w.Updates() {
						if e.Revision() >= rev {
							break
						}
					}
					lat = append(lat, time.Since(t0))
				}
			}
			report(b, lat)
		})
	}
}

// TestInflight: inflight makes every call once when none fails, and after
// a failure returns the first error to its caller without blocking, even
// when every worker would fail.
func TestInflight(t *testing.T) {
	var calls atomic.Int64
	if err := inflight(1000, 64, func(int) error { calls.Add(1); return nil }); err != nil || calls.Load() != 1000 {
		t.Fatalf("no failure: %v after %d calls, want nil after 1000", err, calls.Load())
	}
	boom := errors.New("boom")
	calls.Store(0)
	err := inflight(100000, 64, func(i int) error { calls.Add(1); return boom })
	if !errors.Is(err, boom) || calls.Load() > 64 {
		t.Fatalf("all failing: %v after %d calls, want boom after at most 64", err, calls.Load())
	}
}
