package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// inPools returns okHealth for a node of these pools.
func inPools(pools ...string) bus.Health {
	h := okHealth
	h.Pools = pools
	return h
}

// poolDoc reads a pool's ring document straight from the bucket.
func poolDoc(t testing.TB, kv jetstream.KeyValue, pool string) (bus.RingDocument, uint64) {
	t.Helper()
	snap, err := poolSnapshot(kv, pool)
	if err != nil {
		t.Fatalf("pool %s: %v", pool, err)
	}
	return snap.Document(), snap.Revision
}

// poolSnapshot reads a pool's member keys (v3) with a watch, up to the end
// of its initial values, as a RingCache would.
func poolSnapshot(kv jetstream.KeyValue, pool string) (*bus.PoolSnapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := kv.WatchFiltered(ctx, bus.PoolWatchKeys(pool))
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	view, err := bus.NewPoolView(pool)
	if err != nil {
		return nil, err
	}
	for e := range w.Updates() {
		if e == nil {
			s, err := view.Publish()
			if err == nil && !s.V3 {
				err = fmt.Errorf("pool %s has no member keys (%s)", pool, bus.PoolKeyV3(pool))
			}
			return s, err
		}
		_ = view.Apply(e)
	}
	return nil, ctx.Err()
}

// poolDocument reads a pool's whole document (written for readers of
// earlier releases) and its revision.
func poolDocument(t testing.TB, kv jetstream.KeyValue, pool string) (bus.RingDocument, uint64) {
	t.Helper()
	e, err := kv.Get(context.Background(), bus.PoolKey(pool))
	if err != nil {
		t.Fatalf("kv get %s: %v", bus.PoolKey(pool), err)
	}
	d, err := bus.DecodeRingDocument(e.Value())
	if err != nil {
		t.Fatalf("pool %s: %v", pool, err)
	}
	return d, e.Revision()
}

func poolMembers(r *router.Router, pool string) string {
	d, _ := r.PoolRing(pool)
	return docMembers(d)
}

// poolReply asks for key in a pool and fails on an error reply.
func poolReply(t testing.TB, c *bus.Client, q bus.Request) bus.Reply {
	t.Helper()
	rep, err := c.Select(context.Background(), q)
	if err != nil {
		t.Fatalf("request %+v: %v", q, err)
	}
	return rep
}

