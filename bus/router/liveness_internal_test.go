package router

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus"
)

// TestDownLeavesAsOnALeave: a member that probes find down is left out of
// its pools' documents (desired) and forgotten by ResourceAware; a report
// that came after the probe was sent keeps it in; its next report brings it
// back. The clock is injected.
func TestDownLeavesAsOnALeave(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Now = func() time.Time { return now }
	r := testRouter(t, cfg)
	r.started = now
	h := bus.Health{CPUUsage: 1, MemoryUsage: 1, Interval: time.Second, Probe: true, Pools: []string{"p"}}
	for _, n := range []string{"a", "b"} {
		for _, s := range r.Strategies() {
			if err := s.Report(n, h); err != nil {
				t.Fatal(err)
			}
		}
	}
	p := r.pool("p")
	members := func() string {
		d := p.desired(bus.NewRingDocument(150), 1)
		out := ""
		for _, n := range d.Nodes {
			out += n.ID
		}
		return out
	}
	if got := members(); got != "ab" || p.settle().Len() != 2 {
		t.Fatalf("members %q, balancer %d", got, p.settle().Len())
	}

	// A probe of a sent at now; b reported after its probe was sent.
	sent := now
	now = now.Add(time.Millisecond)
	if err := r.observe("b", h); err != nil {
		t.Fatal(err)
	}
	r.live.markDown("a", downNoResponders, "down: no responders to probe", sent)
	r.live.markDown("b", downNoResponders, "down: no responders to probe", sent)
	if got := members(); got != "b" {
		t.Fatalf("after a down: members %q, want b", got)
	}
	if p.settle().Known("a") || !p.settle().Known("b") {
		t.Fatal("ResourceAware still knows the down node, or forgot the live one")
	}
	if got := r.live.downReason("a"); got != "down: no responders to probe" {
		t.Fatalf("down reason %q", got)
	}
	if ns := p.withOut(p.settle().Nodes()); len(ns) != 2 || ns[0].ID != "a" {
		t.Fatalf("route.nodes would list %+v", ns)
	}
	if r.Stats().MembersDown != 1 {
		t.Fatalf("downs %d, want 1", r.Stats().MembersDown)
	}

	// Its next report brings it back, and puts it back on the schedule.
	now = now.Add(time.Second)
	for _, s := range r.Strategies() {
		if err := s.Report("a", h); err != nil {
			t.Fatal(err)
		}
	}
	if got := members(); got != "ab" || !p.settle().Known("a") || r.live.downReason("a") != "" {
		t.Fatalf("after a report: members %q, known %v", got, p.settle().Known("a"))
	}
	if r.live.sched.Len() != 2 {
		t.Fatalf("%d nodes on the probe schedule, want 2", r.live.sched.Len())
	}
}
