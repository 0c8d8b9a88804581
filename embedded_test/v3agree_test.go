package embedded_test

// Agreement (issue 22, "Must show"): three routers, three RingCaches and the
// independent v3 reader of v3read_test.go give every one of 10,000 keys the
// same owner at every pool revision they are seen at, and meet at common
// revisions, while members join, leave, change weight, drain, shed load and
// are ejected on callers' feedback.

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/natsroute/natsroute/ring"
)

// answer is what one router or reader answered at one pool revision: its
// members when the answer shows them, and the owner of each test key ("" if
// the ring was empty).
type answer struct {
	who        string
	rev        uint64
	hasMembers bool
	members    string
	owners     []string
}

// agreement keeps, for each revision, the first answer seen at it and who
// answered there, and fails the test at the first answer that differs from
// an earlier one at the same revision.
type agreement struct {
	members map[uint64]answer
	owners  map[uint64]answer
	who     map[uint64]map[string]bool
}

func newAgreement() *agreement {
	return &agreement{members: map[uint64]answer{}, owners: map[uint64]answer{}, who: map[uint64]map[string]bool{}}
}

func (a *agreement) add(t *testing.T, keys []string, x answer) {
	t.Helper()
	if a.who[x.rev] == nil {
		a.who[x.rev] = map[string]bool{}
	}
	a.who[x.rev][x.who] = true
	if x.hasMembers {
		if p, ok := a.members[x.rev]; !ok {
			a.members[x.rev] = x
		} else if p.members != x.members {
			t.Fatalf("revision %d: %s holds members %s; %s holds %s", x.rev, x.who, x.members, p.who, p.members)
		}
	}
	p, ok := a.owners[x.rev]
	if !ok {
		a.owners[x.rev] = x
		return
	}
	if diff, first := ownersDiffer(x, p); diff > 0 {
		t.Fatalf("revision %d: %s gives %q to %q, %s gives it to %q (%d of %d keys differ; members %s)",
			x.rev, x.who, keys[first], x.owners[first], p.who, p.owners[first], diff, len(keys), a.members[x.rev].members)
	}
}

// ownersDiffer returns on how many keys two answers name different owners,
// and the index of the first such key.
func ownersDiffer(a, b answer) (n, first int) {
	first = -1
	for i := range a.owners {
		if a.owners[i] != b.owners[i] {
			n++
			if first < 0 {
				first = i
			}
		}
	}
	return n, first
}

// ownersOf looks every key up with get.
func ownersOf(keys []string, get func(string) (string, error)) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i], _ = get(k) // an empty ring answers "" for every key
	}
	return out
}

// replies sends q (msgpack) to subject and decodes n replies: one from
// each router when every router has a queue group of its own.
func replies[T any](t *testing.T, nc *nats.Conn, subject string, q any, n int) []T {
	t.Helper()
	body, err := bus.Msgpack.Marshal(q)
	if err != nil {
		t.Fatal(err)
	}
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, body); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	out := make([]T, n)
	for i := range out {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("%d of %d replies on %s: %v", i, n, subject, err)
		}
		if e := m.Header.Get("Nats-Service-Error"); e != "" {
			t.Fatalf("%s: error reply %s %s", subject, m.Header.Get("Nats-Service-Error-Code"), e)
		}
		if err := bus.DetectEncoding(m.Data, m.Header).Unmarshal(m.Data, &out[i]); err != nil {
			t.Fatalf("%s: reply %d: %v", subject, i, err)
		}
	}
	return out
}

// requestAnswers asks route.request for the owners of keys in one batch and
// returns each of n routers' answer.
func requestAnswers(t *testing.T, nc *nats.Conn, keys []string, n int) []answer {
	t.Helper()
	var out []answer
	for i, rep := range replies[bus.Reply](t, nc, bus.SubjectRequest, bus.Request{Strategy: bus.StrategyConsistentHash, Keys: keys}, n) {
		if len(rep.Results) != len(keys) {
			t.Fatalf("route.request: %d results for %d keys", len(rep.Results), len(keys))
		}
		owners := make([]string, len(keys))
		for j, res := range rep.Results {
			if res.Key != keys[j] {
				t.Fatalf("route.request: result %d is for %q, asked %q", j, res.Key, keys[j])
			}
			owners[j] = res.Node
		}
		out = append(out, answer{who: fmt.Sprintf("route.request reply %d", i), rev: rep.Revision, owners: owners})
	}
	return out
}