// TestPools: three pools served by one router. node-both serves two pools,
// node-move switches pools, and the session pool is emptied to a 503. Every
// pool's KV document, the router's answers, a RingCache per pool and a ring
// rebuilt from each key agree on 10,000 keys, and ResourceAware never picks
// a node outside the pool.
func TestPools(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	js, _ := jetstream.New(nc)
	client, err := bus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}

	health(t, nc, "cache-1", inPools("cache"))
	health(t, nc, "cache-2", inPools("cache"))
	health(t, nc, "node-both", inPools("cache", "search"))
	health(t, nc, "search-1", inPools("search"))
	health(t, nc, "node-move", inPools("session"))
	health(t, nc, "plain", okHealth) // no pools: the default pool
	want := map[string]string{
		"cache":   "cache-1,cache-2,node-both",
		"search":  "node-both,search-1",
		"session": "node-move",
		"default": "plain",
	}
	converged := func() bool {
		for p, w := range want {
			if poolMembers(r, p) != w {
				return false
			}
		}
		return true
	}
	waitFor(t, 10*time.Second, "four pools", converged)

	// node-move switches to search; session is left with no member.
	health(t, nc, "node-move", inPools("search"))
	want["search"], want["session"] = "node-both,node-move,search-1", ""
	waitFor(t, 10*time.Second, "node-move to switch pools", converged)

	ctx := ctxT(t)
	kv, err := js.KeyValue(ctx, bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
	}
	for _, pool := range []string{"cache", "search", "default"} {
		doc, rev := poolDoc(t, kv, pool)
		if docMembers(doc) != want[pool] {
			t.Fatalf("pool %s: bucket has %s, want %s", pool, docMembers(doc), want[pool])
		}
		independent, err := doc.Ring()
		if err != nil {
			t.Fatal(err)
		}
		var opts []bus.RingCacheOption
		if pool != bus.DefaultPool {
			opts = append(opts, bus.WithPool(pool))
		}
		cache, err := bus.WatchRing(ctx, js, "", opts...)
		if err != nil {
			t.Fatal(err)
		}
		if err := cache.WaitRevision(ctx, rev); err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(keys); off += 1000 {
			rep := poolReply(t, client, bus.Request{Pool: pool, Keys: keys[off : off+1000]})
			if rep.Revision != rev {
				t.Fatalf("pool %s answered from revision %d, the bucket has %d", pool, rep.Revision, rev)
			}
			for i, res := range rep.Results {
				k := keys[off+i]
				ind, _ := independent.Get(k)
				cached, _ := cache.Get(k)
				if res.Node != ind || res.Node != cached {
					t.Fatalf("pool %s key %s: router %s, independent ring %s, cache %s", pool, k, res.Node, ind, cached)
				}
			}
		}
		_ = cache.Close()
		members := strings.Split(want[pool], ",")
		for range 300 {
			rep := poolReply(t, client, bus.Request{Pool: pool, Strategy: bus.StrategyResourceAware})
			if !slices.Contains(members, rep.Node) {
				t.Fatalf("pool %s: ResourceAware picked %s, not a member (%s)", pool, rep.Node, want[pool])
			}
		}
	}

	// The emptied pool keeps its key with no nodes, and answers 503 for
	// both strategies; so does a pool nobody reported for.
	if doc, _ := poolDoc(t, kv, "session"); doc.Nodes == nil || len(doc.Nodes) != 0 {
		t.Fatalf("emptied pool: %+v, want \"nodes\": []", doc)
	}
	for _, q := range []bus.Request{
		{Pool: "session", Key: "k"},
		{Pool: "session", Strategy: bus.StrategyResourceAware},
		{Pool: "nobody", Key: "k"},
	} {
		_, err := client.Select(ctx, q)
		if !errors.Is(err, bus.ErrNoNodes) || !strings.Contains(err.Error(), "pool "+q.Pool+" has no members") {
			t.Fatalf("%+v: %v, want 503 pool %s has no members", q, err, q.Pool)
		}
	}

	// route.pools lists them; route.nodes of a pool lists its nodes only.
	pools, err := client.Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, p := range pools {
		listed = append(listed, fmt.Sprintf("%s:%d", p.Name, p.Members))
	}
	if got := strings.Join(listed, " "); got != "cache:3 default:1 search:3 session:0" {
		t.Fatalf("route.pools: %s", got)
	}
	nodes, err := client.Nodes(ctx, "search")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range nodes.Nodes {
		ids = append(ids, n.ID)
	}
	if strings.Join(ids, ",") != want["search"] || nodes.Total != 3 || nodes.Pool != "search" {
		t.Fatalf("route.nodes for search: %+v", nodes)
	}
}

