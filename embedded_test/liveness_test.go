package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// TestReporterProbe: a Reporter says interval_ms and probe, answers probes
// in the request's encoding, stops answering on Close, and does not answer
// with WithoutProbe; health.* never sees a probe.
func TestReporterProbe(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return okHealth, nil })

	reports := make(chan *nats.Msg, 100)
	sub, err := nc.ChanSubscribe(bus.SubjectHealthAll, reports)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	rep, err := bus.NewReporter(nc, "p-1", src, time.Hour, bus.WithPools("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	first := <-reports // the report NewReporter makes at once
	h, err := bus.DecodeHealth("p-1", first.Data, first.Header)
	if err != nil || h.Interval != time.Hour || !h.Probe {
		t.Fatalf("report %+v, %v; want interval 1h, probe", h, err)
	}

	for name, c := range map[string]struct {
		body []byte
		hdr  nats.Header
		json bool
	}{
		"empty":        {nil, nil, false},
		"json body":    {[]byte("{}"), nil, true},
		"content-type": {nil, nats.Header{"Content-Type": []string{"application/json"}}, true},
	} {
		m, err := nc.RequestMsg(&nats.Msg{Subject: bus.ProbeSubject("p-1"), Data: c.body, Header: c.hdr}, 2*time.Second)
		if err != nil {
			t.Fatalf("%s: probe: %v", name, err)
		}
		if isJSON := len(m.Data) > 0 && m.Data[0] == '{'; isJSON != c.json {
			t.Fatalf("%s: answer %q, want JSON %v", name, m.Data, c.json)
		}
		h, err := bus.DecodeHealth("p-1", m.Data, nil)
		if err != nil || !h.Probe || h.Interval != time.Hour || len(h.Pools) != 1 || h.Seq == 0 {
			t.Fatalf("%s: answer %+v, %v", name, h, err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := len(reports); n != 0 {
		t.Fatalf("health.* received %d messages during probes (first %s)", n, (<-reports).Subject)
	}

	if err := rep.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request(bus.ProbeSubject("p-1"), nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("probe after Close: %v, want no responders", err)
	}

	quiet, err := bus.NewReporter(nc, "q-1", src, 50*time.Millisecond, bus.WithoutProbe())
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	for m := range reports {
		if m.Subject != bus.HealthSubject("q-1") {
			continue
		}
		h, err := bus.DecodeHealth("q-1", m.Data, m.Header)
		if err != nil || h.Probe || h.Interval != 0 {
			t.Fatalf("WithoutProbe report %+v, %v", h, err)
		}
		break
	}
	if _, err := nc.Request(bus.ProbeSubject("q-1"), nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("probe of a WithoutProbe node: %v, want no responders", err)
	}

	fast, err := bus.NewReporter(nc, "f-1", src, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	m, err := nc.Request(bus.ProbeSubject("f-1"), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := bus.DecodeHealth("f-1", m.Data, nil); err != nil || h.Interval != bus.MinInterval {
		t.Fatalf("a 20 ms reporter says %v, %v; want the minimum %v", h.Interval, err, bus.MinInterval)
	}
}

// fleet starts a server, a router with default settings and n node
// processes (node-0 ...) reporting every second, and waits until all are
// members.
func fleet(t *testing.T, n int) (*nats.Conn, *router.Router, []*exec.Cmd) {
	t.Helper()
	s := runServer(t)
	return fleetOn(t, s, n, func(int) string { return s.ClientURL() })
}

// fleetOn is fleet on server s, node i connecting to url(i) (a proxy's,
// say).
func fleetOn(t *testing.T, s *server.Server, n int, url func(i int) string) (*nats.Conn, *router.Router, []*exec.Cmd) {
	t.Helper()
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	var cmds []*exec.Cmd
	var want []string
	for i := range n {
		id := fmt.Sprintf("node-%d", i)
		cmds = append(cmds, startNode(t, url(i), id))
		want = append(want, id)
	}
	waitFor(t, 10*time.Second, "the fleet to join", func() bool { return members(r) == strings.Join(want, ",") })
	return nc, r, cmds
}

// afterReport returns as soon as node has published a report: the worst
// moment to die, a whole interval before the next one is missed.
func afterReport(t *testing.T, nc *nats.Conn, node string) {
	t.Helper()
	sub, err := nc.SubscribeSync(bus.HealthSubject(node))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no report from %s: %v", node, err)
	}
}

func inRing(r *router.Router, node string) bool {
	d, _ := r.Ring()
	_, ok := d.Node(node)
	return ok
}

// timeTo waits up to max for cond (what), logs how long it took since
// start against the goal, and fails the test past its floor.
func timeTo(t *testing.T, start time.Time, max, goal, floor time.Duration, what string, cond func() bool) {
	t.Helper()
	waitFor(t, max, what, cond)
	took := time.Since(start)
	t.Logf("%s: %v (goal %v, floor %v)", what, took.Round(time.Microsecond), goal, floor)
	if took > floor {
		t.Errorf("%s took %v, want at most %v", what, took, floor)
	}
}

func nodeStatus(r *router.Router, node string) bus.NodeStatus {
	for _, n := range r.Nodes().Nodes {
		if n.ID == node {
			return n
		}
	}
	return bus.NodeStatus{}
}

// TestLivenessKilled (issue 20, row 1): a node whose process is killed
// leaves the ring within 2.5 s (goal 1.5 s) with 1 s reports and default
// settings, with nobody saying anything: the missed report is probed, and
// NATS answers "no responders".
func TestLivenessKilled(t *testing.T) {
	nc, r, cmds := fleet(t, 4)
	afterReport(t, nc, "node-0")
	start := time.Now()
	if err := cmds[0].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	timeTo(t, start, 10*time.Second, 1500*time.Millisecond, 2500*time.Millisecond, "killed node-0 out of the ring", func() bool { return !inRing(r, "node-0") })
	st := r.Stats()
	if st.Probes["no_responders"] < 1 || st.MembersDown != 1 {
		t.Fatalf("probes %v, downs %d; want a no-responders probe and one down", st.Probes, st.MembersDown)
	}
	if n := nodeStatus(r, "node-0"); n.Down != "down: no responders to probe" || n.Member || n.Eligible {
		t.Fatalf("route.nodes says %+v", n)
	}
	if members(r) != "node-1,node-2,node-3" {
		t.Fatalf("members %s", members(r))
	}
	for i := range 200 { // ResourceAware no longer picks it either
		rep := jsonReply(t, nc, `{"strategy":"ResourceAware"}`)
		if rep.Node == "node-0" {
			t.Fatalf("pick %d went to the dead node", i)
		}
	}
}

// TestLivenessFeedback (row 2): a caller's report of a failed node moves
// its keys within 500 ms (goal 100 ms): the router probes it at once.
func TestLivenessFeedback(t *testing.T) {
	nc, r, cmds := fleet(t, 4)
	c, err := bus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	afterReport(t, nc, "node-1")
	_ = cmds[1].Process.Kill()
	_ = cmds[1].Wait() // dead, its connection closed
	if !inRing(r, "node-1") {
		t.Fatal("node-1 left before the feedback; the test measures nothing")
	}
	start := time.Now()
	if err := c.ReportFailure(ctxT(t), "node-1", bus.WithReason("connection refused"), bus.WithAck()); err != nil {
		t.Fatal(err)
	}
	timeTo(t, start, 5*time.Second, 100*time.Millisecond, 500*time.Millisecond, "reported node-1 out of the ring after the feedback", func() bool { return !inRing(r, "node-1") })
	if st := r.Stats(); st.Feedback["probed"] != 1 || st.MembersDown != 1 {
		t.Fatalf("feedback %v, downs %d", st.Feedback, st.MembersDown)
	}
}

// TestLivenessFrozen (rows 3 and 4): a stopped process keeps its
// connection but answers nothing: two probe timeouts take it down within
// 5 s (goal 2.5 s); when it resumes, its next report brings it back
// within 5 s (goal one interval).
func TestLivenessFrozen(t *testing.T) {
	nc, r, cmds := fleet(t, 4)
	p := cmds[2].Process
	afterReport(t, nc, "node-2")
	start := time.Now()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = p.Signal(syscall.SIGCONT)
		}
	}()
	timeTo(t, start, 15*time.Second, 2500*time.Millisecond, 5*time.Second, "frozen node-2 out of the ring", func() bool { return !inRing(r, "node-2") })
	st := r.Stats()
	if st.Probes["timeout"] < 2 || st.MembersDown != 1 {
		t.Fatalf("probes %v, downs %d; want two timeouts and one down", st.Probes, st.MembersDown)
	}
	if n := nodeStatus(r, "node-2"); !strings.HasPrefix(n.Down, "down: 2 probes timed out") {
		t.Fatalf("route.nodes says down %q", n.Down)
	}
	start = time.Now()
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	timeTo(t, start, 15*time.Second, time.Second, 5*time.Second, "resumed node-2 back in the ring", func() bool { return inRing(r, "node-2") })
	if n := nodeStatus(r, "node-2"); n.Down != "" || !n.Member {
		t.Fatalf("route.nodes says %+v", n)
	}
}

// TestLivenessCutLink (issue 20, a cut link): a node whose network link is cut (a TCP
// proxy that forwards nothing either way and closes nothing, so NATS sees
// no disconnect and the server still routes probes to it) leaves the ring
// within 5 s (goal 2.5 s: a missed report at 1.5 s, then two probe
// timeouts of 500 ms) with 1 s reports and default settings, and comes
// back within 5 s of the link healing (what it sent meanwhile arrives).
func TestLivenessCutLink(t *testing.T) {
	const victim = 3
	s := runServer(t)
	px := startProxy(t, s.ClientURL())
	nc, r, _ := fleetOn(t, s, 8, func(i int) string {
		if i == victim {
			return px.URL()
		}
		return s.ClientURL()
	})
	node := fmt.Sprintf("node-%d", victim)
	afterReport(t, nc, node)
	start := time.Now()
	px.Cut()
	timeTo(t, start, 15*time.Second, 2500*time.Millisecond, 5*time.Second, "cut-off "+node+" out of the ring", func() bool { return !inRing(r, node) })
	st := r.Stats()
	if st.Probes["timeout"] < 2 || st.Probes["no_responders"] != 0 || st.MembersDown != 1 {
		t.Fatalf("probes %v, downs %d; want two timeouts (the server still has its subscription) and one down", st.Probes, st.MembersDown)
	}
	if n := nodeStatus(r, node); !strings.HasPrefix(n.Down, "down: 2 probes timed out") || n.Member || n.Eligible {
		t.Fatalf("route.nodes says %+v", n)
	}
	if got, want := members(r), "node-0,node-1,node-2,node-4,node-5,node-6,node-7"; got != want {
		t.Fatalf("members %s, want %s", got, want)
	}
	for i := range 200 { // ResourceAware no longer picks it either
		if rep := jsonReply(t, nc, `{"strategy":"ResourceAware"}`); rep.Node == node {
			t.Fatalf("pick %d went to the cut-off node", i)
		}
	}

	start = time.Now()
	px.Restore()
	timeTo(t, start, 15*time.Second, time.Second, 5*time.Second, "healed "+node+" back in the ring", func() bool { return inRing(r, node) })
	if n := nodeStatus(r, node); n.Down != "" || !n.Member {
		t.Fatalf("route.nodes says %+v", n)
	}
	// The connection was never closed: what the node sent while cut off
	// arrives when the link heals, on the same connection.
	t.Logf("connections through the proxy: %d (1: the old connection resumed; more: the client reconnected)", px.Accepted())
	if got := r.Stats().MembersDown; got != 1 {
		t.Fatalf("downs %d after healing, want still 1", got)
	}
}

// TestLivenessHostileFeedback (must show): invalid feedback, feedback about
// unknown nodes or pools, an oversized reason and a flood are counted, and
// nothing else happens: no node goes down, and requests are answered.
func TestLivenessHostileFeedback(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return okHealth, nil })
	rep, err := bus.NewReporter(connect(t, s.ClientURL()), "good", src, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close()
	health(t, nc, "noprobe", okHealth) // never said probe: never probed
	waitFor(t, 5*time.Second, "members", func() bool { return members(r) == "good,noprobe" })

	for _, c := range []struct {
		name, body, code string
	}{
		{"invalid JSON", `{"node":`, "400"},
		{"not a node id", `{"node":"a.b"}`, "400"},
		{"10 KB reason", `{"node":"good","reason":"` + strings.Repeat("x", 10<<10) + `"}`, "400"},
		{"unknown node", `{"node":"nobody"}`, ""},
		{"unknown pool", `{"node":"good","pool":"nopool"}`, ""},
		{"not probing", `{"node":"noprobe"}`, ""},
		{"good", `{"node":"good","caller":"test","reason":"timeout"}`, ""},
	} {
		m := req(t, nc, bus.SubjectFeedback, []byte(c.body), nil)
		if got := m.Header.Get("Nats-Service-Error-Code"); got != c.code {
			t.Errorf("%s: code %q (%s), want %q", c.name, got, m.Data, c.code)
		}
		if c.code == "" && string(m.Data) != "{}" {
			t.Errorf("%s: reply %q, want {}", c.name, m.Data)
		}
	}
	st := r.Stats()
	if f := st.Feedback; f["invalid"] != 3 || f["ignored"] != 2 || f["counted"] != 1 || f["probed"] != 1 {
		t.Fatalf("feedback %v", f)
	}

	// A flood: 10,000 messages as fast as one connection sends them.
	flood := connect(t, s.ClientURL())
	body := []byte(`{"node":"good","reason":"flood"}`)
	for range 10_000 {
		if err := flood.Publish(bus.SubjectFeedback, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := flood.Flush(); err != nil {
		t.Fatal(err)
	}
	total := func(f map[string]uint64) (n uint64) {
		for _, v := range f {
			n += v
		}
		return n
	}
	waitFor(t, 10*time.Second, "the flood to be counted", func() bool { return total(r.Stats().Feedback) == 7+10_000 })
	st = r.Stats()
	t.Logf("feedback %v, probes %v", st.Feedback, st.Probes)
	if st.Feedback["rate_limited"] == 0 {
		t.Errorf("a flood of 10,000 was not rate-limited: %v", st.Feedback)
	}
	if st.MembersDown != 0 || members(r) != "good,noprobe" {
		t.Fatalf("downs %d, members %s", st.MembersDown, members(r))
	}
	if st.Ejections["ejected"] != 0 { // one anonymous caller, however loud
		t.Fatalf("a flood from one caller ejected: %v", st.Ejections)
	}
	// One probe in flight per node: a flood about one node is a few probes.
	if n := total(st.Probes); n > 1100 {
		t.Errorf("%d probes for one node under a flood", n)
	}
	if st.Probes["no_responders"]+st.Probes["timeout"] != 0 {
		t.Errorf("probes of a healthy node failed: %v", st.Probes)
	}
	jsonReply(t, nc, `{"key":"k"}`)
}

// TestLivenessHealthyFleet (row 7): eight node processes reporting every
// second for 60 s on a loaded machine (a process keeping every core busy,
// and route.request at full speed from four goroutines): nobody goes down
// or is ejected (the target), and no probe finds a node gone. A
// report the load delays past 1.45 s may be probed, and a probe the load
// delays past its 500 ms timeout is probed again at once: one timeout is
// by design not a down, so timeouts are logged, not failed (a helper saw
// one when more tests ran beside this one); two in a row would be a down.
//
// The burner is a process of its own on purpose. With the same goroutines
// in the router's process (which here also holds the server), the Go
// scheduler let timers wait 200-660 ms behind them on this 2-core machine,
// and within 10-25 s every node had a probe time out (never twice in a
// row: no down). That measures a router starved by its own process, not a
// loaded machine.
func TestLivenessHealthyFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("60 s")
	}
	const run = 60 * time.Second
	nc, r, _ := fleet(t, 8)
	want := members(r)
	client, err := bus.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	startBurner(t)

	ctx, stop := context.WithCancel(context.Background())
	var load sync.WaitGroup
	defer func() { stop(); load.Wait() }()
	var requests, reqErrors atomic.Int64
	var firstErr atomic.Pointer[error]
	for g := range 4 { // route.request at full speed
		load.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				_, err := client.Pick(ctx, fmt.Sprintf("user-%d-%d", g, i))
				if err != nil && ctx.Err() == nil {
					reqErrors.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				requests.Add(1)
			}
		})
	}

	wrong := func(st router.Stats) uint64 {
		return st.Probes["no_responders"] + st.Probes["error"]
	}
	before := r.Stats()
	t0 := time.Now()
	for time.Since(t0) < run {
		if st := r.Stats(); wrong(st) != 0 || st.MembersDown != 0 || st.Ejections["ejected"] != 0 || ejectedIn(r, bus.DefaultPool) != 0 {
			t.Fatalf("a healthy fleet after %v: probes %v, downs %d, ejections %v", time.Since(t0).Round(time.Second), st.Probes, st.MembersDown, st.Ejections)
		}
		time.Sleep(100 * time.Millisecond) // sampling, not waiting for a condition
	}
	stop()
	load.Wait()
	st := r.Stats()
	t.Logf("%v under load: %d requests (%.0f/s), %d errors; %d reports; probes %v; downs %d",
		run, requests.Load(), float64(requests.Load())/run.Seconds(), reqErrors.Load(), st.ReportsAccepted-before.ReportsAccepted, st.Probes, st.MembersDown)
	if wrong(st) != 0 || st.MembersDown != 0 || st.Ejections["ejected"] != 0 {
		t.Fatalf("a healthy fleet: probes %v, downs %d, ejections %v", st.Probes, st.MembersDown, st.Ejections)
	}
	// The requests are load, not the subject: their latency has its own
	// tests. A few time out (2 s) when the whole suite runs with -race
	// beside the burner; they are logged, not failed.
	if p := firstErr.Load(); p != nil {
		t.Logf("first of %d failed requests: %v", reqErrors.Load(), *p)
	}
	if requests.Load() == 0 {
		t.Error("no request was answered: there was no load")
	}
	if got := st.ReportsAccepted - before.ReportsAccepted; got < 8*uint64(run/time.Second)*9/10 { // 90 %, as at 20 s: a loaded Reporter skips ticks
		t.Fatalf("%d reports in %v from 8 nodes", got, run)
	}
	if members(r) != want {
		t.Fatalf("members %s, want %s", members(r), want)
	}
}

