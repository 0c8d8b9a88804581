package main

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
)

// TestLivenessMetrics: the router binary counts probes, downs and feedback
// on /metrics; a node that says probe and is then gone is probed and taken
// down.
func TestLivenessMetrics(t *testing.T) {
	r := startMonitoredRouter(t)
	// A node that says it answers probes every 100 ms, but nobody answers:
	// the probe gets no responders.
	r.report(t, "ghost", bus.Health{CPUUsage: 1, MemoryUsage: 1, Interval: 100 * time.Millisecond, Probe: true})
	if _, err := r.nc.Request(bus.SubjectFeedback, []byte(`{"node":`), 5*time.Second); err != nil && !errors.Is(err, nats.ErrTimeout) {
		t.Fatal(err)
	}
	var m string
	waitFor(t, 10*time.Second, "probe, down and feedback counters on /metrics", func() bool {
		m = r.metrics(t)
		return strings.Contains(m, `natsroute_probes_total{result="no_responders"} 1`) &&
			strings.Contains(m, `natsroute_members_down_total{reason="no_responders"} 1`) &&
			strings.Contains(m, `natsroute_feedback_total{outcome="invalid"} 1`)
	})
	for _, want := range []string{`natsroute_probes_total{result="timeout"} 0`, `natsroute_feedback_total{outcome="rate_limited"} 0`,
		`natsroute_members_down_total{reason="probe_timeouts"} 0`, `natsroute_ejections_total{outcome="ejected"} 0`,
		`natsroute_ejections_total{outcome="over_share"} 0`, `natsroute_ejected_members{pool="default"} 0`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestCheckLiveness(t *testing.T) {
	_, errOut, code := runCmd(t, nil, "--check", "--probe-timeout", "5ms", "--probe-miss-factor", "1", "--probe-timeouts", "11", "--probe-rate", "-1", "--feedback-rate", "1e9",
		"--eject-failures", "0", "--eject-callers", "101", "--eject-window", "11m", "--eject-time", "2h", "--eject-max-time", "25h", "--eject-max-percent", "101")
	if code != 2 {
		t.Fatalf("--check on bad liveness flags exited %d", code)
	}
	for _, want := range []string{"--probe-timeout", "--probe-miss-factor", "--probe-timeouts", "--probe-rate", "--feedback-rate",
		"--eject-failures", "--eject-callers", "--eject-window", "--eject-time", "--eject-max-time", "--eject-max-percent", "12 configuration problem"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("--check output does not name %s:\n%s", want, errOut)
		}
	}
	if out, _, code := runCmd(t, []string{"NATSROUTE_PROBE_TIMEOUT=250ms", "NATSROUTE_PROBE_RATE=50"}, "--check"); code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("--check with liveness variables: %d %q", code, out)
	}
}

