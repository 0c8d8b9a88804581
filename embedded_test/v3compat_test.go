package embedded_test

// Compatibility with the previous release (service version 0.2.0: pools and
// ring document format 2, no v3 keys). Its routers and RingCaches read and
// wrote only the whole document under ring / ring.<pool>; while the
// compatibility setting is on, routers of this release keep writing it, so
// both releases answer alike.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/natsroute/natsroute/ring"
)

// previousVersion is the service version of the release before the v3
// keys: it knows pools and format 2, and reads only the document.
const previousVersion = "0.2.0"

// docReader follows a pool's ring as the previous release's RingCache (and
// router) did: a KV watch on the document key alone, a ring built anew
// from each document, a refused document leaving the last good ring in
// place (git show 5ee6e75^:bus/ringcache.go: a follow.Follower on
// RingKey with the document codec).
type docReader struct {
	mu      sync.Mutex // guards what follows
	doc     bus.RingDocument
	rev     uint64
	rg      *ring.Ring
	seen    []string // docMembers of every document applied
	refused error    // why the last refused document was refused
}

func startDocReader(t *testing.T, kv jetstream.KeyValue, key string) *docReader {
	t.Helper()
	d := &docReader{doc: bus.NewRingDocument(ring.DefaultVirtualNodes)}
	watchEntries(t, kv, []string{key}, d.apply)
	return d
}

// apply takes a watched entry of the document key.
func (d *docReader) apply(e jetstream.KeyValueEntry) {
	if e == nil || e.Operation() != jetstream.KeyValuePut {
		return
	}
	doc, err := bus.DecodeRingDocument(e.Value())
	var rg *ring.Ring
	if err == nil {
		rg, err = doc.Ring()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.refused = fmt.Errorf("revision %d: %w", e.Revision(), err) // keep the last good ring
		return
	}
	d.doc, d.rev, d.rg = doc, e.Revision(), rg
	d.seen = append(d.seen, docMembers(doc))
}

// current returns the document, its revision and its ring (nil before the
// first document).
func (d *docReader) current() (bus.RingDocument, uint64, *ring.Ring) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.doc, d.rev, d.rg
}

// saw reports whether a document with these members (as docMembers
// renders them) was applied.
func (d *docReader) saw(members string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Contains(d.seen, members)
}

// refusal says why the last refused document was refused, nil if none was.
func (d *docReader) refusal() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refused
}

// answer is the reader's answer for keys.
func (d *docReader) answer(who string, keys []string) answer {
	doc, rev, rg := d.current()
	get := func(string) (string, error) { return "", ring.ErrEmpty }
	if rg != nil {
		get = rg.Get
	}
	return answer{who: who, rev: rev, hasMembers: true, members: fmt.Sprint(doc.Members()), owners: ownersOf(keys, get)}
}

// oldRouter is a router of the previous release, as far as the bucket and
// its callers can tell: it answers $SRV.PING as version 0.2.0, answers
// route.request (in a queue group given to it) from the document it follows,
// and on every report makes the document say what it heard (members with
// their reported weight and status, leavers out, members it never heard
// from kept) with compare-and-set on the revision it read, re-reading on a
// conflict: that release's writer (bus/router/pool_writer.go's desired and
// flush, default pool only, no expiry).
type oldRouter struct {
	kv   jetstream.KeyValue
	key  string
	view *docReader

	heardMu sync.Mutex
	heard   map[string]*bus.RingNode // nil: said it leaves

	wake   chan struct{}
	writes atomic.Int64 // documents written
}

