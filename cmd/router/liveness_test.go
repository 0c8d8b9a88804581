package main

import (
	"errors"
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