// TestPoolsReplicasChurn: two replicas under concurrent churn across 20
// pools (joins, pool switches, leaves, from two connections) end with
// exactly the right members in every pool's document.
func TestPoolsReplicasChurn(t *testing.T) {
	s := runServer(t)
	cfg := testConfig(t)
	r1 := startRouter(t, connect(t, s.ClientURL()), cfg)
	r2 := startRouter(t, connect(t, s.ClientURL()), cfg)
	pubs := []*nats.Conn{connect(t, s.ClientURL()), connect(t, s.ClientURL())}

	const nodes, npools = 120, 20
	pool := func(i int) string { return fmt.Sprintf("p%02d", i%npools) }
	want := map[string][]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for p := range 2 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(p), 7))
			for i := p; i < nodes; i += 2 {
				id := fmt.Sprintf("n%03d", i)
				first := []string{pool(i), pool(i + 7)}
				health(t, pubs[p], id, inPools(first...))
				var final []string
				switch rnd.IntN(3) {
				case 0: // stays
					final = first
				case 1: // switches to other pools
					final = []string{pool(i + 3)}
					health(t, pubs[p], id, inPools(final...))
				case 2: // leaves every pool
					h := inPools(first...)
					h.Status = bus.StatusLeaving
					health(t, pubs[p], id, h)
				}
				mu.Lock()
				for _, name := range final {
					want[name] = append(want[name], id)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, c := range pubs {
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(name string) string {
		ids := slices.Clone(want[name])
		slices.Sort(ids)
		return strings.Join(ids, ",")
	}
	js, _ := jetstream.New(pubs[0])
	kv, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			for i := range npools {
				name := pool(i)
				d1, rev1 := r1.PoolRing(name)
				d2, rev2 := r2.PoolRing(name)
				if w := expect(name); docMembers(d1) != w || docMembers(d2) != w {
					t.Logf("pool %s: want %s; r1 %s at %d, r2 %s at %d", name, w, docMembers(d1), rev1, docMembers(d2), rev2)
				}
			}
		}
	}()
	waitFor(t, 20*time.Second, "every pool on both replicas and in the bucket", func() bool {
		for i := range npools {
			name := pool(i)
			w := expect(name)
			d1, rev1 := r1.PoolRing(name)
			d2, rev2 := r2.PoolRing(name)
			if docMembers(d1) != w || docMembers(d2) != w || rev1 != rev2 {
				return false
			}
		}
		return true
	})
	for i := range npools {
		name := pool(i)
		if d, _ := poolDoc(t, kv, name); docMembers(d) != expect(name) {
			t.Fatalf("pool %s: bucket has %s, want %s", name, docMembers(d), expect(name))
		}
	}
	t.Logf("KV writes %d+%d, conflicts %d+%d", r1.Stats().KVWrites, r2.Stats().KVWrites, r1.Stats().KVConflicts, r2.Stats().KVConflicts)
}

// TestPoolsRestart: a router started on a bucket that already holds pool
// documents serves every pool at once, before any node reports again.
func TestPoolsRestart(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	r1, err := router.New(connect(t, s.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	startOrFail(t, r1)
	for i := range 6 {
		health(t, nc, fmt.Sprintf("n%d", i), inPools(fmt.Sprintf("pool-%d", i%3)))
	}
	waitFor(t, 10*time.Second, "three pools", func() bool {
		return poolMembers(r1, "pool-0") == "n0,n3" && poolMembers(r1, "pool-1") == "n1,n4" && poolMembers(r1, "pool-2") == "n2,n5"
	})
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}

	r2 := startRouter(t, connect(t, s.ClientURL()), cfg)
	client, err := bus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"n0,n3", "n1,n4", "n2,n5"} {
		name := fmt.Sprintf("pool-%d", i)
		if got := poolMembers(r2, name); got != want {
			t.Fatalf("restarted router, pool %s: %q, want %q at once", name, got, want)
		}
		rep := poolReply(t, client, bus.Request{Pool: name, Key: "user-1"})
		if !strings.Contains(want, rep.Node) {
			t.Fatalf("pool %s answered %s", name, rep.Node)
		}
	}
}

