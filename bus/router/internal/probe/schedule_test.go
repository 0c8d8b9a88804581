package probe

import (
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func isDown(down, _ bool) bool { return down }

func nodes(ts []Ticket) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Node)
	}
	return out
}

func TestProbeScheduleDue(t *testing.T) {
	s := New(1.5, 2, 1000)
	s.Seen("a", time.Second, true, t0)
	s.Seen("b", 2*time.Second, true, t0)
	s.Seen("quiet", time.Second, false, t0) // never said probe: never probed
	if at, ok := s.Next(t0); !ok || !at.Equal(t0.Add(1500*time.Millisecond)) {
		t.Fatalf("next %v %v, want +1.5s", at, ok)
	}
	if got, _ := s.Take(t0.Add(1499 * time.Millisecond)); len(got) != 0 {
		t.Fatalf("due early: %v", nodes(got))
	}
	// A report moves a's due time.
	s.Seen("a", time.Second, true, t0.Add(time.Second))
	if got, _ := s.Take(t0.Add(2 * time.Second)); len(got) != 0 {
		t.Fatalf("due after a report: %v", nodes(got))
	}
	got, _ := s.Take(t0.Add(2500 * time.Millisecond))
	if fmt.Sprint(nodes(got)) != "[a]" {
		t.Fatalf("at +2.5s due %v, want [a]", nodes(got))
	}
	// One in flight: a is not taken again, reports or not.
	s.Seen("a", time.Second, true, t0.Add(2600*time.Millisecond))
	if got, _ := s.Take(t0.Add(10 * time.Second)); fmt.Sprint(nodes(got)) != "[b]" {
		t.Fatalf("at +10s due %v, want [b] (a in flight)", nodes(got))
	}
	// a's probe times out, but a report came meanwhile: not a miss.
	if isDown(s.Result("a", t0.Add(2500*time.Millisecond), Timeout, t0.Add(3*time.Second))) {
		t.Fatal("down although a report came during the probe")
	}
	if at, _ := s.Next(t0.Add(3 * time.Second)); !at.Equal(t0.Add(3 * time.Second).Add(1500 * time.Millisecond)) {
		t.Fatalf("a due at %v", at)
	}
	// Feedback about a node that reported a moment ago: probed now, and a
	// timeout is retried at once, not after its next due time.
	s.Seen("c", time.Minute, true, t0.Add(3*time.Second))
	s.Poke("c", t0.Add(3*time.Second))
	s.Seen("c", time.Minute, true, t0.Add(3*time.Second)) // a report does not undo the poke
	g, _ := s.Take(t0.Add(3 * time.Second))
	if fmt.Sprint(nodes(g)) != "[c]" {
		t.Fatalf("poked c not taken: %v", nodes(g))
	}
	if isDown(s.Result("c", g[0].Started, Timeout, t0.Add(3500*time.Millisecond))) {
		t.Fatal("one timeout is down")
	}
	if g, _ := s.Take(t0.Add(3500 * time.Millisecond)); fmt.Sprint(nodes(g)) != "[c]" {
		t.Fatalf("timeout of c not retried at once: %v", nodes(g))
	}
	if !isDown(s.Result("c", t0.Add(3500*time.Millisecond), Timeout, t0.Add(4*time.Second))) {
		t.Fatal("two timeouts in a row are not down")
	}
	// Leaving (or probe false) takes a node off the schedule.
	s.Seen("a", time.Second, false, t0.Add(3*time.Second))
	if s.Len() != 1 { // b, in flight
		t.Fatalf("%d on the schedule, want 1", s.Len())
	}
}