// ringAnswers asks route.ring for the pool's document and returns each of n
// routers' document and revision as an answer (owners from a ring built
// from the document).
func ringAnswers(t *testing.T, nc *nats.Conn, keys []string, n int) []answer {
	t.Helper()
	var out []answer
	for i, st := range replies[bus.RingState](t, nc, bus.SubjectRing, bus.PoolRequest{}, n) {
		out = append(out, docAnswer(t, fmt.Sprintf("route.ring reply %d", i), st.Ring, st.Revision, keys))
	}
	return out
}

// docAnswer is the answer a ring built from doc gives at rev.
func docAnswer(t *testing.T, who string, doc bus.RingDocument, rev uint64, keys []string) answer {
	t.Helper()
	rg, err := doc.Ring()
	if err != nil {
		t.Fatalf("%s: document at %d: %v", who, rev, err)
	}
	return answer{who: who, rev: rev, hasMembers: true, members: fmt.Sprint(doc.Members()), owners: ownersOf(keys, rg.Get)}
}

// cacheAnswer is a RingCache's answer; false while it moves between reading
// its revision and its ring, or while it does not read v3.
func cacheAnswer(who string, c *bus.RingCache, keys []string) (answer, bool) {
	rev := c.Revision()
	snap := c.Snapshot()
	doc, rev2 := c.Ring()
	if rev != rev2 || !c.V3() {
		return answer{}, false
	}
	return answer{who: who, rev: rev, hasMembers: true, members: fmt.Sprint(doc.Members()), owners: ownersOf(keys, snap.Get)}, true
}

// indepAnswer is the independent reader's answer; false while the pool is
// not v3.
func indepAnswer(t *testing.T, ind *indepReader, keys []string) (answer, bool) {
	t.Helper()
	rev, v3, ms, rg := ind.state(t, 0)
	if !v3 {
		return answer{}, false
	}
	return answer{who: "the independent reader", rev: rev, hasMembers: true, members: fmt.Sprint(ms), owners: ownersOf(keys, rg.Get)}, true
}

// agreeParties are the routers (each in a queue group of its own) and
// readers of one pool whose answers the test compares.
type agreeParties struct {
	nc      *nats.Conn
	routers []*router.Router
	caches  []*bus.RingCache
	ind     *indepReader
	keys    []string
	log     *agreement
}

// count is how many answers a full pass gathers: route.request and
// route.ring from every router, every cache, the independent reader.
func (p *agreeParties) count() int { return 2*len(p.routers) + len(p.caches) + 1 }

// sample asks everyone once, records the answers and returns them.
func (p *agreeParties) sample(t *testing.T) []answer {
	t.Helper()
	out := requestAnswers(t, p.nc, p.keys, len(p.routers))
	out = append(out, ringAnswers(t, p.nc, p.keys, len(p.routers))...)
	for i, c := range p.caches {
		if a, ok := cacheAnswer(fmt.Sprintf("cache %d", i), c, p.keys); ok {
			out = append(out, a)
		}
	}
	if a, ok := indepAnswer(t, p.ind, p.keys); ok {
		out = append(out, a)
	}
	for _, a := range out {
		p.log.add(t, p.keys, a)
	}
	return out
}

// revisions are the revisions everyone holds now, read cheaply.
func (p *agreeParties) revisions() []uint64 {
	var revs []uint64
	for _, r := range p.routers {
		_, rev := r.Ring()
		revs = append(revs, rev)
	}
	for _, c := range p.caches {
		revs = append(revs, c.Revision())
	}
	return append(revs, p.ind.revision())
}

