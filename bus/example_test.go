package bus_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// Ask a router which node owns a key, which nodes hold its replicas, and
// which healthy node should take a stateless request.
func ExampleClient() {
	url, stop := exampleRouter() // an embedded NATS, a router and nodes a, b, c
	defer stop()

	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	client, err := bus.NewClient(nc, bus.WithTimeout(time.Second))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	owner, err := client.Pick(ctx, "user-42")
	if err != nil {
		log.Fatal(err)
	}
	replicas, err := client.PickN(ctx, "user-42", 2)
	if err != nil {
		log.Fatal(err)
	}
	healthy, err := client.PickHealthy(ctx, "b")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("user-42 lives on", owner, "with replicas", replicas)
	fmt.Println("stateless work goes to", healthy)
	// Output:
	// user-42 lives on c with replicas [c a]
	// stateless work goes to b
}

// Report a node's health every few seconds; Close says "leaving", so the
// node leaves the ring at once.
func ExampleReporter() {
	url, stop := exampleRouter()
	defer stop()
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	var load bus.Load // count requests and their latency where you serve them
	source := bus.SystemHealth(&load)
	reporter, err := bus.NewReporter(nc, "node-d", source, 5*time.Second, bus.WithWeight(2))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("node-d on the ring:", onRing(nc, "node-d", true))
	if err := reporter.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("node-d on the ring after Close:", onRing(nc, "node-d", false))
	// Output:
	// node-d on the ring: true
	// node-d on the ring after Close: false
}

// Keep the ring locally and route with no round trip.
func ExampleRingCache() {
	url, stop := exampleRouter()
	defer stop()
	nc, err := nats.Connect(url)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}

	cache, err := bus.WatchRing(context.Background(), js, bus.DefaultBucket)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	owner, err := cache.Get("user-42")
	if err != nil {
		log.Fatal(err)
	}
	doc, rev := cache.Ring() // the document and the KV revision it came from
	fmt.Println("user-42 lives on", owner, "of", len(doc.Nodes), "members; revision > 0:", rev > 0)
	// Output:
	// user-42 lives on c of 3 members; revision > 0: true
}

// exampleRouter starts an embedded NATS with JetStream and a router, with
// nodes a, b and c on the ring.
func exampleRouter() (url string, stop func()) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, NoLog: true, NoSigs: true, StoreDir: mustTemp()})
	if err != nil {
		log.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server did not start")
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	cfg := router.DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := router.New(nc, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		log.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		data, _ := bus.EncodeHealth(id, bus.Health{CPUUsage: 20, MemoryUsage: 30, ActiveConnections: 4, AvgLatency: 2 * time.Millisecond}, bus.JSON)
		_ = nc.Publish(bus.HealthSubject(id), data)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if d, _ := r.Ring(); len(d.Nodes) == 3 {
			break
		}
		if time.Now().After(deadline) {
			log.Fatal("nodes did not join")
		}
	}
	return s.ClientURL(), func() {
		_ = r.Close()
		nc.Close()
		s.Shutdown()
		s.WaitForShutdown()
		_ = os.RemoveAll(s.StoreDir())
	}
}

func mustTemp() string {
	dir, err := os.MkdirTemp("", "natsroute-example-")
	if err != nil {
		log.Fatal(err)
	}
	return dir
}

// onRing polls route.ring until node's membership is want (or 5 s pass)
// and returns the membership it saw last.
func onRing(nc *nats.Conn, node string, want bool) bool {
	found := !want
	for deadline := time.Now().Add(5 * time.Second); found != want && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		m, err := nc.Request(bus.SubjectRing, nil, time.Second)
		if err != nil {
			continue
		}
		var st bus.RingState
		if err := bus.JSON.Unmarshal(m.Data, &st); err != nil {
			continue
		}
		found = false
		for _, n := range st.Ring.Nodes {
			found = found || n.ID == node
		}
	}
	return found
}

// Tell the routers that a node failed this caller: each probes it at once,
// and a node that is dead leaves the ring within a round trip. Without
// WithAck the report is only published.
func ExampleClient_ReportFailure() {
	url, stop := exampleRouter()
	defer stop()

	nc, err := nats.Connect(url, nats.Name("checkout-7"))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	client, err := bus.NewClient(nc)
	if err != nil {
		log.Fatal(err)
	}
	err = client.ReportFailure(context.Background(), "b", bus.WithReason("connection refused"), bus.WithAck())
	fmt.Println("acknowledged:", err == nil)
	// Output:
	// acknowledged: true
}