// TestPoolsHostile: invalid pool names and lists are a 400 or a counted
// rejection, and the router keeps serving.
func TestPoolsHostile(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.MaxPools = 3 // default, ok and one more
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	health(t, nc, "good", inPools("ok"))
	waitFor(t, 5*time.Second, "the good node", func() bool { return poolMembers(r, "ok") == "good" })

	long := strings.Repeat("p", 65)
	for _, c := range []struct {
		name, body, want string
	}{
		{"dot", `{"key":"k","pool":"a.b"}`, "only [A-Za-z0-9_-]"},
		{"wildcard", `{"key":"k","pool":"*"}`, "only [A-Za-z0-9_-]"},
		{"gt", `{"key":"k","pool":">"}`, "only [A-Za-z0-9_-]"},
		{"space", `{"key":"k","pool":"a b"}`, "only [A-Za-z0-9_-]"},
		{"too long", `{"key":"k","pool":"` + long + `"}`, "1 to 64 characters"},
		{"wrong type", `{"key":"k","pool":7}`, "invalid JSON"},
		{"list", `{"key":"k","pool":["a"]}`, "invalid JSON"},
		{"ring dot", `{"pool":"a.b"}`, ""},
	} {
		t.Run("request/"+c.name, func(t *testing.T) {
			subject := bus.SubjectRequest
			if c.name == "ring dot" {
				subject, c.want = bus.SubjectRing, "only [A-Za-z0-9_-]"
			}
			m := req(t, nc, subject, []byte(c.body), nil)
			if code := m.Header.Get("Nats-Service-Error-Code"); code != "400" || !strings.Contains(m.Header.Get("Nats-Service-Error"), c.want) {
				t.Fatalf("%s: code %q message %q, want 400 with %q", c.body, code, m.Header.Get("Nats-Service-Error"), c.want)
			}
		})
	}

	seventeen := make([]string, 17)
	for i := range seventeen {
		seventeen[i] = fmt.Sprintf("p%d", i)
	}
	reports := []struct {
		name   string
		body   []byte
		reason string
	}{
		{"empty list", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": []string{}}), "invalid_pool"},
		{"17 pools", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": seventeen}), "invalid_pool"},
		{"duplicate", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": []string{"a", "a"}}), "invalid_pool"},
		{"dot", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": []string{"a.b"}}), "invalid_pool"},
		{"wildcard", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": []string{">"}}), "invalid_pool"},
		{"too long", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": []string{long}}), "invalid_pool"},
		{"wrong type", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": "a"}), "malformed"},
		{"msgpack wrong type", mp(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": []int{1}}), "malformed"},
		// default, ok, x1 and x2 would be 4 pools; max_pools is 3.
		{"past max_pools", mustJSON(map[string]any{"cpu_usage": 1, "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1, "pools": []string{"x1", "x2"}}), "too_many_pools"},
	}
	for _, c := range reports {
		t.Run("report/"+c.name, func(t *testing.T) {
			before := r.Stats()
			if err := nc.Publish(bus.HealthSubject("bad"), c.body); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "the rejection to be counted", func() bool {
				return r.Stats().ReportsRejected[c.reason] > before.ReportsRejected[c.reason]
			})
			after := r.Stats()
			if after.ReportsAccepted != before.ReportsAccepted {
				t.Fatalf("a bad report was accepted: %+v", after)
			}
		})
	}
	if len(r.Pools().Pools) != 2 {
		t.Fatalf("rejected reports created pools: %+v", r.Pools())
	}
	// Still serving, and nothing of the bad node anywhere.
	rep := jsonReply(t, nc, `{"key":"k","pool":"ok"}`)
	if rep.Node != "good" {
		t.Fatalf("after hostile input: %+v", rep)
	}
	for _, p := range r.Pools().Pools {
		if strings.Contains(poolMembers(r, p.Name), "bad") {
			t.Fatalf("pool %s has the bad node", p.Name)
		}
	}
}

// TestPoolsLegacyRouter: a router of the first release (service version
// 0.1.0) ignores pools and writes every reporting node into the default
// ring's document. A new router next to it detects it and keeps those nodes
// in the default ring too (its member keys and the document), instead of
// removing them on every write (a write loop); once the old router is
// gone, it removes them from both.
func TestPoolsLegacyRouter(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.Resync = 200 * time.Millisecond // probe for old routers often
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}

	// The old router: it answers $SRV.PING as version 0.1.0 and, like that
	// release's writer, puts every reporting node into the default ring
	// (compare-and-set on the revision it read, retrying on conflicts).
	oldConn := connect(t, s.ClientURL())
	svc, err := micro.AddService(oldConn, micro.Config{Name: bus.ServiceName, Version: "0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = svc.Stop() }()
	waitFor(t, 5*time.Second, "the new router to see the old one", func() bool { return r.Stats().LegacyRouters })

	health(t, nc, "plain", okHealth) // the default pool's key exists
	waitFor(t, 5*time.Second, "plain", func() bool { return strings.Contains(poolMembers(r, bus.DefaultPool), "plain") })
	oldWrite := func(ids ...string) {
		t.Helper()
		for {
			doc, rev := poolDocument(t, kv, bus.DefaultPool)
			for _, id := range ids {
				if !slices.ContainsFunc(doc.Nodes, func(n bus.RingNode) bool { return n.ID == id }) {
					doc.Nodes = append(doc.Nodes, bus.RingNode{ID: id, Weight: 1})
				}
			}
			data, err := doc.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Update(context.Background(), bus.RingKey, data, rev); err == nil {
				return
			} else if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				t.Fatal(err)
			}
		}
	}
	health(t, nc, "cache-1", inPools("cache"))
	waitFor(t, 5*time.Second, "cache-1 in its pool", func() bool { return poolMembers(r, "cache") == "cache-1" })
	oldWrite("cache-1")
	waitFor(t, 5*time.Second, "the old router's write", func() bool {
		d, _ := poolDocument(t, kv, bus.DefaultPool)
		return docMembers(d) == "cache-1,plain" && poolMembers(r, bus.DefaultPool) == "cache-1,plain"
	})
	// Heartbeats make the new router look again; it must leave cache-1
	// where the old router put it: the document's revision stays put.
	_, rev := poolDocument(t, kv, bus.DefaultPool)
	writes, accepted := r.Stats().KVWrites, r.Stats().ReportsAccepted
	for range 5 {
		health(t, nc, "cache-1", inPools("cache"))
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the heartbeats", func() bool { return r.Stats().ReportsAccepted >= accepted+5 })
	if _, now := poolDocument(t, kv, bus.DefaultPool); now != rev || poolMembers(r, bus.DefaultPool) != "cache-1,plain" {
		t.Fatalf("the new router rewrote the default ring while an old router shares the bucket (revision %d -> %d, members %q, writes %d -> %d)",
			rev, now, poolMembers(r, bus.DefaultPool), writes, r.Stats().KVWrites)
	}

	// The old router is upgraded (gone): cache-1 leaves the default ring.
	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the old router to be gone", func() bool { return !r.Stats().LegacyRouters })
	waitFor(t, 5*time.Second, "cache-1 out of the default ring and document", func() bool {
		d, _ := poolDocument(t, kv, bus.DefaultPool)
		return docMembers(d) == "plain" && poolMembers(r, bus.DefaultPool) == "plain"
	})
}

// TestNodesPaging: route.nodes pages cover every node exactly once, and a
// reply too large for the connection's max_payload becomes an error reply
// that says what to ask instead.
func TestNodesPaging(t *testing.T) {
	s := runServer(t, func(o *server.Options) { o.MaxPayload = 32 << 10 })
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	const n = 250
	for i := range n {
		health(t, nc, fmt.Sprintf("node-%03d", i), okHealth)
	}
	waitFor(t, 10*time.Second, "every node", func() bool {
		d, _ := r.Ring()
		return len(d.Nodes) == n
	})
	client, err := bus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	seen := map[string]int{}
	pages := 0
	for offset := 0; ; pages++ {
		page, err := client.NodesPage(ctx, "", offset, 60)
		if err != nil {
			t.Fatal(err)
		}
		if page.Total != n || page.Offset != offset {
			t.Fatalf("page at %d: total %d offset %d", offset, page.Total, page.Offset)
		}
		for _, nd := range page.Nodes {
			seen[nd.ID]++
		}
		if page.Next == 0 {
			break
		}
		offset = page.Next
	}
	if pages != 4 || len(seen) != n {
		t.Fatalf("%d pages, %d distinct nodes; want 5 pages of %d nodes", pages+1, len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s listed %d times", id, c)
		}
	}

	// 250 nodes at about 230 bytes each do not fit in 32 KiB.
	m := req(t, nc, bus.SubjectNodes, []byte(`{"limit":250}`), nil)
	if code, msg := m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error"); code != "400" || !strings.Contains(msg, "max_payload") || !strings.Contains(msg, "limit") {
		t.Fatalf("oversized route.nodes: code %q message %q", code, msg)
	}
	// A batch whose reply does not fit: ask for fewer keys.
	keys := make([]string, 500) // a 21 KB request, a reply of about 50 KB
	for i := range keys {
		keys[i] = fmt.Sprintf("a-long-key-to-make-the-reply-large-%04d", i)
	}
	_, err = client.Select(ctx, bus.Request{Keys: keys, Count: 3})
	if !errors.Is(err, bus.ErrBadRequest) || !strings.Contains(err.Error(), "fewer keys") {
		t.Fatalf("oversized batch: %v", err)
	}
	if st := r.Stats(); st.OversizeReplies != 2 {
		t.Fatalf("oversize replies counted %d, want 2", st.OversizeReplies)
	}
	// Client.Nodes halves its page (1000, 500, 250 refused) until one fits.
	all, err := client.Nodes(ctx, "")
	if err != nil || len(all.Nodes) != n {
		t.Fatalf("Client.Nodes: %d nodes, %v", len(all.Nodes), err)
	}
	if st := r.Stats(); st.OversizeReplies != 5 {
		t.Fatalf("oversize replies counted %d, want 5", st.OversizeReplies)
	}
}

// TestOversizeDocument: a whole ring document that would exceed the
// server's max_payload is not written (the router counts it); the member
// keys take every join and leave, the document keeps the last membership
// that fitted for readers of earlier releases, and route.ring, too large
// for a reply, says where to read the members instead.
func TestOversizeDocument(t *testing.T) {
	s := runServer(t, func(o *server.Options) { o.MaxPayload = 8 << 10 })
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	js, _ := jetstream.New(nc)
	// About 30 bytes a member: 200 fit in 8 KiB, 400 do not.
	for i := range 200 {
		health(t, nc, fmt.Sprintf("node-%03d", i), okHealth)
	}
	waitFor(t, 10*time.Second, "200 members", func() bool { d, _ := r.Ring(); return len(d.Nodes) == 200 })
	// The document follows the member keys (at most every 100 ms).
	waitFor(t, 10*time.Second, "200 members in the document", func() bool {
		got, _ := bucketDocument(js)
		return strings.Count(got, ",") == 199
	})
	for i := 200; i < 400; i++ {
		health(t, nc, fmt.Sprintf("node-%03d", i), okHealth)
	}
	waitFor(t, 10*time.Second, "400 members and the oversize document counted", func() bool {
		d, _ := r.Ring()
		return len(d.Nodes) == 400 && r.Stats().OversizeDocuments > 0
	})
	if got, _ := bucketMembers(js); strings.Count(got, ",") != 399 {
		t.Fatalf("member keys hold %d members, want 400", strings.Count(got, ",")+1)
	}
	old, _ := bucketDocument(js)
	if n := strings.Count(old, ",") + 1; n < 200 || n >= 400 {
		t.Fatalf("document has %d members: want the last that fitted, at least the first 200", n)
	}
	// A leave reaches the keys.
	h := okHealth
	h.Status = bus.StatusLeaving
	health(t, nc, "node-000", h)
	waitFor(t, 10*time.Second, "node-000 to leave", func() bool {
		got, _ := bucketMembers(js)
		d, _ := r.Ring()
		return len(d.Nodes) == 399 && !strings.HasPrefix(got, "node-000,")
	})
	m := req(t, nc, bus.SubjectRing, nil, nil)
	if code, msg := m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error"); code != "400" || !strings.Contains(msg, "nats kv watch natsroute 'members.default.*'") {
		t.Fatalf("route.ring: %s %s", code, msg)
	}
}