func TestProbeScheduleOutcomes(t *testing.T) {
	s := New(1.5, 2, 1000)
	for _, n := range []string{"dead", "hung", "slow", "fine"} {
		s.Seen(n, time.Second, true, t0)
	}
	now := t0.Add(1500 * time.Millisecond)
	got, _ := s.Take(now)
	if len(got) != 4 {
		t.Fatalf("due %v", nodes(got))
	}
	started := got[0].Started
	after := now.Add(500 * time.Millisecond)
	if !isDown(s.Result("dead", started, NoResponders, after)) {
		t.Fatal("no responders is not down")
	}
	if isDown(s.Result("hung", started, Timeout, after)) {
		t.Fatal("one timeout is down")
	}
	if isDown(s.Result("slow", started, Timeout, after)) {
		t.Fatal("one timeout is down")
	}
	if isDown(s.Result("fine", started, Answered, after)) {
		t.Fatal("answered is down")
	}
	// The timed-out ones are probed again at once; fine is not due.
	again, _ := s.Take(after)
	if fmt.Sprint(nodes(again)) != "[hung slow]" && fmt.Sprint(nodes(again)) != "[slow hung]" {
		t.Fatalf("retried %v, want hung and slow", nodes(again))
	}
	later := after.Add(500 * time.Millisecond)
	if !isDown(s.Result("hung", after, Timeout, later)) {
		t.Fatal("two timeouts in a row are not down")
	}
	if isDown(s.Result("slow", after, Answered, later)) {
		t.Fatal("an answer after a timeout is down")
	}
	// slow's misses start over: one more timeout is not down.
	s.Take(later.Add(1500 * time.Millisecond))
	if isDown(s.Result("slow", later.Add(1500*time.Millisecond), Timeout, later.Add(2*time.Second))) {
		t.Fatal("timeouts did not start over after an answer")
	}
	// A result for a probe that is not the one in flight is ignored.
	if down, current := s.Result("slow", t0, NoResponders, later); down || current {
		t.Fatal("a stale result counted")
	}
	// An answer to a probe of a node that left meanwhile is not current:
	// the router must not take it as a report (it would undo the leave).
	s.Seen("bye", time.Second, true, t0)
	g, _ := s.Take(t0.Add(2 * time.Second))
	s.Seen("bye", 0, false, t0.Add(2*time.Second)) // its leaving report
	if down, current := s.Result("bye", g[0].Started, Answered, t0.Add(2*time.Second)); down || current {
		t.Fatalf("answer after leaving: down %v, current %v", down, current)
	}
	// Down nodes left the schedule; dead comes back with a report.
	if s.Len() != 2 {
		t.Fatalf("%d on the schedule, want 2 (fine, slow)", s.Len())
	}
	s.Seen("dead", time.Second, true, later)
	if s.Len() != 3 {
		t.Fatal("a report did not put a down node back")
	}
}

// TestProbeScheduleLazy: a report costs O(1) and leaves the heap as it
// is; a node whose heap time comes up but that reported since is moved on,
// not probed, and not counted as rate-limited.
func TestProbeScheduleLazy(t *testing.T) {
	s := New(1.5, 2, 1) // one token
	for _, n := range []string{"a", "b"} {
		s.Seen(n, time.Second, true, t0)
	}
	for i := 1; i <= 10; i++ { // a reports every second, b goes quiet
		s.Seen("a", time.Second, true, t0.Add(time.Duration(i)*time.Second))
	}
	got, limited := s.Take(t0.Add(10 * time.Second))
	if fmt.Sprint(nodes(got)) != "[b]" || limited != 0 {
		t.Fatalf("due %v (limited %d), want [b]: a reported", nodes(got), limited)
	}
	if at, _ := s.Next(t0.Add(10 * time.Second)); !at.Equal(t0.Add(11500 * time.Millisecond)) {
		t.Fatalf("a due at %v, want +11.5s", at.Sub(t0))
	}
	// A shorter interval brings a node's due time forward at once.
	s.Seen("a", 100*time.Millisecond, true, t0.Add(10*time.Second))
	if at, _ := s.Next(t0.Add(10 * time.Second)); !at.Equal(t0.Add(10150 * time.Millisecond)) {
		t.Fatalf("a due at %v after a shorter interval, want +10.15s", at.Sub(t0))
	}
}