func startOldRouter(t *testing.T, nc *nats.Conn, kv jetstream.KeyValue, queue string) *oldRouter {
	t.Helper()
	o := &oldRouter{kv: kv, key: bus.RingKey, view: startDocReader(t, kv, bus.RingKey), heard: map[string]*bus.RingNode{}, wake: make(chan struct{}, 1)}
	svc, err := micro.AddService(nc, micro.Config{Name: bus.ServiceName, Version: previousVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	err = svc.AddEndpoint("route", micro.HandlerFunc(o.route), micro.WithEndpointSubject(bus.SubjectRequest), micro.WithEndpointQueueGroup(queue))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(bus.SubjectHealthAll, o.report)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-o.wake:
				o.flush(ctx)
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return o
}

// route answers a batch of keys from the document the router follows.
func (o *oldRouter) route(req micro.Request) {
	enc := bus.DetectEncoding(req.Data(), nats.Header(req.Headers()))
	var q bus.Request
	if err := enc.Unmarshal(req.Data(), &q); err != nil || len(q.Keys) == 0 {
		_ = req.Error("400", "the test's old router answers batches only", nil)
		return
	}
	_, rev, rg := o.view.current()
	if rg == nil {
		_ = req.Error("503", "no members", nil)
		return
	}
	rep := bus.Reply{Strategy: bus.StrategyConsistentHash, Revision: rev}
	for _, k := range q.Keys {
		n, _ := rg.Get(k)
		rep.Results = append(rep.Results, bus.Result{Key: k, Node: n})
	}
	data, err := enc.Marshal(rep)
	if err != nil {
		_ = req.Error("500", err.Error(), nil)
		return
	}
	_ = req.Respond(data)
}

// report notes what a node said and wakes the writer (a heartbeat too:
// the writer looks again, and writes only if the document differs).
func (o *oldRouter) report(m *nats.Msg) {
	id := strings.TrimPrefix(m.Subject, bus.HealthPrefix)
	h, err := bus.DecodeHealth(id, m.Data, m.Header)
	if err != nil {
		return
	}
	var n *bus.RingNode
	if h.Status != bus.StatusLeaving {
		n = &bus.RingNode{ID: id, Weight: h.Weight}
		if n.Weight == 0 {
			n.Weight = 1
		}
		if h.Status == bus.StatusDraining {
			n.Status = bus.StatusDraining
		}
	}
	o.heardMu.Lock()
	o.heard[id] = n
	o.heardMu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// desired is base with what the router heard applied to it.
func (o *oldRouter) desired(base bus.RingDocument) bus.RingDocument {
	o.heardMu.Lock()
	defer o.heardMu.Unlock()
	out := base
	out.Nodes = nil
	for _, n := range base.Nodes {
		if h, known := o.heard[n.ID]; !known {
			out.Nodes = append(out.Nodes, n)
		} else if h != nil {
			out.Nodes = append(out.Nodes, *h)
		}
	}
	for id, h := range o.heard {
		if _, in := base.Node(id); h != nil && !in {
			out.Nodes = append(out.Nodes, *h)
		}
	}
	slices.SortFunc(out.Nodes, cmpRingNodes)
	return out.WithFormat()
}

func cmpRingNodes(a, b bus.RingNode) int { return strings.Compare(a.ID, b.ID) }

// flush makes the document say what the router heard, with
// compare-and-set; a conflict re-reads it.
func (o *oldRouter) flush(ctx context.Context) {
	for range 50 {
		base, rev := bus.NewRingDocument(ring.DefaultVirtualNodes), uint64(0)
		e, err := o.kv.Get(ctx, o.key)
		switch {
		case err == nil:
			if base, err = bus.DecodeRingDocument(e.Value()); err != nil {
				return // refused: the old router never overwrites what it cannot read
			}
			rev = e.Revision()
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return // closing
		}
		want := o.desired(base)
		if rev != 0 && want.Equal(base) {
			return
		}
		data, err := want.Encode()
		if err != nil {
			return
		}
		if rev == 0 {
			_, err = o.kv.Create(ctx, o.key, data)
		} else {
			_, err = o.kv.Update(ctx, o.key, data, rev)
		}
		if err == nil {
			o.writes.Add(1)
			return
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return
		}
	}
}

// logBucketOnFailure keeps every entry written to the bucket from now on
// and logs them if the test fails: which writer went where, in stream
// order, is what a disagreement needs to be explained.
func logBucketOnFailure(t *testing.T, kv jetstream.KeyValue) {
	t.Helper()
	var mu sync.Mutex
	var entries []string
	watchEntries(t, kv, []string{">"}, func(e jetstream.KeyValueEntry) {
		if e == nil {
			return
		}
		mu.Lock()
		entries = append(entries, fmt.Sprintf("%d %s %s %s", e.Revision(), e.Operation(), e.Key(), e.Value()))
		mu.Unlock()
	})
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		t.Logf("the bucket's entries:\n%s", strings.Join(entries, "\n"))
	})
}

// sameOwners fails the test unless every answer gives every key the owner
// the first gives it (whatever their revisions).
func sameOwners(t *testing.T, step string, keys []string, as []answer) {
	t.Helper()
	for _, a := range as[1:] {
		if diff, i := ownersDiffer(a, as[0]); diff > 0 {
			t.Fatalf("%s: %s (revision %d) gives %q to %q, %s (revision %d) gives it to %q (%d of %d keys differ)",
				step, a.who, a.rev, keys[i], a.owners[i], as[0].who, as[0].rev, as[0].owners[i], diff, len(keys))
		}
	}
}

// TestV3LegacyDocumentOn: with the compatibility setting on (the default),
// two routers of this release beside a router of the previous release
// (which writes the document too, with compare-and-set), and two RingCaches
// of this release beside one of the previous release. After each seeded
// round of joins, leaves, weight changes and draining has settled, each of
// them holds the members the nodes reported, the new routers and caches at
// one v3 revision, the old router and old cache at the document's, and all
// of them give the same owner to each of 10,000 keys (the routers over
// route.request, each in a queue group of its own so that one request gets
// every router's answer).
func TestV3LegacyDocumentOn(t *testing.T) {
	rng := rand.New(rand.NewPCG(22, 2))
	keys := fixedKeys(10_000)
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	// Before the upgrade: the previous release's bucket, router and cache;
	// the old router writes the first document.
	kv := oldBucket(t, nc, "")
	oldCache := startDocReader(t, kv, bus.RingKey)
	old := startOldRouter(t, connect(t, s.ClientURL()), kv, "old")
	fleet := startChurnFleet(t, connect(t, s.ClientURL()), nil)
	ids := make([]string, 12)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%02d", i)
	}
	for _, id := range ids[:6] {
		fleet.set(t, id, fleetNode{weight: 1})
	}
	waitFor(t, 10*time.Second, "the old router's document with six members", func() bool {
		d, _, _ := oldCache.current()
		return len(d.Nodes) == 6
	})
	// Routers first (README's upgrade order), then caches; the old ones stay.
	var routers []*router.Router
	for i := range 2 {
		cfg := testConfig(t)
		cfg.QueueGroup = fmt.Sprintf("new-%d", i)
		cfg.Limits.MaxBatch = len(keys)
		routers = append(routers, startRouter(t, connect(t, s.ClientURL()), cfg))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	caches := []*bus.RingCache{watchCache(t, js), watchCache(t, js)}
	logBucketOnFailure(t, kv)
	for round := range 6 {
		did := []string{"routers and caches upgraded"}
		if round > 0 {
			did = nil
			for range 1 + rng.IntN(3) {
				if d := fleet.change(t, rng, rng.IntN(membershipOps), ids, 3); d != "" {
					did = append(did, d)
				}
			}
		}
		want := fleet.document()
		step := fmt.Sprintf("round %d (%s)", round+1, strings.Join(did, ", "))
		var rev, docRev uint64
		waitFor(t, 10*time.Second, step+": every router and cache with the reported members", func() bool {
			var d bus.RingDocument
			if d, rev = routers[0].Ring(); !slices.Equal(d.Nodes, want.Nodes) {
				return false
			}
			if d, r := routers[1].Ring(); r != rev || !d.Equal(want) {
				return false
			}
			for _, c := range caches {
				if d, r := c.Ring(); r != rev || !d.Equal(want) || !c.V3() {
					return false
				}
			}
			_, docRev = poolDocument(t, kv, bus.DefaultPool)
			for _, v := range []*docReader{oldCache, old.view} {
				if d, r, _ := v.current(); r != docRev || !d.Equal(want) {
					return false
				}
			}
			return true
		})
		as := requestAnswers(t, nc, keys, 3)
		atRev := 0
		for _, a := range as {
			switch a.rev {
			case rev:
				atRev++
			case docRev:
			default:
				t.Fatalf("%s: %s at revision %d; the new routers are at %d, the document at %d", step, a.who, a.rev, rev, docRev)
			}
		}
		if atRev != 2 {
			t.Fatalf("%s: %d route.request replies at the v3 revision %d, want the new routers' 2 (the document is at %d)", step, atRev, rev, docRev)
		}
		for i, c := range caches {
			a, ok := cacheAnswer(fmt.Sprintf("cache %d", i), c, keys)
			if !ok {
				t.Fatalf("%s: cache %d moved or left v3", step, i)
			}
			as = append(as, a)
		}
		as = append(as, oldCache.answer("the old cache", keys))
		sameOwners(t, step, keys, as)
		t.Logf("%s: %s at v3 revision %d, document revision %d", step, docMembers(want), rev, docRev)
	}
	t.Logf("the old router wrote the document %d times", old.writes.Load())
}

// TestV3LegacyDocumentOff: once every reader is upgraded and the
// compatibility setting goes off (NoLegacyDocument), routers stop writing
// the document: the ring key keeps the revision the last router with the
// setting on left it at while members join, leave and change, and a
// RingCache of the previous release stays there with it (what README says
// breaks). RingCaches of this release follow the member keys, at the
// routers' revision, and answer as the routers on 1,000 keys.
func TestV3LegacyDocumentOff(t *testing.T) {
	rng := rand.New(rand.NewPCG(22, 3))
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	fleet := startChurnFleet(t, connect(t, s.ClientURL()), nil)
	ids := make([]string, 10)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%02d", i)
	}
	for _, id := range ids[:5] {
		fleet.set(t, id, fleetNode{weight: 1})
	}
	// Upgraded, the setting still on: the document is written.
	on := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	kv := bucket(t, nc)
	oldCache := startDocReader(t, kv, bus.RingKey)
	waitFor(t, 10*time.Second, "the document with five members", func() bool {
		d, _, _ := oldCache.current()
		return d.Equal(fleet.document())
	})
	// The setting goes off: the routers restart without it.
	cfg := testConfig(t)
	cfg.NoLegacyDocument = true
	routers := []*router.Router{startRouter(t, connect(t, s.ClientURL()), cfg), startRouter(t, connect(t, s.ClientURL()), cfg)}
	if err := on.Close(); err != nil {
		t.Fatal(err)
	}
	last, docRev := poolDocument(t, kv, bus.DefaultPool)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	caches := []*bus.RingCache{watchCache(t, js), watchCache(t, js)}
	moved := 0
	for round := range 5 {
		var did []string
		for range 1 + rng.IntN(3) {
			if d := fleet.change(t, rng, rng.IntN(membershipOps), ids, 3); d != "" {
				did = append(did, d)
			}
		}
		want := fleet.document()
		step := fmt.Sprintf("round %d (%s)", round+1, strings.Join(did, ", "))
		waitFor(t, 10*time.Second, step+": routers and caches with the reported members at one revision", func() bool {
			_, rev := routers[0].Ring()
			for _, r := range routers {
				if d, x := r.Ring(); x != rev || !d.Equal(want) {
					return false
				}
			}
			for _, c := range caches {
				if d, x := c.Ring(); x != rev || !d.Equal(want) || !c.V3() {
					return false
				}
			}
			return true
		})
		cachesAgree(t, step, nc, "", caches...)
		if d, rev := poolDocument(t, kv, bus.DefaultPool); rev != docRev || !d.Equal(last) {
			t.Fatalf("%s: the document was written with the setting off (revision %d -> %d: %s)", step, docRev, rev, docMembers(d))
		}
		if _, rev, _ := oldCache.current(); rev != docRev {
			t.Fatalf("%s: the previous release's cache at revision %d, want it left at %d", step, rev, docRev)
		}
		if !want.Equal(last) {
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("the members never differed from the last document: the test showed nothing")
	}
	t.Logf("the document stayed at revision %d through %d membership changes; a cache of the previous release stayed with it", docRev, moved)
}