// TestReportFailure: the Client publishes feedback, or waits for a router's
// answer with WithAck; bad arguments are refused before anything is sent.
func TestReportFailure(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	c, err := bus.NewClient(nc, bus.WithClientPool("cache"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ReportFailure(ctxT(t), "n", bus.WithAck()); !errors.Is(err, bus.ErrNoRouter) {
		t.Fatalf("no router: %v, want ErrNoRouter", err)
	}
	if err := c.ReportFailure(ctxT(t), "bad.id"); !errors.Is(err, bus.ErrInvalidFeedback) {
		t.Fatalf("bad id: %v", err)
	}
	if err := c.ReportFailure(ctxT(t), "n", bus.WithReason(strings.Repeat("r", 300))); !errors.Is(err, bus.ErrInvalidFeedback) {
		t.Fatalf("long reason: %v", err)
	}
	sub, err := nc.SubscribeSync(bus.SubjectFeedback)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ReportFailure(ctxT(t), "n-1", bus.WithReason("refused"), bus.AsCaller("svc-a")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f, err := bus.DecodeFeedback(m.Data, m.Header)
	if err != nil || f != (bus.Feedback{Node: "n-1", Pool: "cache", Caller: "svc-a", Reason: "refused"}) {
		t.Fatalf("published %+v, %v", f, err)
	}
	_ = sub.Unsubscribe()

	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	if err := c.ReportFailure(ctxT(t), "n-1", bus.WithAck()); err != nil {
		t.Fatalf("acknowledged: %v", err)
	}
	if got := r.Stats().Feedback["ignored"]; got != 1 {
		t.Fatalf("feedback about an unknown node: ignored %d, want 1", got)
	}
}
