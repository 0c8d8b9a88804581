package embedded_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
)

// Fault 5: 10,000 health reports a second for 10 s from 1,000 node ids
// while requests continue. The router is never a slow consumer, the
// membership is right at the end, and request latency stays bounded.
// NATSROUTE_BURST_SECONDS shortens or lengthens it.
func TestFaultReportBurst(t *testing.T) {
	seconds := 10
	if v := os.Getenv("NATSROUTE_BURST_SECONDS"); v != "" {
		fmt.Sscan(v, &seconds)
	}
	s := runServer(t)
	slow := make(chan error, 1)
	routerConn := connect(t, s.ClientURL(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case slow <- err:
		default:
		}
	}))
	r := startRouter(t, routerConn, testConfig(t))
	pub := connect(t, s.ClientURL())
	const nodes, perSecond = 1000, 10_000
	ids := make([][]byte, nodes)
	subjects := make([]string, nodes)
	for i := range nodes {
		id := fmt.Sprintf("burst-%04d", i)
		subjects[i] = bus.HealthSubject(id)
		h := okHealth
		h.CPUUsage = float64(i % 80)
		ids[i], _ = bus.EncodeHealth(id, h, bus.Msgpack)
	}
	client, _ := bus.NewClient(connect(t, s.ClientURL()))
	stop := make(chan struct{})
	var lat []time.Duration
	var failed int
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			d, _ := r.Ring()
			t0 := time.Now()
			_, err := client.Pick(ctx, fmt.Sprintf("k%d", i))
			cancel()
			if err != nil && len(d.Nodes) > 0 { // the ring may still be empty at the very start
				t.Logf("request %d: %v", i, err)
				failed++
			}
			lat = append(lat, time.Since(t0))
			time.Sleep(time.Millisecond)
		}
	})
	sent := 0
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond) // 100 reports every 10 ms
	for time.Since(start) < time.Duration(seconds)*time.Second {
		<-tick.C
		for range perSecond / 100 {
			i := sent % nodes
			if err := pub.Publish(subjects[i], ids[i]); err != nil {
				t.Fatal(err)
			}
			sent++
		}
	}
	tick.Stop()
	elapsed := time.Since(start)
	_ = pub.Flush()
	waitFor(t, 2*time.Minute, "every report to be handled", func() bool {
		st := r.Stats()
		return st.ReportsAccepted >= uint64(sent) || st.HealthDropped > 0
	})
	waitFor(t, 10*time.Second, "1,000 members", func() bool { d, _ := r.Ring(); return len(d.Nodes) == nodes })
	close(stop)
	wg.Wait()
	st := r.Stats()
	if st.HealthDropped != 0 || st.ReportsAccepted != uint64(sent) {
		t.Fatalf("sent %d reports; accepted %d, dropped %d", sent, st.ReportsAccepted, st.HealthDropped)
	}
	select {
	case err := <-slow:
		t.Fatalf("router connection error: %v", err)
	default:
	}
	if !routerConn.IsConnected() || failed > 0 {
		t.Fatalf("router connected %v; %d requests failed", routerConn.IsConnected(), failed)
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("%d reports in %v (%.0f/s) from %d ids; %d requests meanwhile: p50 %v, p99 %v, max %v; KV writes %d",
		sent, elapsed.Round(time.Millisecond), float64(sent)/elapsed.Seconds(), nodes, len(lat), p50, p99, lat[len(lat)-1], st.KVWrites)
	if p99 > time.Second {
		t.Fatalf("request p99 %v: not bounded", p99)
	}
}
