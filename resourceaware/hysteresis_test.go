package resourceaware

import (
	"testing"
	"time"
)

// TestHysteresis walks one node through the table (threshold 90,
// margin 5: excluded at 90.001, still excluded at 88, readmitted at 84.9)
// and the edges around it, for each threshold.
func TestHysteresis(t *testing.T) {
	type step struct {
		advance    time.Duration // on the clock before the report
		r          Report
		eligible   bool
		recovering bool
		reason     string
	}
	cpu := func(v float64) Report { return Report{CPUUsage: v} }
	mem := func(v float64) Report { return Report{MemoryUsage: v} }
	conns := func(v int64) Report { return Report{ActiveConnections: v} }
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"cpu, margin 5", Config{CPUMarginPercent: 5}, []step{
			{0, cpu(88), true, false, ""}, // never excluded: 88 is fine
			{0, cpu(90), true, false, ""},
			{0, cpu(90.001), false, false, "cpu 90.0% > 90.0%"},
			{0, cpu(88), false, true, "recovering: cpu 88.0% > 85.0%"},
			{0, cpu(85.001), false, true, "recovering: cpu 85.0% > 85.0%"},
			{0, cpu(84.9), true, false, ""},
			{0, cpu(88), true, false, ""}, // readmitted: 88 is fine again
			{0, cpu(95), false, false, "cpu 95.0% > 90.0%"},
			{0, cpu(85), true, false, ""}, // exactly threshold − margin readmits
		}},
		{"stale resets it", Config{CPUMarginPercent: 5}, []step{
			{0, cpu(95), false, false, "cpu 95.0% > 90.0%"},
			{0, cpu(88), false, true, "recovering: cpu 88.0% > 85.0%"},
			{30*time.Second + 1, cpu(88), true, false, ""}, // the last report went stale: neutral, no memory of it
		}},
		{"at exactly Staleness it holds", Config{CPUMarginPercent: 5}, []step{
			{0, cpu(95), false, false, "cpu 95.0% > 90.0%"},
			{30 * time.Second, cpu(88), false, true, "recovering: cpu 88.0% > 85.0%"},
		}},
		{"memory, margin 10", Config{MemoryMarginPercent: 10, MemoryThresholdPercent: 80}, []step{
			{0, mem(80.5), false, false, "memory 80.5% > 80.0%"},
			{0, mem(75), false, true, "recovering: memory 75.0% > 70.0%"},
			{0, mem(70), true, false, ""},
		}},
		{"connections, margin 1000", Config{ConnectionsMargin: 1000}, []step{
			{0, conns(10_001), false, false, "connections 10001 > 10000"},
			{0, conns(9_500), false, true, "recovering: connections 9500 > 9000"},
			{0, conns(9_000), true, false, ""},
		}},
		{"margins are per threshold", Config{CPUMarginPercent: 5}, []step{
			{0, mem(95), false, false, "memory 95.0% > 90.0%"},
			{0, mem(89), true, false, ""}, // no memory margin: the seed's rule
		}},
		{"no margin is the seed", Config{}, []step{
			{0, cpu(90.001), false, false, "cpu 90.0% > 90.0%"},
			{0, cpu(89.999), true, false, ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk := newTest(t, tt.cfg)
			report(t, b, "ok", healthy)
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				report(t, b, "ok", healthy) // keeps a fresh, eligible peer
				report(t, b, "x", s.r)
				st := b.Nodes()[1]
				if st.ID != "x" || st.Eligible != s.eligible || st.Recovering != s.recovering || st.Reason != s.reason {
					t.Fatalf("step %d (%+v): eligible=%v recovering=%v reason=%q, want %v %v %q", i, s.r, st.Eligible, st.Recovering, st.Reason, s.eligible, s.recovering, s.reason)
				}
				want := []string{"ok"}
				if s.eligible {
					want = []string{"ok", "x"}
				}
				if known, eligible := b.Counts(); known != 2 || eligible != len(want) {
					t.Fatalf("step %d: Counts() = %d, %d, want 2, %d", i, known, eligible, len(want))
				}
				if got := picked(t, b, nil); len(got) != len(want) {
					t.Fatalf("step %d: picked %v, want %v", i, got, want)
				}
			}
		})
	}
}

// TestHysteresisForget: a node that leaves and comes back starts without
// hysteresis.
func TestHysteresisForget(t *testing.T) {
	b, _ := newTest(t, Config{CPUMarginPercent: 5})
	report(t, b, "x", Report{CPUUsage: 95})
	b.Forget("x")
	report(t, b, "x", Report{CPUUsage: 88})
	if st := b.Nodes()[0]; !st.Eligible || st.Recovering {
		t.Fatalf("after Forget: %+v, want eligible", st)
	}
}
