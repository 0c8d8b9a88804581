package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestClient(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	ctx := ctxT(t)

	for _, opt := range []bus.ClientOption{bus.WithTimeout(0), bus.WithEncoding(7), bus.WithSubject("route.*"), bus.WithSubject("")} {
		if _, err := bus.NewClient(nc, opt); err == nil {
			t.Error("an invalid option was accepted")
		}
	}
	for _, enc := range []bus.Encoding{bus.Msgpack, bus.JSON} {
		t.Run("empty/"+enc.String(), func(t *testing.T) {
			c, err := bus.NewClient(nc, bus.WithEncoding(enc), bus.WithTimeout(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Pick(ctx, "user-42")
			var se *bus.ServiceError
			if !errors.Is(err, bus.ErrNoNodes) || !errors.As(err, &se) || se.Code != 503 || !strings.Contains(se.Message, "no members") {
				t.Fatalf("empty ring: %v, want ErrNoNodes with the router's message", err)
			}
			if want := "natsroute: no node available: the ring has no members (503)"; err.Error() != want {
				t.Fatalf("empty ring: %q, want %q", err, want)
			}
		})
	}
	for _, id := range []string{"a", "b", "c", "d"} {
		health(t, nc, id, okHealth)
	}
	waitFor(t, 5*time.Second, "4 members", func() bool { return members(r) == "a,b,c,d" })
	local, _ := localRing(t, nc)

	for _, enc := range []bus.Encoding{bus.Msgpack, bus.JSON} {
		t.Run("picks/"+enc.String(), func(t *testing.T) {
			c, _ := bus.NewClient(nc, bus.WithEncoding(enc))
			got, err := c.Pick(ctx, "user-42")
			if want, _ := local.Get("user-42"); err != nil || got != want {
				t.Fatalf("Pick = %q, %v; want %q", got, err, want)
			}
			gotN, err := c.PickN(ctx, "user-42", 3)
			if want, _ := local.GetN("user-42", 3); err != nil || !slices.Equal(gotN, want) {
				t.Fatalf("PickN = %v, %v; want %v", gotN, err, want)
			}
			if got, err := c.PickHealthy(ctx, "b", "c"); err != nil || (got != "b" && got != "c") {
				t.Fatalf("PickHealthy(b, c) = %q, %v", got, err)
			}
			if got, err := c.PickHealthy(ctx); err != nil || got == "" {
				t.Fatalf("PickHealthy() = %q, %v", got, err)
			}
			res, err := c.PickBatch(ctx, []string{"k1", "k2", "k3"})
			if err != nil || len(res) != 3 {
				t.Fatalf("PickBatch = %v, %v", res, err)
			}
			for _, x := range res {
				if want, _ := local.Get(x.Key); x.Node != want {
					t.Fatalf("PickBatch %s = %s, want %s", x.Key, x.Node, want)
				}
			}
			_, err = c.PickN(ctx, "k", -1)
			var se *bus.ServiceError
			if !errors.Is(err, bus.ErrBadRequest) || !errors.As(err, &se) || !strings.Contains(se.Message, "count -1") || errors.Is(err, bus.ErrNoNodes) {
				t.Fatalf("PickN(-1): %v, want ErrBadRequest with the router's message", err)
			}
		})
	}

	t.Run("no router", func(t *testing.T) {
		c, _ := bus.NewClient(nc, bus.WithSubject("nobody.listens"))
		_, err := c.Pick(ctx, "k")
		if !errors.Is(err, bus.ErrNoRouter) || !errors.Is(err, nats.ErrNoResponders) || errors.Is(err, bus.ErrTimeout) {
			t.Fatalf("no router: %v", err)
		}
		if want := "natsroute: no router answered on nobody.listens: nats: no responders available for request"; err.Error() != want {
			t.Fatalf("no router: %q, want %q", err, want)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		sub, err := nc.Subscribe("silent.route", func(*nats.Msg) {}) // never answers
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		c, _ := bus.NewClient(nc, bus.WithSubject("silent.route"), bus.WithTimeout(50*time.Millisecond))
		_, err = c.Pick(ctx, "k")
		if !errors.Is(err, bus.ErrTimeout) || errors.Is(err, bus.ErrNoRouter) {
			t.Fatalf("silent router: %v", err)
		}
		if want := "natsroute: request timed out on silent.route: context deadline exceeded"; err.Error() != want {
			t.Fatalf("silent router: %q, want %q", err, want)
		}
	})
}

func TestReporter(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t)) // member TTL 60 s
	src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return okHealth, nil })

	if _, err := bus.NewReporter(nc, "bad.id", src, time.Second); !errors.Is(err, bus.ErrInvalidNodeID) {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := bus.NewReporter(nc, "ok", src, 0); err == nil {
		t.Fatal("zero interval accepted")
	}
	if _, err := bus.NewReporter(nc, "ok", src, time.Second, bus.WithWeight(-2)); err == nil {
		t.Fatal("negative weight accepted")
	}

	rep, err := bus.NewReporter(nc, "node-7", src, 20*time.Millisecond, bus.WithWeight(2))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "node-7 to join", func() bool { return members(r) == "node-7*2" })
	if err := rep.SetDraining(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "node-7 to drain", func() bool { return members(r) == "node-7(draining)*2" })
	before := r.Stats().ReportsAccepted
	waitFor(t, 5*time.Second, "more reports", func() bool { return r.Stats().ReportsAccepted >= before+3 })
	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	if err := rep.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	// Leaving takes effect at once: the TTL is a minute.
	waitFor(t, 5*time.Second, "node-7 to leave", func() bool { return members(r) == "" })
	if st := r.Stats(); st.ReportsRejected["stale_seq"] != 0 || rep.Failures() != 0 {
		t.Fatalf("stale seqs %d, reporter failures %d", st.ReportsRejected["stale_seq"], rep.Failures())
	}

	// A restarted node (a new Reporter) is accepted: seq grows across restarts.
	rep2, err := bus.NewReporter(nc, "node-7", src, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer rep2.Close()
	waitFor(t, 5*time.Second, "node-7 to rejoin", func() bool { return members(r) == "node-7" })
}