// settle waits until one full pass finds everyone answering at the same
// revision, held still for 100 ms first, and returns that revision.
func (p *agreeParties) settle(t *testing.T, what string) uint64 {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var last []uint64
		var since time.Time
		waitFor(t, time.Until(deadline), what+": everyone at one revision", func() bool {
			revs := p.revisions()
			if !slices.Equal(revs, last) {
				last, since = revs, time.Now()
			}
			return slices.Min(revs) == slices.Max(revs) && time.Since(since) >= 100*time.Millisecond
		})
		as := p.sample(t)
		if len(as) == p.count() && !slices.ContainsFunc(as, func(a answer) bool { return a.rev != as[0].rev }) {
			return as[0].rev
		}
		if time.Now().After(deadline) {
			var got []string
			for _, a := range as {
				got = append(got, fmt.Sprintf("%s at %d", a.who, a.rev))
			}
			t.Fatalf("%s: no pass with all %d answers at one revision; last: %s", what, p.count(), strings.Join(got, ", "))
		}
	}
}

// oldAgrees checks the document kept for earlier releases against the
// routers, sheds and ejections included: it must come to hold the members
// the routers hold now (a mirror left behind is a bug, however the ring
// moves on), and a cache of the previous release that holds it must give
// each key the owner the routers gave it at a revision with those members.
func (p *agreeParties) oldAgrees(t *testing.T, step string, old *docReader) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		waitFor(t, time.Until(deadline), step+": the document kept for earlier releases to hold the routers' members", func() bool {
			od, _, _ := old.current()
			cur, _ := p.routers[0].Ring()
			return od.Equal(cur)
		})
		a := old.answer("a cache of the previous release", p.keys)
		p.sample(t) // the routers' answers now, recorded by revision
		for rev, m := range p.log.members {
			if m.members == a.members {
				if o, ok := p.log.owners[rev]; ok {
					sameOwners(t, step, p.keys, []answer{o, a})
					return
				}
			}
		}
	}
}

// fleetNode is what a churned node reports: its weight, whether it drains,
// and whether its load is hot (four times the others' per unit weight,
// less what it sheds: shedding keys sheds connections).
type fleetNode struct {
	weight float64
	drain  bool
	hot    bool
}

// churnFleet reports its nodes every 20 ms from one connection, the hot
// node's load taken from router r's document (none if r is nil); changes
// are reported at once, in order with the periodic reports.
type churnFleet struct {
	nc *nats.Conn
	r  *router.Router

	mu    sync.Mutex // guards nodes; held while publishing, so reports keep their order
	nodes map[string]fleetNode
}

func startChurnFleet(t *testing.T, nc *nats.Conn, r *router.Router) *churnFleet {
	f := &churnFleet{nc: nc, r: r, nodes: map[string]fleetNode{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			d := f.doc()
			f.mu.Lock()
			for id, n := range f.nodes {
				_ = f.publish(id, n, shedOf(d, id), "") // a failed publish is a missed report, which the next tick makes good
			}
			f.mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })
	return f
}

// doc is the document whose sheds the hot node's load follows.
func (f *churnFleet) doc() bus.RingDocument {
	if f.r == nil {
		return bus.RingDocument{}
	}
	d, _ := f.r.Ring()
	return d
}

// publish reports node id; with f.mu held.
func (f *churnFleet) publish(id string, n fleetNode, shed float64, status string) error {
	h := okHealth
	h.Weight = n.weight
	load := 100 * n.weight
	if n.hot {
		load = 400 * n.weight * (1 - shed)
	}
	h.ActiveConnections = int64(math.Round(load))
	h.Status = status
	if n.drain && status == "" {
		h.Status = bus.StatusDraining
	}
	data, err := bus.EncodeHealth(id, h, bus.Msgpack)
	if err != nil {
		return err
	}
	return f.nc.Publish(bus.HealthSubject(id), data)
}

