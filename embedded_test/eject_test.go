package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// grayFleet starts n in-process nodes (gray-0 ...) on Reporters that report
// every second and answer probes: alive, whatever their callers see.
func grayFleet(t *testing.T, s *server.Server, n int) []string {
	t.Helper()
	src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return okHealth, nil })
	var ids []string
	for i := range n {
		id := fmt.Sprintf("gray-%02d", i)
		rep, err := bus.NewReporter(connect(t, s.ClientURL()), id, src, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rep.Close() })
		ids = append(ids, id)
	}
	return ids
}

// bucket returns the default KV bucket.
func bucket(t *testing.T, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// oldBucket creates the default bucket as an earlier release did (history
// 1, no per-key TTLs) and, unless doc is empty, puts doc as its ring
// document.
func oldBucket(t *testing.T, nc *nats.Conn, doc string) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctxT(t), jetstream.KeyValueConfig{Bucket: bus.DefaultBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	if doc != "" {
		if _, err := kv.PutString(ctxT(t), bus.RingKey, doc); err != nil {
			t.Fatal(err)
		}
	}
	return kv
}

// caller returns a Client that reports failures as name.
func caller(t *testing.T, s *server.Server, name string) *bus.Client {
	t.Helper()
	c, err := bus.NewClient(connect(t, s.ClientURL(), nats.Name(name)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// feedbackSeen counts the route.feedback messages a router has handled.
func feedbackSeen(r *router.Router) uint64 {
	var n uint64
	for _, v := range r.Stats().Feedback {
		n += v
	}
	return n
}

func ejectedIn(r *router.Router, pool string) int {
	for _, p := range r.Stats().Pools {
		if p.Name == pool {
			return p.Ejected
		}
	}
	return 0
}

var ejectedText = regexp.MustCompile(`^ejected: 5 failures from 2 callers \(last: 503 from upstream\), back in (2\d|30) s$`)

// TestEjectGray (issue 20, the gray row): a node that answers probes but
// fails two callers five times is ejected within 2 s of the fifth failure
// (goal 200 ms), by every replica, and stays out: no replica puts it back,
// not even one that starts during the ejection.
func TestEjectGray(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	ra := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	rb := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	ids := grayFleet(t, s, 8)
	all := strings.Join(ids, ",")
	waitFor(t, 10*time.Second, "the fleet on both replicas", func() bool { return members(ra) == all && members(rb) == all })
	a, b := caller(t, s, "svc-a"), caller(t, s, "svc-b")
	gray := ids[3]

	// Four failures: not yet.
	for i, c := range []*bus.Client{a, b, a, b} {
		if err := c.ReportFailure(ctxT(t), gray, bus.WithReason("503 from upstream")); err != nil {
			t.Fatalf("failure %d: %v", i+1, err)
		}
	}
	waitFor(t, 5*time.Second, "four failures handled by both", func() bool { return feedbackSeen(ra) == 4 && feedbackSeen(rb) == 4 })
	waitFor(t, 5*time.Second, "the probes they triggered answered", func() bool { return ra.Stats().Probes["answered"] >= 1 && rb.Stats().Probes["answered"] >= 1 })
	if !inRing(ra, gray) || ejectedIn(ra, "default") != 0 {
		t.Fatalf("four failures ejected %s", gray)
	}

	start := time.Now()
	if err := a.ReportFailure(ctxT(t), gray, bus.WithReason("503 from upstream"), bus.WithAck()); err != nil {
		t.Fatal(err)
	}
	timeTo(t, start, 10*time.Second, 200*time.Millisecond, 2*time.Second, "the gray node out of both replicas' rings after the fifth failure", func() bool {
		return !inRing(ra, gray) && !inRing(rb, gray)
	})
	// The count goes up when the key's write returns, which can be after
	// the watch has brought the key to both rings.
	began := func() uint64 { return ra.Stats().Ejections["ejected"] + rb.Stats().Ejections["ejected"] }
	waitFor(t, 5*time.Second, "the ejection counted", func() bool { return began() >= 1 })
	if got := began(); got != 1 {
		t.Fatalf("replicas began %d ejections, want 1 (the other honours the first's key)", got)
	}
	for _, r := range []*router.Router{ra, rb} {
		n := nodeStatus(r, gray)
		if !ejectedText.MatchString(n.Ejected) || n.Member || n.Eligible || n.Down != "" {
			t.Fatalf("route.nodes says %+v", n)
		}
		if ejectedIn(r, "default") != 1 {
			t.Fatalf("pool stats: %d ejected", ejectedIn(r, "default"))
		}
	}
	for i := range 200 { // ResourceAware, on either replica, never picks it
		if rep := jsonReply(t, nc, `{"strategy":"ResourceAware"}`); rep.Node == gray {
			t.Fatalf("pick %d went to the ejected node", i)
		}
	}
	rep := jsonReply(t, nc, `{"strategy":"ConsistentHash","key":"k","explain":true}`)
	if rep.Explanation == nil || len(rep.Explanation.Out) != 1 || rep.Explanation.Out[0].ID != gray || !ejectedText.MatchString(rep.Explanation.Out[0].Why) {
		t.Fatalf("explain: %+v", rep.Explanation)
	}

	// The key in the bucket, as subjects.md has it.
	kv := bucket(t, nc)
	e, err := kv.Get(ctxT(t), "ejected.default."+gray)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := bus.DecodeEjection(e.Value())
	if err != nil || rec.Failures != 5 || rec.Callers != 2 || rec.Seconds != 30 || rec.Repeat != 1 || rec.Reason != "503 from upstream" {
		t.Fatalf("ejection key holds %+v, %v", rec, err)
	}

	// A replica that starts now reads the ejection before it writes, and
	// its reports of the gray node do not put it back.
	rc := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	waitFor(t, 5*time.Second, "the new replica to hear the gray node", func() bool { return nodeStatus(rc, gray).ID == gray })
	afterReport(t, nc, gray)
	afterReport(t, nc, gray)
	for _, r := range []*router.Router{ra, rb, rc} {
		if inRing(r, gray) || members(r) != strings.Join(append(append([]string{}, ids[:3]...), ids[4:]...), ",") {
			t.Fatalf("a replica put it back: members %s", members(r))
		}
	}
	if n := nodeStatus(rc, gray); !ejectedText.MatchString(n.Ejected) {
		t.Fatalf("the new replica says %+v", n)
	}
}

// TestEjectEndsByItself: an ejection ends when its time is up on every
// replica, even after the router that made it is gone; its key leaves the
// bucket by itself; the node comes back (slow start applies); the next
// ejection in a row lasts twice as long.
func TestEjectEndsByItself(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.EjectTime = time.Second
	cfg.Balancer.SlowStartWindow = time.Minute
	ra, err := router.New(connect(t, s.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	startOrFail(t, ra)
	raOpen := true
	defer func() {
		if raOpen {
			_ = ra.Close()
		}
	}()
	// rb starts once ra has written the ejection, so ra makes it.
	ids := grayFleet(t, s, 4)
	waitFor(t, 10*time.Second, "the fleet", func() bool { return members(ra) == strings.Join(ids, ",") })
	a, b := caller(t, s, "svc-a"), caller(t, s, "svc-b")
	gray := ids[1]
	fail5 := func() {
		t.Helper()
		for i, c := range []*bus.Client{a, b, a, b, a} {
			if err := c.ReportFailure(ctxT(t), gray, bus.WithAck()); err != nil {
				t.Fatalf("failure %d: %v", i+1, err)
			}
		}
	}
	fail5()
	waitFor(t, 5*time.Second, "the ejection, counted", func() bool { return !inRing(ra, gray) && ra.Stats().Ejections["ejected"] >= 1 })
	if ra.Stats().Ejections["ejected"] != 1 {
		t.Fatalf("ejections %v", ra.Stats().Ejections)
	}
	rb := startRouter(t, connect(t, s.ClientURL()), cfg)
	if inRing(rb, gray) {
		t.Fatal("the second replica started with the gray node in its ring")
	}
	if err := ra.Close(); err != nil {
		t.Fatal(err)
	}
	raOpen = false
	start := time.Now()
	timeTo(t, start, 10*time.Second, time.Second, 5*time.Second, "the gray node back after its 1 s ejection, its maker gone", func() bool { return inRing(rb, gray) })
	waitFor(t, 5*time.Second, "slow start on its return", func() bool {
		n := nodeStatus(rb, gray)
		return n.Ejected == "" && n.SlowStart > 0 && n.SlowStart < 1
	})
	kv := bucket(t, nc)
	waitFor(t, 10*time.Second, "the ejection key to leave the bucket by itself", func() bool {
		_, err := kv.Get(ctxT(t), "ejected.default."+gray)
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})

	// Again: the second in a row lasts 2 s.
	fail5()
	waitFor(t, 5*time.Second, "the second ejection", func() bool { return !inRing(rb, gray) })
	n := nodeStatus(rb, gray)
	if !strings.Contains(n.Ejected, "ejection 2 in a row, back in 2 s") {
		t.Fatalf("route.nodes says %q", n.Ejected)
	}
	start = time.Now()
	timeTo(t, start, 10*time.Second, 2*time.Second, 5*time.Second, "the gray node back after its 2 s ejection", func() bool { return inRing(rb, gray) })
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Fatalf("the second ejection lasted %v, want about 2 s", took)
	}
}

// TestEjectShare (issue 20, "every node reported failing by 3 callers"):
// when every node fails its callers the fault is the callers': no more
// than the pool's share (10 %, at least one node) is ejected, on every
// replica.
func TestEjectShare(t *testing.T) {
	for _, tc := range []struct{ nodes, most int }{{8, 1}, {20, 2}} {
		t.Run(fmt.Sprint(tc.nodes), func(t *testing.T) {
			s := runServer(t)
			ra := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
			rb := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
			ids := grayFleet(t, s, tc.nodes)
			all := strings.Join(ids, ",")
			waitFor(t, 10*time.Second, "the fleet", func() bool { return members(ra) == all && members(rb) == all })
			callers := []*bus.Client{caller(t, s, "svc-a"), caller(t, s, "svc-b"), caller(t, s, "svc-c")}
			for round := range 2 {
				for _, id := range ids {
					for _, c := range callers {
						if err := c.ReportFailure(ctxT(t), id, bus.WithReason(fmt.Sprint("round ", round))); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			sent := uint64(2 * len(ids) * len(callers))
			waitFor(t, 10*time.Second, "every failure handled", func() bool { return feedbackSeen(ra) == sent && feedbackSeen(rb) == sent })
			// Every node has six failures from three callers; each answers its
			// probe. Wait until the share is reached, then past any write in
			// flight, and count.
			waitFor(t, 10*time.Second, "the share ejected", func() bool { return ejectedIn(ra, "default") == tc.most && ejectedIn(rb, "default") == tc.most })
			waitFor(t, 10*time.Second, "the ring without them", func() bool {
				d, _ := ra.Ring()
				return len(d.Nodes) == tc.nodes-tc.most
			})
			for _, r := range []*router.Router{ra, rb} {
				// Each replica refuses some: probes answered after the share
				// was reached find it full.
				waitFor(t, 10*time.Second, "a refusal for the share", func() bool { return r.Stats().Ejections["over_share"] > 0 })
				if got := ejectedIn(r, "default"); got != tc.most {
					t.Fatalf("%d of %d ejected, want %d", got, tc.nodes, tc.most)
				}
			}
			// Nor does a replica write a key for every node it would eject:
			// its own ejections in flight count toward the share.
			lister, err := bucket(t, connect(t, s.ClientURL())).ListKeysFiltered(ctxT(t), "ejected.>")
			if err != nil {
				t.Fatal(err)
			}
			keys := 0
			for range lister.Keys() {
				keys++
			}
			if keys > 2*tc.most {
				t.Fatalf("%d ejection keys in the bucket for a share of %d and 2 replicas", keys, tc.most)
			}
			t.Logf("%d nodes all failing 3 callers: %d ejected (%.1f %%)", tc.nodes, tc.most, 100*float64(tc.most)/float64(tc.nodes))
		})
	}
}

// TestEjectNotByOne: one caller's failures, however many, eject nothing;
// nor do failures about a node of another pool or about an unknown node.
func TestEjectNotByOne(t *testing.T) {
	s := runServer(t)
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	ids := grayFleet(t, s, 4)
	waitFor(t, 10*time.Second, "the fleet", func() bool { return members(r) == strings.Join(ids, ",") })
	a := caller(t, s, "svc-a")
	for range 20 {
		if err := a.ReportFailure(ctxT(t), ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	b := caller(t, s, "svc-b")
	for range 5 {
		for _, c := range []*bus.Client{a, b} {
			if err := c.ReportFailure(ctxT(t), "nobody"); err != nil {
				t.Fatal(err)
			}
			if err := c.ReportFailure(ctxT(t), ids[1], bus.InPool("other")); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 5*time.Second, "every failure handled", func() bool { return feedbackSeen(r) == 40 })
	if err := a.ReportFailure(ctxT(t), ids[0], bus.WithAck()); err != nil { // and after its probe
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "its probe answered", func() bool { return r.Stats().Probes["answered"] >= 1 })
	if st := r.Stats(); st.Ejections["ejected"] != 0 || members(r) != strings.Join(ids, ",") {
		t.Fatalf("ejections %v, members %s", st.Ejections, members(r))
	}
}

// TestEjectOldBucket: a bucket made by an earlier release (no per-key
// TTLs) is updated at start, so ejections end by themselves there too.
func TestEjectOldBucket(t *testing.T) {
	s := runServer(t)
	kv := oldBucket(t, connect(t, s.ClientURL()), "")
	cfg := testConfig(t)
	cfg.EjectTime = time.Second
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	st, err := kv.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.LimitMarkerTTL() == 0 {
		t.Fatal("the router did not turn on per-key TTLs in the old bucket")
	}
	ids := grayFleet(t, s, 2)
	waitFor(t, 10*time.Second, "the fleet", func() bool { return members(r) == strings.Join(ids, ",") })
	a, b := caller(t, s, "svc-a"), caller(t, s, "svc-b")
	for _, c := range []*bus.Client{a, b, a, b, a} {
		if err := c.ReportFailure(ctxT(t), ids[0], bus.WithAck()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the ejection", func() bool { return !inRing(r, ids[0]) })
	if u := r.Stats().Ejections["unshared"]; u != 0 {
		t.Fatalf("%d ejections not shared", u)
	}
	waitFor(t, 10*time.Second, "its key gone by itself", func() bool {
		_, err := kv.Get(ctxT(t), "ejected.default."+ids[0])
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
}

// TestEjectDeadIsDown: failures about a node that is dead take it down
// (its probe finds no responders), not eject it: a dead node is back on its
// next report, not after an ejection.
func TestEjectDeadIsDown(t *testing.T) {
	nc, r, cmds := fleet(t, 3)
	s := nc.ConnectedUrl()
	a, err := bus.NewClient(connect(t, s, nats.Name("svc-a")))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.NewClient(connect(t, s, nats.Name("svc-b")))
	if err != nil {
		t.Fatal(err)
	}
	_ = cmds[0].Process.Kill()
	_ = cmds[0].Wait()
	for _, c := range []*bus.Client{a, b, a, b, a} {
		if err := c.ReportFailure(ctxT(t), "node-0", bus.WithAck()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "node-0 out", func() bool { return !inRing(r, "node-0") })
	waitFor(t, 5*time.Second, "every failure handled", func() bool { return feedbackSeen(r) == 5 })
	st := r.Stats()
	if st.Downs["no_responders"] != 1 || st.Ejections["ejected"] != 0 {
		t.Fatalf("downs %v, ejections %v: want one down, no ejection", st.Downs, st.Ejections)
	}
	if n := nodeStatus(r, "node-0"); n.Down != "down: no responders to probe" || n.Ejected != "" {
		t.Fatalf("route.nodes says %+v", n)
	}
}

// TestEjectUnnamedClients: Clients on connections without a name still
// count as distinct callers (each makes up its own name), while feedback
// that names no caller counts toward no ejection at all.
func TestEjectUnnamedClients(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	ids := grayFleet(t, s, 4)
	waitFor(t, 10*time.Second, "the fleet", func() bool { return members(r) == strings.Join(ids, ",") })
	for i := range 6 { // raw feedback without a caller, and one that names one
		body := `{"node":"` + ids[0] + `"}`
		if i == 5 {
			body = `{"node":"` + ids[0] + `","caller":"svc-x"}`
		}
		if err := nc.Publish(bus.SubjectFeedback, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the failures handled", func() bool { return feedbackSeen(r) == 6 })
	waitFor(t, 5*time.Second, "its probe answered", func() bool { return r.Stats().Probes["answered"] >= 1 })
	if !inRing(r, ids[0]) {
		t.Fatal("anonymous failures and one named caller's ejected a node")
	}
	a, err := bus.NewClient(connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.NewClient(connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*bus.Client{a, b, a, b, a} {
		if err := c.ReportFailure(ctxT(t), ids[1], bus.WithAck()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "two unnamed clients' failures to eject it", func() bool { return !inRing(r, ids[1]) })
}

// TestEjectReplicasAgree: three replicas under rounds of random failures
// from several callers, with short ejections that end and repeat, agree
// after each round on which nodes are ejected, never hold more than the
// pool's share, and keep exactly the others in the shared ring.
func TestEjectReplicasAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("about 20 s")
	}
	s := runServer(t)
	cfg := testConfig(t)
	cfg.EjectTime, cfg.EjectMaxTime, cfg.EjectWindow = 2*time.Second, 4*time.Second, 2*time.Second
	cfg.EjectMaxPercent = 20
	var rs []*router.Router
	for range 3 {
		rs = append(rs, startRouter(t, connect(t, s.ClientURL()), cfg))
	}
	ids := grayFleet(t, s, 12)
	all := strings.Join(ids, ",")
	for _, r := range rs {
		waitFor(t, 10*time.Second, "the fleet", func() bool { return members(r) == all })
	}
	var callers []*bus.Client
	for i := range 4 {
		callers = append(callers, caller(t, s, fmt.Sprint("svc-", i)))
	}
	agree := func(got *string) bool {
		sets := make([]string, len(rs))
		for i, r := range rs {
			var out []string
			for _, n := range r.Nodes().Nodes {
				if n.Ejected != "" {
					out = append(out, n.ID)
				}
			}
			sets[i] = strings.Join(out, ",")
		}
		want := sets[0]
		*got = want
		if sets[1] != want || sets[2] != want {
			return false
		}
		var in []string
		for _, id := range ids {
			if !slices.Contains(strings.Split(want, ","), id) {
				in = append(in, id)
			}
		}
		for _, r := range rs {
			if members(r) != strings.Join(in, ",") {
				return false
			}
		}
		return true
	}
	const share = 2 // 20 % of 12
	rng := rand.New(rand.NewPCG(1, 2))
	sent := uint64(0)
	for round := range 6 {
		for range 40 {
			c, id := callers[rng.IntN(len(callers))], ids[rng.IntN(5)] // failures gather on a few nodes
			if err := c.ReportFailure(ctxT(t), id); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		for _, r := range rs {
			waitFor(t, 10*time.Second, "the round handled", func() bool { return feedbackSeen(r) == sent })
		}
		// Agreement: every replica names the same ejected nodes, within the
		// share, and the ring holds exactly the others. Ejections are written
		// after the feedback is handled: the agreed state must hold still for
		// 300 ms (a write takes about a millisecond), and be reached well
		// before the shortest ejection (2 s) ends: replicas that disagree
		// until their ejections end would agree on nothing afterwards.
		want, last, since := "", "\x00", time.Now()
		waitFor(t, 1500*time.Millisecond, fmt.Sprint("round ", round, ": replicas agree"), func() bool {
			if !agree(&want) {
				last = "\x00"
				return false
			}
			if want != last {
				last, since = want, time.Now()
			}
			return time.Since(since) >= 300*time.Millisecond
		})
		if n := len(strings.FieldsFunc(want, func(r rune) bool { return r == ',' })); n > share {
			t.Fatalf("round %d: %d ejected (%s), more than the share %d", round, n, want, share)
		}
		t.Logf("round %d: ejected [%s]", round, want)
		// The next round starts once these ejections have ended, on every
		// replica (2 s, then 4 s for the same node in a row).
		for _, r := range rs {
			waitFor(t, 10*time.Second, "the ejections to end", func() bool { return ejectedIn(r, "default") == 0 })
		}
	}
	var ejections uint64
	for _, r := range rs {
		ejections += r.Stats().Ejections["ejected"]
	}
	if ejections == 0 {
		t.Fatal("no ejection in six rounds: the test exercised nothing")
	}
}

// TestLivenessHeldBackForLegacyRouter: while a router of an earlier
// release shares the bucket (it keeps every reporting node until the TTL),
// liveness takes nobody out, or the two would fight over the document;
// once it is gone, ejections and downs work again.
func TestLivenessHeldBackForLegacyRouter(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.Resync = 200 * time.Millisecond // look for old routers often
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	ids := grayFleet(t, s, 4)
	waitFor(t, 10*time.Second, "the fleet", func() bool { return members(r) == strings.Join(ids, ",") })
	svc, err := micro.AddService(connect(t, s.ClientURL()), micro.Config{Name: bus.ServiceName, Version: "0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the old router to be seen", func() bool { return r.Stats().LegacyRouters })

	a, b := caller(t, s, "svc-a"), caller(t, s, "svc-b")
	fail5 := func(id string) {
		t.Helper()
		for _, c := range []*bus.Client{a, b, a, b, a} {
			if err := c.ReportFailure(ctxT(t), id, bus.WithAck()); err != nil {
				t.Fatal(err)
			}
		}
	}
	fail5(ids[0])
	health(t, nc, "ghost", bus.Health{CPUUsage: 1, MemoryUsage: 1, Interval: 100 * time.Millisecond, Probe: true})
	waitFor(t, 5*time.Second, "the ghost probed", func() bool { return r.Stats().Probes["no_responders"] >= 1 })
	waitFor(t, 5*time.Second, "the gray node probed", func() bool { return r.Stats().Probes["answered"] >= 1 })
	if st := r.Stats(); st.Ejections["ejected"] != 0 || st.MembersDown != 0 || !inRing(r, ids[0]) || !inRing(r, "ghost") {
		t.Fatalf("with an old router: ejections %v, downs %d, members %s", st.Ejections, st.MembersDown, members(r))
	}

	if err := svc.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the old router to be gone", func() bool { return !r.Stats().LegacyRouters })
	fail5(ids[1])
	waitFor(t, 5*time.Second, "an ejection", func() bool { return !inRing(r, ids[1]) })
	health(t, nc, "ghost", bus.Health{CPUUsage: 1, MemoryUsage: 1, Interval: 100 * time.Millisecond, Probe: true})
	waitFor(t, 5*time.Second, "the ghost down", func() bool { return !inRing(r, "ghost") })
}