// TestLivenessCLI: watch, status and /metrics say why nodes are out: a
// node gone without a word is down, a node that fails two callers while
// answering probes is ejected, with when it is back.
func TestLivenessCLI(t *testing.T) {
	r := startMonitoredRouter(t)
	url := r.nc.ConnectedUrl()
	env := []string{"NATS_URL=" + url}
	src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return bus.Health{CPUUsage: 10, MemoryUsage: 10}, nil })
	for _, id := range []string{"gray-a", "gray-b", "gray-c"} {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		rep, err := bus.NewReporter(nc, id, src, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rep.Close() })
	}
	watch := start(t, nil, "watch", "--server", url)
	waitFor(t, 10*time.Second, "watch to show the joins", func() bool { return strings.Contains(watch.stdout.String(), "gray-c") })

	// A node that says it answers probes every 100 ms, and is gone.
	r.report(t, "ghost", bus.Health{CPUUsage: 1, MemoryUsage: 1, Interval: 100 * time.Millisecond, Probe: true})
	waitFor(t, 10*time.Second, "watch to say why ghost left", func() bool {
		return strings.Contains(watch.stdout.String(), "  ghost down: no responders to probe\n")
	})

	var callers []*bus.Client
	for _, name := range []string{"svc-a", "svc-b"} {
		nc, err := nats.Connect(url, nats.Name(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		c, err := bus.NewClient(nc)
		if err != nil {
			t.Fatal(err)
		}
		callers = append(callers, c)
	}
	for i := range 5 {
		if err := callers[i%2].ReportFailure(context.Background(), "gray-a", bus.WithReason("reset by peer"), bus.WithAck()); err != nil {
			t.Fatal(err)
		}
	}
	ejected := regexp.MustCompile(`  gray-a ejected: 5 failures from 2 callers \(last: reset by peer\), back in (2\d|30) s\n`)
	waitFor(t, 10*time.Second, "watch to say why gray-a left", func() bool { return ejected.MatchString(watch.stdout.String()) })

	out, _, code := runCmd(t, env, "status")
	if code != 0 || !strings.Contains(out, "no: down: no responders to probe") || !regexp.MustCompile(`no: ejected: 5 failures from 2 callers \(last: reset by peer\), back in (2\d|30) s`).MatchString(out) {
		t.Fatalf("status: %d\n%s", code, out)
	}
	m := r.metrics(t)
	for _, want := range []string{`natsroute_ejections_total{outcome="ejected"} 1`, `natsroute_ejected_members{pool="default"} 1`, `natsroute_members_down_total{reason="no_responders"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestReportFailureCmd: router report-failure publishes on route.feedback
// exactly the feedback its flags say, flags before or after the node; with
// --ack it waits for a router, exits 1 when none answers, and prints the
// acknowledgement of one that does, which probes the node.
func TestReportFailureCmd(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync(bus.SubjectFeedback)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	env := []string{"NATS_URL=" + s.ClientURL()}
	for _, c := range []struct {
		args []string
		want bus.Feedback
		out  string
	}{
		{[]string{"--pool", "cache", "--caller", "svc-a", "--reason", "connection refused", "node-1"},
			bus.Feedback{Node: "node-1", Pool: "cache", Caller: "svc-a", Reason: "connection refused"},
			"reported node-1 failed in pool cache (reason \"connection refused\"): published on route.feedback"},
		{[]string{"node-2", "--reason", "timeout"}, // flags after the node; the connection names the caller
			bus.Feedback{Node: "node-2", Caller: "natsroute-report-failure", Reason: "timeout"},
			"reported node-2 failed in pool default (reason \"timeout\"): published on route.feedback"},
	} {
		out, errOut, code := runCmd(t, env, append([]string{"report-failure"}, c.args...)...)
		if code != 0 || !strings.HasPrefix(out, c.out) {
			t.Fatalf("report-failure %q: exit %d, stdout %q, stderr %q; want 0 and %q", c.args, code, out, errOut, c.out)
		}
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("report-failure %q: nothing on %s: %v", c.args, bus.SubjectFeedback, err)
		}
		f, err := bus.DecodeFeedback(m.Data, m.Header)
		if err != nil || f != c.want || m.Reply != "" {
			t.Fatalf("report-failure %q sent %+v (reply subject %q), %v; want %+v and no reply subject", c.args, f, m.Reply, err, c.want)
		}
	}
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{nil, 2, "router: missing node: router report-failure [flags] NODE\n"},
		{[]string{"a", "b"}, 2, "router: unexpected arguments [\"b\"]\n"},
		{[]string{"bad.id"}, 2, "invalid node id"},
		{[]string{"--reason", strings.Repeat("r", 300), "node-1"}, 2, "reason is 300 bytes"},
	} {
		if out, errOut, code := runCmd(t, env, append([]string{"report-failure"}, c.args...)...); code != c.code || !strings.Contains(errOut, c.err) || out != "" {
			t.Errorf("report-failure %q: exit %d, stdout %q, stderr %q; want %d and %q", c.args, code, out, errOut, c.code, c.err)
		}
	}
	if m, err := sub.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("a refused report-failure sent %q", m.Data)
	}
	// --ack with no router: nothing answers.
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCmd(t, env, "report-failure", "--ack", "node-1"); code != 1 || !strings.Contains(errOut, "is a router running?") {
		t.Fatalf("--ack without a router: exit %d, stderr %q", code, errOut)
	}

	// --ack against a router: a node that said it answers probes and is
	// gone is probed at once and taken down.
	r := startMonitoredRouter(t)
	r.report(t, "ghost", bus.Health{CPUUsage: 1, MemoryUsage: 1, Interval: time.Hour, Probe: true})
	routerEnv := []string{"NATS_URL=" + r.nc.ConnectedUrl()}
	waitFor(t, 10*time.Second, "ghost on the ring", func() bool {
		out, _, code := runCmd(t, routerEnv, "select", "--key", "k")
		return code == 0 && strings.TrimSpace(out) == "ghost"
	})
	out, errOut, code := runCmd(t, routerEnv, "report-failure", "--ack", "--reason", "connection refused", "ghost")
	if want := "reported ghost failed in pool default (reason \"connection refused\"): a router acknowledged it\n"; code != 0 || out != want {
		t.Fatalf("--ack: exit %d, stdout %q, stderr %q; want %q", code, out, errOut, want)
	}
	waitFor(t, 10*time.Second, "the feedback, its probe and the down on /metrics", func() bool {
		m := r.metrics(t)
		return strings.Contains(m, `natsroute_feedback_total{outcome="probed"} 1`) &&
			strings.Contains(m, `natsroute_probes_total{result="no_responders"} 1`) &&
			strings.Contains(m, `natsroute_members_down_total{reason="no_responders"} 1`)
	})
}
