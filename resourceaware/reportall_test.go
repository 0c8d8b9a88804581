package resourceaware

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// TestReportAllIsReportOneByOne: a batch leaves the balancer exactly as the
// same reports one by one would, for new and known nodes alike, and picks
// follow the same bits; an invalid report in a batch changes nothing.
func TestReportAllIsReportOneByOne(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	cfg := Config{Now: clock, SlowStartWindow: 10 * time.Second, CPUMarginPercent: 5}
	cfg.Rand = rand.NewPCG(9, 9)
	one, _ := New(cfg)
	cfg.Rand = rand.NewPCG(9, 9)
	all, _ := New(cfg)
	rnd := rand.New(rand.NewPCG(3, 4))
	for round := range 5 {
		var ids []string
		var reps []Report
		for range 200 {
			id := fmt.Sprintf("n%03d", rnd.IntN(300))
			r := Report{CPUUsage: float64(rnd.IntN(100)), MemoryUsage: 20, ActiveConnections: int64(rnd.IntN(20000)), Weight: float64(1 + rnd.IntN(3))}
			ids, reps = append(ids, id), append(reps, r)
			if err := one.Report(id, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := all.ReportAll(ids, reps); err != nil {
			t.Fatal(err)
		}
		if a, b := one.Nodes(), all.Nodes(); !reflect.DeepEqual(a, b) {
			t.Fatalf("round %d: one by one and batched differ", round)
		}
		now = now.Add(3 * time.Second)
	}
	for i := range 1000 { // the same random bits give the same picks
		a, err1 := one.Select(nil)
		b, err2 := all.Select(nil)
		if a != b || err1 != nil || err2 != nil {
			t.Fatalf("pick %d: %s vs %s (%v, %v)", i, a, b, err1, err2)
		}
	}
	before := all.Nodes()
	err := all.ReportAll([]string{"n000", "fresh"}, []Report{{CPUUsage: 1}, {CPUUsage: 101}})
	if !errors.Is(err, ErrInvalidReport) || !reflect.DeepEqual(before, all.Nodes()) || all.Known("fresh") {
		t.Fatalf("an invalid batch: %v, or it changed something", err)
	}
	if !all.Known("n000") && !one.Known("n000") {
		t.Fatal("Known")
	}
}

// TestNewestReportWins: a report received before the one a node holds
// changes nothing, through Report and ReportAll alike, and staleness runs
// from when a report was received, not from when it was handed in.
func TestNewestReportWins(t *testing.T) {
	now := time.Unix(1000, 0)
	b, _ := New(Config{Now: func() time.Time { return now }})
	t1, t2 := now.Add(-2*time.Second), now.Add(-time.Second)
	if err := b.Report("a", Report{CPUUsage: 97, Received: t2}); err != nil {
		t.Fatal(err)
	}
	if err := b.Report("a", Report{CPUUsage: 20, Received: t1}); err != nil {
		t.Fatal(err)
	}
	if err := b.ReportAll([]string{"a", "b"}, []Report{{CPUUsage: 21, Received: t1}, {CPUUsage: 30, Received: t1}}); err != nil {
		t.Fatal(err)
	}
	got := map[string]NodeState{}
	for _, n := range b.Nodes() {
		got[n.ID] = n
	}
	if a := got["a"]; a.Report.CPUUsage != 97 || a.Eligible || a.Age != time.Second {
		t.Fatalf("a: cpu %v eligible %v age %v; want the newer report (97, excluded, 1s old)", a.Report.CPUUsage, a.Eligible, a.Age)
	}
	if bb := got["b"]; bb.Report.CPUUsage != 30 || bb.Age != 2*time.Second {
		t.Fatalf("b: cpu %v age %v; want 30, 2s", bb.Report.CPUUsage, bb.Age)
	}
	// b's report was received 2 s ago: stale 30 s after that, not after now.
	now = t1.Add(DefaultStaleness)
	if n := stateOf(b, "b"); n.Stale {
		t.Fatal("b stale at exactly Staleness after it was received")
	}
	now = now.Add(time.Nanosecond)
	if n := stateOf(b, "b"); !n.Stale {
		t.Fatal("b fresh past Staleness after it was received")
	}
	// Equal times: the later call wins (ReportAll's "listed twice").
	if err := b.Report("a", Report{CPUUsage: 50, Received: t2}); err != nil {
		t.Fatal(err)
	}
	if n := stateOf(b, "a"); n.Report.CPUUsage != 50 {
		t.Fatalf("a: cpu %v after a report received at the same time; want 50", n.Report.CPUUsage)
	}
}

func stateOf(b *Balancer, id string) NodeState {
	for _, n := range b.Nodes() {
		if n.ID == id {
			return n
		}
	}
	return NodeState{}
}
