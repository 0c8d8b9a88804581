package embedded_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// shedOf returns a member's shed in a document.
func shedOf(d bus.RingDocument, id string) float64 {
	for _, n := range d.Nodes {
		if n.ID == id {
			return n.Shed
		}
	}
	return 0
}

// TestLoadAwareRing: three routers with --balance-factor 1.25 and two
// RingCaches. One of ten nodes reports four times the others' connections
// (its reported load falls as it sheds, as real connections would): the
// document reaches format 2, and routers and caches give identical answers
// on 10,000 keys at one revision. When the hot node's load goes away, its
// shed falls step by step and the document returns to format 1.
func TestLoadAwareRing(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.BalanceFactor = 1.25
	cfg.ShedInterval = 20 * time.Millisecond
	routers := []*router.Router{
		startRouter(t, connect(t, s.ClientURL()), cfg),
		startRouter(t, connect(t, s.ClientURL()), cfg),
		startRouter(t, connect(t, s.ClientURL()), cfg),
	}
	r := routers[0]
	js, _ := jetstream.New(nc)
	ctx := ctxT(t)
	var caches []*bus.RingCache
	for range 2 {
		c, err := bus.WatchRing(ctx, js, "", bus.WithRingCacheLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		caches = append(caches, c)
	}

	// Ten nodes report every 10 ms. node-0's load is hotLoad × (1 − its
	// shed in the document): shedding keys sheds connections.
	var hotLoad atomic.Int64
	hotLoad.Store(400)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			d, _ := r.Ring()
			for i := range 10 {
				h := okHealth
				h.ActiveConnections = 100
				if i == 0 {
					h.ActiveConnections = int64(math.Round(float64(hotLoad.Load()) * (1 - shedOf(d, "node-0"))))
				}
				health(t, nc, fmt.Sprintf("node-%d", i), h)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })

	// Settled: every router and cache at one revision, which has not moved
	// for a while.
	var lastRev uint64
	var since time.Time
	settled := func(want func(bus.RingDocument) bool) func() bool {
		return func() bool {
			d, rev := r.Ring()
			if !want(d) {
				return false
			}
			for _, x := range routers[1:] {
				if x.Revision() != rev {
					return false
				}
			}
			for _, c := range caches {
				if c.Revision() != rev {
					return false
				}
			}
			if rev != lastRev {
				lastRev, since = rev, time.Now()
			}
			return time.Since(since) > 300*time.Millisecond
		}
	}
	waitFor(t, 20*time.Second, "node-0 to shed, settled", settled(func(d bus.RingDocument) bool {
		return d.Format == bus.DocumentFormatShed && shedOf(d, "node-0") > 0 && len(d.Nodes) == 10
	}))
	doc, rev := r.Ring()
	for _, n := range doc.Nodes {
		if n.ID != "node-0" && n.Shed != 0 {
			t.Fatalf("%s sheds %v; only node-0 is overloaded", n.ID, n.Shed)
		}
	}
	t.Logf("node-0 sheds %v at revision %d", shedOf(doc, "node-0"), rev)

	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	client, err := bus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	independent, err := doc.Ring()
	if err != nil {
		t.Fatal(err)
	}
	plain := doc
	plain.Nodes = slices.Clone(doc.Nodes)
	for i := range plain.Nodes {
		plain.Nodes[i].Shed = 0
	}
	plainRing, err := plain.Ring()
	if err != nil {
		t.Fatal(err)
	}
	moved, shedKey := 0, ""
	for off := 0; off < len(keys); off += 1000 {
		rep, err := client.PickBatch(ctx, keys[off:off+1000])
		if err != nil {
			t.Fatal(err)
		}
		for i, res := range rep {
			k := keys[off+i]
			ind, _ := independent.Get(k)
			was, _ := plainRing.Get(k)
			if res.Node != ind {
				t.Fatalf("key %s: a router says %s, the document's ring %s", k, res.Node, ind)
			}
			for _, c := range caches {
				if got, _ := c.Get(k); got != ind {
					t.Fatalf("key %s: cache %s, document %s", k, got, ind)
				}
			}
			if res.Node != was {
				moved++
				if was != "node-0" {
					t.Fatalf("key %s moved from %s, which does not shed", k, was)
				}
				shedKey = k
			}
		}
	}
	if moved == 0 {
		t.Fatal("no key moved off node-0")
	}
	if r.Revision() != rev {
		t.Fatalf("the ring moved during the comparison (%d -> %d)", rev, r.Revision())
	}
	rep, err := client.Select(ctx, bus.Request{Key: shedKey, Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	if e := rep.Explanation; e == nil || len(e.Shed) != 1 || e.Shed[0].ID != "node-0" || e.Shed[0].Fraction != shedOf(doc, "node-0") {
		t.Fatalf("explain of a shed key: %+v", rep.Explanation)
	}
	t.Logf("%d of %d keys moved off node-0", moved, len(keys))

	// node-0's clients go away: its shed falls gradually, then format 1.
	hotLoad.Store(5)
	waitFor(t, 30*time.Second, "node-0 to stop shedding, settled", settled(func(d bus.RingDocument) bool {
		return d.Format == bus.DocumentFormat && shedOf(d, "node-0") == 0
	}))
	for _, c := range caches {
		if got, _ := c.Get(shedKey); got != "node-0" {
			t.Fatalf("after shedding stopped, %s went to %s, want its plain owner node-0", shedKey, got)
		}
	}
}

// TestSpreadFavoursHealthy: with spread k, every answer is among the key's
// first k owners, nodes are the owners in ring order, and picks follow
// ResourceAware's scores (a chi-square test against the score weights, with
// the router's random source seeded).
func TestSpreadFavoursHealthy(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.Balancer.Rand = rand.NewPCG(1, 2)
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	cpus := []float64{10, 40, 70, 95, 20, 55}
	for i, cpu := range cpus {
		h := okHealth
		h.CPUUsage = cpu
		health(t, nc, fmt.Sprintf("n%d", i), h)
	}
	waitFor(t, 10*time.Second, "six members", func() bool { d, _ := r.Ring(); return len(d.Nodes) == 6 })
	waitFor(t, 10*time.Second, "six reports", func() bool { return r.Stats().ReportsAccepted >= 6 })
	client, err := bus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const key, k, draws = "hot-key", 3, 6000
	d, _ := r.Ring()
	rg, err := d.Ring()
	if err != nil {
		t.Fatal(err)
	}
	owners, _ := rg.GetN(key, k)
	score := map[string]float64{}
	eligible := map[string]bool{}
	for _, n := range r.Nodes().Nodes {
		score[n.ID], eligible[n.ID] = n.Score, n.Eligible
	}
	counts := map[string]int{}
	for range draws {
		pick, nodes, err := client.PickSpread(ctx, key, k)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(nodes, owners) {
			t.Fatalf("nodes %v, want the first %d owners %v in ring order", nodes, k, owners)
		}
		counts[pick]++
	}
	// Expected shares: score-weighted among the eligible owners (n3 at
	// 95 % CPU is excluded if it is an owner).
	total := 0.0
	for _, o := range owners {
		if eligible[o] {
			total += score[o]
		}
	}
	chi := 0.0
	for _, o := range owners {
		want := 0.0
		if eligible[o] {
			want = draws * score[o] / total
		}
		if want == 0 {
			if counts[o] != 0 {
				t.Fatalf("excluded owner %s got %d picks", o, counts[o])
			}
			continue
		}
		chi += (float64(counts[o]) - want) * (float64(counts[o]) - want) / want
	}
	for id := range counts {
		if !slices.Contains(owners, id) {
			t.Fatalf("picked %s, not among the owners %v", id, owners)
		}
	}
	t.Logf("owners %v, picks %v, scores %v, chi-square %.2f", owners, counts, score, chi)
	if chi > 13.82 { // p = 0.001 with at most 2 degrees of freedom
		t.Fatalf("picks %v do not follow the scores (chi-square %.2f > 13.82)", counts, chi)
	}
	// And a plain pick without spread is the ring owner every time.
	if rep, err := client.Pick(ctx, key); err != nil || rep != owners[0] {
		t.Fatalf("plain pick %s %v, want %s", rep, err, owners[0])
	}
}

// TestLoadAwareWaitsForOldRouter: while a router of the previous release
// (which refuses format 2) shares the bucket, no shed is published; once it
// is gone, the overloaded node sheds.
func TestLoadAwareWaitsForOldRouter(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.BalanceFactor = 1.25
	cfg.ShedInterval = 20 * time.Millisecond
	cfg.Resync = 200 * time.Millisecond
	old, err := micro.AddService(connect(t, s.ClientURL()), micro.Config{Name: bus.ServiceName, Version: "0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	waitFor(t, 5*time.Second, "the old router to be seen", func() bool { return r.Stats().LegacyRouters })
	report := func() {
		for i := range 5 {
			h := okHealth
			h.ActiveConnections = 100
			if i == 0 {
				h.ActiveConnections = 1000
			}
			health(t, nc, fmt.Sprintf("node-%d", i), h)
		}
	}
	report()
	waitFor(t, 5*time.Second, "five members", func() bool { d, _ := r.Ring(); return len(d.Nodes) == 5 })
	// 40 rounds of reports, each waited for: dozens of shed intervals pass.
	for round := range 40 {
		before := r.Stats().ReportsAccepted
		report()
		waitFor(t, 5*time.Second, "a round of reports", func() bool { return r.Stats().ReportsAccepted >= before+5 })
		if d, _ := r.Ring(); d.Format != bus.DocumentFormat {
			t.Fatalf("round %d: format %d published while an old router shares the bucket", round, d.Format)
		}
	}
	if err := old.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "node-0 to shed once the old router is gone", func() bool {
		report()
		d, _ := r.Ring()
		return d.Format == bus.DocumentFormatShed && shedOf(d, "node-0") > 0
	})
}

// TestShedOffRemovesSheds: a router with --balance-factor off that finds
// sheds in the document (written by a router that had it on) removes them
// and writes format 1, without waiting for the members to report again.
func TestShedOffRemovesSheds(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	kv := oldBucket(t, nc, `{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":0.3},{"id":"b","weight":1}]}`)
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t)) // BalanceFactor 0: off
	waitFor(t, 5*time.Second, "the router to write format 1 without the shed", func() bool {
		d, _ := r.Ring()
		return d.Format == bus.DocumentFormat && members(r) == "a,b" && !slices.ContainsFunc(d.Nodes, func(n bus.RingNode) bool { return n.Shed != 0 })
	})
	// The document follows the member keys (at most every 100 ms).
	var last []byte
	ctx := ctxT(t)
	defer func() {
		if t.Failed() {
			t.Logf("the document holds %s", last)
		}
	}()
	waitFor(t, 5*time.Second, "the document in format 1 without the shed", func() bool {
		e, err := kv.Get(ctx, bus.RingKey)
		if err != nil {
			return false
		}
		last = e.Value()
		d, err := bus.DecodeRingDocument(last)
		return err == nil && d.Format == bus.DocumentFormat && len(d.Nodes) == 2 && d.Nodes[0].Shed == 0
	})
}

// TestShedGivesBack: the closed loop of issue 21. Ten members report every
// second what their own keys bring them (base load × (1 − shed)); two of
// them are hot (5,000 connections against 100) and shed. When the hot spot
// ends, the sheds fall back to 0 and the document returns to format 1
// within 90 s, and on the way every router and the RingCache agree at
// every revision they are seen at.
func TestShedGivesBack(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.BalanceFactor = 1.25
	routers := []*router.Router{
		startRouter(t, connect(t, s.ClientURL()), cfg),
		startRouter(t, connect(t, s.ClientURL()), cfg),
	}
	r := routers[0]
	js, _ := jetstream.New(nc)
	cache, err := bus.WatchRing(ctxT(t), js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })

	var hot atomic.Bool
	hot.Store(true)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			d, _ := r.Ring()
			for i := range 10 {
				base := 100.0
				if i < 2 && hot.Load() {
					base = 5000
				}
				id := fmt.Sprintf("node-%d", i)
				h := okHealth
				h.ActiveConnections = int64(math.Round(base * (1 - shedOf(d, id))))
				health(t, nc, id, h)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })

	// Agreement: whoever is seen at a revision holds the same document.
	seen := map[uint64]string{}
	agree := func() {
		t.Helper()
		check := func(who string, d bus.RingDocument, rev uint64) {
			enc, err := d.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if prev, ok := seen[rev]; ok && prev != string(enc) {
				t.Fatalf("%s at revision %d holds %s; another holds %s", who, rev, enc, prev)
			}
			seen[rev] = string(enc)
		}
		for i, x := range routers {
			d, rev := x.Ring()
			check(fmt.Sprintf("router %d", i), d, rev)
		}
		d, rev := cache.Ring()
		check("the cache", d, rev)
	}
	waitFor(t, 90*time.Second, "both hot members to shed half their keys or more", func() bool {
		agree()
		d, _ := r.Ring()
		return d.Format == bus.DocumentFormatShed && shedOf(d, "node-0") >= 0.5 && shedOf(d, "node-1") >= 0.5
	})
	st := r.Nodes()
	for _, n := range st.Nodes {
		if n.ID == "node-0" && !strings.HasPrefix(n.ShedState, "shed ") {
			t.Fatalf("route.nodes: node-0 sheds %v but its shed_state is %q", n.Shed, n.ShedState)
		}
	}
	d, _ := r.Ring()
	t.Logf("hot: node-0 sheds %v, node-1 %v", shedOf(d, "node-0"), shedOf(d, "node-1"))
	hot.Store(false)
	ended := time.Now()
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		agree()
		if d, _ := r.Ring(); d.Format == bus.DocumentFormat {
			break
		}
		if time.Now().After(deadline) {
			var states []string
			for _, n := range r.Nodes().Nodes {
				if n.Shed > 0 {
					states = append(states, fmt.Sprintf("%s (%d connections): %s", n.ID, n.Connections, n.ShedState))
				}
			}
			t.Fatalf("still format 2 90 s after the hot spot ended: %s", strings.Join(states, "; "))
		}
	}
	t.Logf("format 1 again %v after the hot spot ended; %d revisions checked", time.Since(ended).Round(time.Second), len(seen))
	waitFor(t, 10*time.Second, "the other router and the cache at format 1", func() bool {
		d1, rev := routers[1].Ring()
		dc, crev := cache.Ring()
		return d1.Format == bus.DocumentFormat && dc.Format == bus.DocumentFormat && rev == crev
	})
}
