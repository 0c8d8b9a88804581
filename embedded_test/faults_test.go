package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// loadResult is what a request loop saw.
type loadResult struct {
	mu        sync.Mutex
	ok, fails int
	retries   int
	foreign   []string    // answers naming a node outside the membership
	lastOK    time.Time   // time of the last success
	successes []time.Time // times of successes
}

// runLoad sends Pick requests one after another with retries (an attempt
// times out after 250 ms; a request gives up after 5 s) until stop closes.
// Every answer must be one of members.
func runLoad(t testing.TB, c *bus.Client, members []string, stop <-chan struct{}) (*loadResult, func()) {
	res := &loadResult{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key := fmt.Sprintf("load-%d", i)
			deadline := time.Now().Add(5 * time.Second)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
				node, err := c.Pick(ctx, key)
				cancel()
				res.mu.Lock()
				if err == nil {
					res.ok++
					res.lastOK = time.Now()
					res.successes = append(res.successes, res.lastOK)
					if !slices.Contains(members, node) {
						res.foreign = append(res.foreign, node)
					}
					res.mu.Unlock()
					break
				}
				if time.Now().After(deadline) {
					res.fails++
					res.mu.Unlock()
					t.Errorf("request %s failed for 5 s: %v", key, err)
					break
				}
				res.retries++
				res.mu.Unlock()
				if !errors.Is(err, bus.ErrNoRouter) && !errors.Is(err, bus.ErrTimeout) && !errors.Is(err, bus.ErrNoNodes) && !errors.Is(err, nats.ErrConnectionClosed) && !strings.Contains(err.Error(), "reconnect") {
					t.Logf("request %s: unexpected error kind (retrying): %v", key, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	})
	return res, wg.Wait
}

// keepReporting reports the nodes every 100 ms until stop closes.
func keepReporting(t testing.TB, nc *nats.Conn, nodes []string, stop <-chan struct{}) func() {
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range nodes {
				data, _ := bus.EncodeHealth(n, okHealth, bus.Msgpack)
				_ = nc.Publish(bus.HealthSubject(n), data) // errors while reconnecting are expected
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	return wg.Wait
}

// Fault 1: a single server with a file store restarts under steady load.
func TestFaultServerRestartUnderLoad(t *testing.T) {
	port, dir := freePort(t), t.TempDir()
	opts := func(o *server.Options) { o.Port, o.StoreDir = port, dir }
	s := runServer(t, opts)
	url := s.ClientURL()
	r := startRouter(t, connect(t, url, reconnecting()...), testConfig(t))
	nodes := []string{"a", "b", "c"}
	stop := make(chan struct{})
	stopReports := keepReporting(t, connect(t, url, reconnecting()...), nodes, stop)
	waitFor(t, 5*time.Second, "a,b,c", func() bool { return members(r) == "a,b,c" })
	client, _ := bus.NewClient(connect(t, url, reconnecting()...))
	res, stopLoad := runLoad(t, client, nodes, stop)
	waitFor(t, 5*time.Second, "load", func() bool { res.mu.Lock(); defer res.mu.Unlock(); return res.ok > 50 })

	s.Shutdown()
	s.WaitForShutdown()
	down := time.Now()
	waitFor(t, 5*time.Second, "requests to fail", func() bool {
		res.mu.Lock()
		defer res.mu.Unlock()
		return res.retries > 0
	})
	runServer(t, opts)
	back := time.Now()
	waitFor(t, 10*time.Second, "a success after the restart", func() bool {
		res.mu.Lock()
		defer res.mu.Unlock()
		return res.lastOK.After(back)
	})
	res.mu.Lock()
	var first time.Time
	for _, at := range res.successes {
		if at.After(back) {
			first = at
			break
		}
	}
	res.mu.Unlock()
	took := first.Sub(back)
	if took > 2*time.Second {
		t.Fatalf("requests succeeded again %v after the server was back, want within 2 s", took)
	}
	// The ring came back from the bucket: same members, answers continue.
	waitFor(t, 5*time.Second, "more successes", func() bool { res.mu.Lock(); defer res.mu.Unlock(); return res.ok > 200 })
	close(stop)
	stopLoad()
	stopReports()
	if members(r) != "a,b,c" {
		t.Fatalf("members after the restart: %s", members(r))
	}
	if len(res.foreign) > 0 {
		t.Fatalf("answers outside the membership: %v", res.foreign)
	}
	t.Logf("server down %v; first success %v after it was back; %d ok, %d retries, %d failed", back.Sub(down), took, res.ok, res.retries, res.fails)
}

// Fault 2: two replicas in one queue group under load; one stops.
func TestFaultReplicaStops(t *testing.T) {
	s := runServer(t)
	cfg := testConfig(t)
	r1, err := router.New(connect(t, s.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	startOrFail(t, r1)
	r2 := startRouter(t, connect(t, s.ClientURL()), cfg)
	nodes := []string{"a", "b", "c", "d"}
	stop := make(chan struct{})
	stopReports := keepReporting(t, connect(t, s.ClientURL()), nodes, stop)
	waitFor(t, 5*time.Second, "members on both", func() bool { return members(r1) == "a,b,c,d" && members(r2) == "a,b,c,d" })
	client, _ := bus.NewClient(connect(t, s.ClientURL()))
	res, stopLoad := runLoad(t, client, nodes, stop)
	waitFor(t, 5*time.Second, "both replicas to answer", func() bool {
		return r1.Stats().Requests != nil && r2.Stats().Requests != nil
	})
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	before := requests(r2)
	waitFor(t, 5*time.Second, "replica 2 to take the load", func() bool { return requests(r2) > before+200 })
	close(stop)
	stopLoad()
	stopReports()
	if res.fails > 0 || len(res.foreign) > 0 {
		t.Fatalf("%d requests failed; foreign answers %v", res.fails, res.foreign)
	}
	t.Logf("%d requests ok, %d retried, none failed", res.ok, res.retries)
}

func requests(r *router.Router) uint64 {
	var n uint64
	for _, c := range r.Stats().Requests {
		n += c.Count
	}
	return n
}

// Fault 4: churn — 200 joins and leaves published through two connections
// while two replicas write concurrently; the bucket ends exact.
func TestFaultChurn(t *testing.T) {
	s := runServer(t)
	cfg := testConfig(t)
	r1 := startRouter(t, connect(t, s.ClientURL()), cfg)
	r2 := startRouter(t, connect(t, s.ClientURL()), cfg)
	pubs := []*nats.Conn{connect(t, s.ClientURL()), connect(t, s.ClientURL())}
	want := map[string]bool{}
	var wg sync.WaitGroup
	ops := atomic.Int64{}
	for p := range 2 {
		wg.Go(func() {
			for i := range 60 {
				id := fmt.Sprintf("c%d-%02d", p, i)
				health(t, pubs[p], id, okHealth)
				ops.Add(1)
				if i%3 != 0 { // two in three leave again
					h := okHealth
					h.Status = bus.StatusLeaving
					health(t, pubs[p], id, h)
					ops.Add(1)
				}
				if i%5 == 0 {
					time.Sleep(time.Millisecond) // vary the interleaving with the writers
				}
			}
		})
	}
	wg.Wait()
	for p := range 2 {
		for i := 0; i < 60; i += 3 {
			want[fmt.Sprintf("c%d-%02d", p, i)] = true
		}
	}
	wantIDs := strings.Join(slices.Sorted(maps.Keys(want)), ",")
	waitFor(t, 10*time.Second, "the bucket to hold exactly the members", func() bool {
		local, _ := localRing(t, pubs[0])
		var ids []string
		for _, m := range local.Members() {
			ids = append(ids, m.ID)
		}
		return strings.Join(ids, ",") == wantIDs && members(r1) == wantIDs && members(r2) == wantIDs
	})
	t.Logf("%d operations; KV writes %d+%d, conflicts %d+%d", ops.Load(), r1.Stats().KVWrites, r2.Stats().KVWrites, r1.Stats().KVConflicts, r2.Stats().KVConflicts)
	if ops.Load() < 200 {
		t.Fatalf("only %d operations", ops.Load())
	}
}