func TestProbeScheduleRateLimit(t *testing.T) {
	s := New(1.5, 2, 100) // burst 10
	for i := range 1000 {
		s.Seen(fmt.Sprintf("n%04d", i), time.Second, true, t0)
	}
	now := t0.Add(2 * time.Second)
	got, limited := s.Take(now)
	if len(got) != 10 || limited != 990 {
		t.Fatalf("a blip: %d probes at once, %d limited; want 10 and 990", len(got), limited)
	}
	// The waiting ones are counted once, not on every look.
	if again, limited := s.Take(now); len(again) != 0 || limited != 0 {
		t.Fatalf("same instant: %d probes, %d limited", len(again), limited)
	}
	if at, ok := s.Next(now); !ok || !at.Equal(now.Add(10*time.Millisecond)) {
		t.Fatalf("next %v, want a token's wait (10ms)", at.Sub(now))
	}
	total := len(got)
	for i := 1; i <= 100; i++ { // a second at 100/s
		g, _ := s.Take(now.Add(time.Duration(i) * 10 * time.Millisecond))
		total += len(g)
	}
	if total != 110 {
		t.Fatalf("%d probes in the first second, want 110 (burst + rate)", total)
	}
}

func TestProbeSchedulePoke(t *testing.T) {
	s := New(1.5, 2, 1000)
	s.Seen("a", time.Minute, true, t0)
	if s.Poke("nobody", t0) {
		t.Fatal("poked an unknown node")
	}
	now := t0.Add(time.Second)
	if !s.Poke("a", now) {
		t.Fatal("poke refused")
	}
	if got, _ := s.Take(now); fmt.Sprint(nodes(got)) != "[a]" {
		t.Fatalf("after poke due %v", nodes(got))
	}
	if !s.Poke("a", now) { // in flight: known, nothing more
		t.Fatal("poke of a node in flight")
	}
	if got, _ := s.Take(now); len(got) != 0 {
		t.Fatalf("two in flight: %v", nodes(got))
	}
}

// BenchmarkProbeScheduleSeen: a report's cost at 10,000 members.
func BenchmarkProbeScheduleSeen(b *testing.B) {
	s := New(1.5, 2, 1000)
	ids := make([]string, 10_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%05d", i)
		s.Seen(ids[i], 5*time.Second, true, t0)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.Seen(ids[i%len(ids)], 5*time.Second, true, t0.Add(time.Duration(i)))
	}
}

// TestProbeScheduleCountsLateOnesOnce: nodes that come due while others
// wait for tokens are each counted as rate-limited once, at most markEvery
// after they began to wait, however often Take runs.
func TestProbeScheduleCountsLateOnesOnce(t *testing.T) {
	s := New(1.5, 2, 100) // burst 10
	for i := range 1000 {
		// Due from +1.5 s on, one every 2 ms.
		s.Seen(fmt.Sprintf("n%04d", i), time.Second, true, t0.Add(time.Duration(2*i)*time.Millisecond))
	}
	probed, limited := 0, 0
	end := t0.Add(4 * time.Second)
	for now := t0.Add(1500 * time.Millisecond); !now.After(end); now = now.Add(time.Millisecond) {
		got, l := s.Take(now)
		probed += len(got)
		limited += l
	}
	// By the end every node is due: the probed ones and the counted ones
	// are all of them, each once (a node probed after it was counted is
	// both; one probed as it came due is only probed).
	if probed > 1000 || limited > 1000 || probed+limited < 1000 {
		t.Fatalf("%d probed, %d counted as limited: want every one of the 1,000 due nodes in one or both, once", probed, limited)
	}
	waiting := 1000 - probed
	if limited < waiting {
		t.Fatalf("%d still wait for a token but only %d were counted", waiting, limited)
	}
}

// BenchmarkTakeLimited: one second of Take every millisecond while 50,000
// due nodes wait for tokens (100 probes a second), as after a stall at
// 100,000 members.
func BenchmarkTakeLimited(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		b.StopTimer()
		s := New(1.5, 2, 100)
		for i := range 50_000 {
			s.Seen(fmt.Sprintf("n%05d", i), time.Second, true, t0)
		}
		b.StartTimer()
		for ms := range 1000 {
			s.Take(t0.Add(2*time.Second + time.Duration(ms)*time.Millisecond))
		}
	}
}