func TestSystemHealth(t *testing.T) {
	var load bus.Load
	end := load.Begin()
	load.Observe(10 * time.Millisecond)
	if load.Active() != 1 {
		t.Fatalf("active %d, want 1", load.Active())
	}
	end()
	h, err := bus.SystemHealth(&load).Health(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil || h.MemoryUsage <= 0 || h.ActiveConnections != 0 || h.AvgLatency <= 0 || h.AvgLatency > 10*time.Millisecond {
		t.Fatalf("system health %+v: %v", h, err)
	}
}

func TestRingCache(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := ctxT(t)

	// The bucket does not exist yet: the cache starts empty and waits.
	cache, err := bus.WatchRing(ctx, js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if _, err := cache.Get("k"); !errors.Is(err, bus.ErrNoNodes) {
		t.Fatalf("empty cache: %v, want ErrNoNodes", err)
	}

	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("session-%d", i)
	}
	// 24 membership changes through the router; after each, once the cache
	// reaches the router's revision, it answers exactly as the router does.
	changes := 0
	change := func(id string, h bus.Health) {
		t.Helper()
		before := r.Revision()
		health(t, nc, id, h)
		waitFor(t, 5*time.Second, "a ring write", func() bool { return r.Revision() > before })
		changes++
		if err := cache.WaitRevision(ctx, r.Revision()); err != nil {
			t.Fatal(err)
		}
		want := batch(t, r, keys)
		snap := cache.Snapshot()
		for i, k := range keys {
			if got, _ := snap.Get(k); got != want[i] {
				t.Fatalf("change %d, key %s: cache %s, router %s", changes, k, got, want[i])
			}
		}
	}
	for i := range 12 {
		h := okHealth
		h.Weight = float64(1 + i%3)
		change(fmt.Sprintf("n%02d", i), h)
	}
	for i := 0; i < 12; i += 3 {
		h := okHealth
		h.Status = bus.StatusDraining
		change(fmt.Sprintf("n%02d", i), h)
		h.Status = bus.StatusLeaving
		change(fmt.Sprintf("n%02d", i+1), h)
		h.Status, h.Weight = "", 5
		change(fmt.Sprintf("n%02d", i+2), h)
	}
	if changes < 20 || cache.Revision() != r.Revision() {
		t.Fatalf("%d changes; cache at %d, router at %d", changes, cache.Revision(), r.Revision())
	}
	if got, err := cache.GetN("user-1", 3); err != nil || len(got) != 3 {
		t.Fatalf("GetN: %v %v", got, err)
	}
	if err := cache.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestRingCacheRefusesUnknownFormat: a document this version cannot read
// leaves the cache on its last good ring, with Err saying why.
func TestRingCacheRefusesUnknownFormat(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := ctxT(t)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "other"})
	if err != nil {
		t.Fatal(err)
	}
	good := `{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1},{"id":"b","weight":1}]}`
	rev, err := kv.PutString(ctx, bus.RingKey, good)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := bus.WatchRing(ctx, js, "other", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if cache.Revision() != rev || len(cache.Document().Nodes) != 2 {
		t.Fatalf("cache at %d with %d nodes", cache.Revision(), len(cache.Document().Nodes))
	}
	for _, bad := range []string{
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1}]}`,
		`{"format":1,"hash":"murmur3","vnodes":150,"nodes":[{"id":"a","weight":1}]}`,
	} {
		if _, err := kv.PutString(ctx, bus.RingKey, bad); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the cache to refuse the document", func() bool { return cache.Err() != nil })
		if !errors.Is(cache.Err(), bus.ErrInvalidDocument) || cache.Revision() != rev || len(cache.Document().Nodes) != 2 {
			t.Fatalf("after %s: err %v, revision %d", bad, cache.Err(), cache.Revision())
		}
		if _, err := kv.PutString(ctx, bus.RingKey, good); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "a good document to clear the error", func() bool { return cache.Err() == nil })
		rev = cache.Revision()
	}
}