// set makes id report n from now on.
func (f *churnFleet) set(t *testing.T, id string, n fleetNode) {
	t.Helper()
	d := f.doc()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[id] = n
	if err := f.publish(id, n, shedOf(d, id), ""); err != nil {
		t.Fatal(err)
	}
}

// leave makes id say it leaves, and stop reporting.
func (f *churnFleet) leave(t *testing.T, id string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[id]
	delete(f.nodes, id)
	if err := f.publish(id, n, 0, bus.StatusLeaving); err != nil {
		t.Fatal(err)
	}
}

// document is the ring document the fleet's reports call for (no sheds).
func (f *churnFleet) document() bus.RingDocument {
	in, nodes := f.get()
	d := bus.NewRingDocument(ring.DefaultVirtualNodes)
	for _, id := range in {
		n := bus.RingNode{ID: id, Weight: nodes[id].weight}
		if nodes[id].drain {
			n.Status = bus.StatusDraining
		}
		d.Nodes = append(d.Nodes, n)
	}
	return d
}

// membershipOps is how many kinds of change churnFleet.change makes.
const membershipOps = 4

// change makes one seeded change of kind op to the fleet (0: one of ids
// joins, 1: a member leaves, keeping at least least, 2: a member's weight
// changes, 3: a member starts or stops draining) and says what it did, or
// "" if op did not apply.
func (f *churnFleet) change(t *testing.T, rng *rand.Rand, op int, ids []string, least int) string {
	t.Helper()
	in, nodes := f.get()
	pick := in[rng.IntN(len(in))]
	n := nodes[pick]
	switch {
	case op == 0 && len(in) < len(ids):
		var out []string
		for _, id := range ids {
			if _, ok := nodes[id]; !ok {
				out = append(out, id)
			}
		}
		id := out[rng.IntN(len(out))]
		w := float64(1 + rng.IntN(3))
		f.set(t, id, fleetNode{weight: w})
		return fmt.Sprintf("%s joins (weight %v)", id, w)
	case op == 1 && len(in) > least:
		f.leave(t, pick)
		return pick + " leaves"
	case op == 2:
		n.weight = float64(1 + rng.IntN(4))
		f.set(t, pick, n)
		return fmt.Sprintf("%s weighs %v", pick, n.weight)
	case op == 3:
		n.drain = !n.drain
		f.set(t, pick, n)
		return fmt.Sprintf("%s drains %v", pick, n.drain)
	}
	return ""
}

// get returns the nodes, sorted by id, and what each reports.
func (f *churnFleet) get() ([]string, map[string]fleetNode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.nodes))
	for id := range f.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, maps.Clone(f.nodes)
}

