package embedded_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
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

func (e *benchEnv) do(b *testing.B, subject string, body []byte) {
	m, err := e.nc.Request(subject, body, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	if m.Header.Get("Nats-Service-Error") != "" {
		b.Fatalf("error reply: %s", m.Header.Get("Nats-Service-Error"))
	}
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
				env.do(b, target.subject, env.single[i&1023])
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
			var wg sync.WaitGroup
			work := make(chan int, 64)
			start := time.Now()
			for range 64 {
				wg.Go(func() {
					for i := range work {
						env.do(b, target.subject, env.single[i&1023])
					}
				})
			}
			for i := range b.N {
				work <- i
			}
			close(work)
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
	b.Run("target=router/mode=batch100", func(b *testing.B) {
		for b.Loop() {
			env.do(b, bus.SubjectRequest, env.batch)
		}
	})
}
