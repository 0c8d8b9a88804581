package embedded_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// docMembers renders a document like members() does.
func docMembers(d bus.RingDocument) string {
	ids := make([]string, len(d.Nodes))
	for i, n := range d.Nodes {
		ids[i] = n.ID
		if n.Status != "" {
			ids[i] += "(" + n.Status + ")"
		}
		if n.Weight != 1 {
			ids[i] += fmt.Sprintf("*%v", n.Weight)
		}
	}
	return strings.Join(ids, ",")
}

// watchBucket follows the default pool's document once the bucket exists,
// and fails the test if it ever refuses one.
func watchBucket(t *testing.T, js jetstream.JetStream) *docReader {
	t.Helper()
	var kv jetstream.KeyValue
	ctx := ctxT(t)
	waitFor(t, 5*time.Second, "the bucket", func() bool {
		var err error
		kv, err = js.KeyValue(ctx, bus.DefaultBucket)
		return err == nil
	})
	d := startDocReader(t, kv, bus.RingKey)
	t.Cleanup(func() {
		if err := d.refusal(); err != nil {
			t.Errorf("watcher: %v", err)
		}
	})
	return d
}

func TestMembership(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	// Long enough that a step's members outlive its checks on a loaded
	// machine: at 400 ms, a and b once expired between the router's ring
	// and the read of the bucket.
	cfg.MemberTTL = 2 * time.Second
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	js, _ := jetstream.New(nc)
	w := watchBucket(t, js)

	heavy := okHealth
	heavy.Weight = 2.5
	// Each step publishes reports and expects the router's ring, the KV
	// document and a watcher all to show the membership.
	steps := []struct {
		name string
		do   func()
		want string
	}{
		{"join", func() {
			health(t, nc, "a", okHealth)
			health(t, nc, "b", okHealth)
		}, "a,b"},
		{"weight", func() {
			h := okHealth
			h.Weight = 2.5
			health(t, nc, "b", h)
			health(t, nc, "a", okHealth)
		}, "a,b*2.5"},
		{"draining", func() {
			h := okHealth
			h.Status = bus.StatusDraining
			health(t, nc, "a", h)
			health(t, nc, "b", heavy)
			health(t, nc, "c", okHealth)
		}, "a(draining),b*2.5,c"},
		{"undrain", func() {
			health(t, nc, "a", okHealth)
			health(t, nc, "b", heavy)
			health(t, nc, "c", okHealth)
		}, "a,b*2.5,c"},
		{"leave", func() {
			h := okHealth
			h.Status = bus.StatusLeaving
			health(t, nc, "a", h)
			health(t, nc, "b", heavy)
			health(t, nc, "c", okHealth)
		}, "b*2.5,c"},
		{"ttl expiry", func() {
			// keep c alive; b goes silent and must expire after the TTL.
			deadline := time.Now().Add(8 * time.Second)
			for time.Now().Before(deadline) && members(r) != "c" {
				health(t, nc, "c", okHealth)
				time.Sleep(50 * time.Millisecond)
			}
		}, "c"},
	}
	for _, st := range steps {
		st.do()
		waitFor(t, 5*time.Second, st.name+": router ring "+st.want, func() bool { return members(r) == st.want })
		local, _ := localRing(t, nc)
		rebuilt := bus.RingDocument{}
		for _, m := range local.Members() {
			n := bus.RingNode{ID: m.ID, Weight: m.Weight}
			if m.Draining {
				n.Status = bus.StatusDraining
			}
			rebuilt.Nodes = append(rebuilt.Nodes, n)
		}
		if got := docMembers(rebuilt); got != st.want {
			t.Fatalf("%s: ring rebuilt from the bucket has %s, want %s", st.name, got, st.want)
		}
		waitFor(t, 5*time.Second, st.name+": watcher sees "+st.want, func() bool { return w.saw(st.want) })
		d, _ := r.Ring()
		if got := docMembers(d); got != st.want {
			t.Fatalf("%s: document %s, want %s", st.name, got, st.want)
		}
	}
	st := r.Stats()
	if st.KVWrites < uint64(len(steps)) || st.ReportsAccepted == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDrainingSkipsOnlyItsKeys(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	for i := range 6 {
		health(t, nc, fmt.Sprintf("n%d", i), okHealth)
	}
	waitFor(t, 5*time.Second, "six members", func() bool { return len(strings.Split(members(r), ",")) == 6 })
	keys := make([]string, 3000)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
	}
	before := batch(t, r, keys)
	h := okHealth
	h.Status = bus.StatusDraining
	health(t, nc, "n2", h)
	waitFor(t, 5*time.Second, "n2 draining", func() bool { return strings.Contains(members(r), "n2(draining)") })
	after := batch(t, r, keys)
	moved := 0
	for i := range keys {
		if after[i] == "n2" {
			t.Fatalf("key %s still routed to draining n2", keys[i])
		}
		if before[i] != after[i] {
			if before[i] != "n2" {
				t.Fatalf("key %s moved %s -> %s though only n2 drains", keys[i], before[i], after[i])
			}
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no key was on n2")
	}
}

// batch answers keys through the router's ConsistentHash strategy.
func batch(t testing.TB, r *router.Router, keys []string) []string {
	t.Helper()
	rep, err := r.Strategies()[0].Select(context.Background(), bus.Request{Keys: keys, Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(rep.Results))
	for i, res := range rep.Results {
		out[i] = res.Node
	}
	return out
}

// TestBurstCoalesces: 100 nodes joining within a few milliseconds become
// one write per member key (none written twice) and a few writes of the
// whole document, not 100.
func TestBurstCoalesces(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w, err := kv.Watch(ctx, bus.RingKey, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	t0 := time.Now()
	for i := range 100 {
		health(t, nc, fmt.Sprintf("b%03d", i), okHealth)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	sent := time.Since(t0)
	docs, full := 0, false
	waitFor(t, 10*time.Second, "100 members in the keys and the document", func() bool {
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					t.Fatal("the watch of the document stopped")
				}
				if e == nil {
					continue // the end of no initial values (UpdatesOnly)
				}
				docs++
				d, err := bus.DecodeRingDocument(e.Value())
				full = err == nil && len(d.Nodes) == 100
			default:
				d, _ := r.Ring()
				return full && len(d.Nodes) == 100
			}
		}
	})
	writes := r.Stats().KVWrites
	t.Logf("100 joins sent in %v became %d document writes and %d key writes", sent, docs, writes-uint64(docs))
	if docs > 10 {
		t.Fatalf("100 joins became %d document writes, want a few", docs)
	}
	if keys := writes - uint64(docs); keys != 101 {
		t.Fatalf("100 joins became %d key writes, want 101 (each member once, and pools.default)", keys)
	}
}
