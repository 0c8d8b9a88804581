package main

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

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