// TestRoutersV3Agree: three routers (replicas on one bucket, each in a
// queue group of its own so that every request gets an answer from each)
// with load-aware ConsistentHash and ejection on, three RingCaches and the
// independent v3 reader. A seeded sequence of rounds joins, removes,
// re-weights and drains members, makes one hot (it sheds) or cool again,
// and has two callers report a member failing (it is ejected for 2-4 s).
// Right after each round's changes and again once everyone holds one
// revision, every router (route.request on 10,000 keys in one batch, and
// route.ring's document), every cache and the independent reader are asked:
// any two answers at one revision must give every key the same owner (and
// show the same members), and each round must end at a revision all of
// them report. There, a cache of the previous release (the document kept
// for it, at its own revision) gives the same owners too.
// NATSROUTE_AGREE_SEED sets the seed.
func TestRoutersV3Agree(t *testing.T) {
	seed := uint64(22)
	if v := os.Getenv("NATSROUTE_AGREE_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("NATSROUTE_AGREE_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (NATSROUTE_AGREE_SEED)", seed)
	rng := rand.New(rand.NewPCG(seed, 22))
	keys := fixedKeys(10_000)
	s := runServer(t)
	var routers []*router.Router
	for i := range 3 {
		cfg := testConfig(t)
		cfg.QueueGroup = fmt.Sprintf("agree-%d", i)
		cfg.Limits.MaxBatch = len(keys)
		cfg.BalanceFactor = 1.25
		cfg.ShedInterval = 25 * time.Millisecond
		cfg.EjectTime, cfg.EjectMaxTime = 2*time.Second, 4*time.Second
		cfg.EjectMaxPercent = 25
		routers = append(routers, startRouter(t, connect(t, s.ClientURL()), cfg))
	}
	nc := connect(t, s.ClientURL())
	kv := bucket(t, nc)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p := &agreeParties{nc: nc, routers: routers, keys: keys, log: newAgreement()}
	for range 3 {
		p.caches = append(p.caches, watchCache(t, js))
	}
	p.ind = startIndepReader(t, kv, bus.DefaultPool)
	oldCache := startDocReader(t, kv, bus.RingKey)
	logBucketOnFailure(t, kv)
	fleet := startChurnFleet(t, connect(t, s.ClientURL()), routers[0])
	callers := []*bus.Client{caller(t, s, "svc-a"), caller(t, s, "svc-b")}

	ids := make([]string, 16)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%02d", i)
	}
	for _, id := range ids[:8] {
		fleet.set(t, id, fleetNode{weight: 1, hot: id == "n00"})
	}
	common := []uint64{p.settle(t, "the first members")}
	sheds, ejected := 0, 0
	feedback := uint64(0) // failures reported
	for round := range 10 {
		var did []string
		for range 1 + rng.IntN(4) {
			op := rng.IntN(membershipOps + 2)
			if op < membershipOps {
				if d := fleet.change(t, rng, op, ids, 5); d != "" {
					did = append(did, d)
				}
				continue
			}
			in, nodes := fleet.get()
			pick := in[rng.IntN(len(in))]
			n := nodes[pick]
			switch {
			case op == 4 && !n.drain: // draining members never shed
				for _, id := range in {
					if m := nodes[id]; m.hot {
						m.hot = false
						fleet.set(t, id, m)
					}
				}
				n.hot = !nodes[pick].hot
				fleet.set(t, pick, n)
				did = append(did, fmt.Sprintf("%s hot %v", pick, n.hot))
			case op == 5 && !n.drain && inRing(routers[0], pick):
				for i := range 5 {
					if err := callers[i%2].ReportFailure(ctxT(t), pick, bus.WithReason("agree test"), bus.WithAck()); err != nil {
						t.Fatal(err)
					}
				}
				// Every router has counted the failures: each ejects pick,
				// honours another's ejection, or refuses it for the pool's
				// share before the round is checked.
				feedback += 5
				for _, r := range routers {
					waitFor(t, 5*time.Second, "the failures handled", func() bool { return feedbackSeen(r) == feedback })
				}
				did = append(did, pick+" fails its callers")
			}
		}
		p.sample(t) // in the middle of the change
		rev := p.settle(t, fmt.Sprint("round ", round+1))
		common = append(common, rev)
		p.oldAgrees(t, fmt.Sprint("round ", round+1), oldCache)
		d, _ := routers[0].Ring()
		if d.Shedding() {
			sheds++
		}
		if ejectedIn(routers[0], bus.DefaultPool) > 0 {
			ejected++
		}
		t.Logf("round %d: %s; all %d at revision %d: %s (format %d)", round+1, strings.Join(did, ", "), p.count(), rev, docMembers(d), d.Format)
	}
	everyone := 0
	for _, who := range p.log.who {
		if len(who) == p.count() {
			everyone++
		}
	}
	t.Logf("%d revisions seen, %d answered by all %d; shedding at %d of %d common revisions, an ejection in force at %d; ejections %d",
		len(p.log.who), everyone, p.count(), sheds, len(common), ejected, ejections(routers))
	if sheds == 0 || ejections(routers) == 0 {
		t.Fatalf("the churn exercised too little: shedding at %d common revisions, %d ejections", sheds, ejections(routers))
	}
}

// ejections counts the ejections the routers made.
func ejections(rs []*router.Router) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.Stats().Ejections["ejected"]
	}
	return n
}
