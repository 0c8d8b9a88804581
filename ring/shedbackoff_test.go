package ring

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// at is t0 plus minutes.
func at(minutes float64) time.Time {
	return t0.Add(time.Duration(minutes * float64(time.Minute)))
}

// fallBack feeds Observe a fall at minute m and the rise that undoes it a
// few seconds later, and returns the state.
func fallBack(p ShedPolicy, b ShedBackoff, m float64) ShedBackoff {
	b = p.Observe(b, 0.3, 0.25, at(m))
	return p.Observe(b, 0.25, 0.3, at(m+0.1))
}

// TestShedBackoffDoubles: each fall undone holds the next for twice as
// long, from 10 minutes up to 40, and the count stops where the hold does.
func TestShedBackoffDoubles(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	b := p.Observe(ShedBackoff{}, 0, 0.3, at(0)) // the first rise undoes nothing
	if b.Fallbacks != 0 || b.Holds(at(0)) {
		t.Fatalf("after the first rise: %+v, want no fallback and no hold", b)
	}
	b = p.Observe(b, 0.3, 0.25, at(1)) // a fall alone holds nothing either
	if b.Fallbacks != 0 || b.Holds(at(1)) {
		t.Fatalf("after a fall: %+v, want no fallback and no hold", b)
	}
	b = p.Observe(b, 0.25, 0.3, at(1.1))
	// Each try comes when the hold before it is over.
	for i, want := range []struct {
		fallbacks int
		hold      time.Duration
	}{{1, 10 * time.Minute}, {2, 20 * time.Minute}, {3, 40 * time.Minute}, {3, 40 * time.Minute}, {3, 40 * time.Minute}} {
		if i > 0 {
			next := b.HoldUntil.Sub(t0).Minutes()
			if b.Holds(at(next - 0.01)) {
				b = fallBack(p, b, next)
			} else {
				t.Fatalf("try %d: still held at %v", i, at(next-0.01))
			}
		}
		if b.Fallbacks != want.fallbacks || b.HoldUntil.Sub(b.LastFallback) != want.hold {
			t.Fatalf("fallback %d: %d counted, held %v; want %d and %v", i+1, b.Fallbacks, b.HoldUntil.Sub(b.LastFallback), want.fallbacks, want.hold)
		}
		if !b.Holds(b.HoldUntil.Add(-time.Nanosecond)) || b.Holds(b.HoldUntil) {
			t.Fatalf("fallback %d: Holds does not end at HoldUntil %v", i+1, b.HoldUntil)
		}
	}

	// The cap and the first hold follow the policy.
	q := ShedPolicy{Factor: 1.25, Backoff: time.Minute, MaxBackoff: 5 * time.Minute, Quiet: 10 * time.Minute}
	var holds []time.Duration
	b = q.Observe(ShedBackoff{}, 0, 0.3, at(0))
	for m := 1.0; m < 30; m += 6 {
		b = fallBack(q, b, m)
		holds = append(holds, b.HoldUntil.Sub(b.LastFallback))
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	if len(holds) != len(want) {
		t.Fatalf("holds %v, want %v", holds, want)
	}
	for i := range want {
		if holds[i] != want[i] {
			t.Fatalf("holds %v, want %v", holds, want)
		}
	}
}

// TestShedBackoffForgives: each full Quiet period after the last fallback
// forgives one, so the next hold is shorter; a rise long after a fall
// undoes nothing.
func TestShedBackoffForgives(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	b := p.Observe(ShedBackoff{}, 0, 0.3, at(0))
	for _, m := range []float64{1, 12, 33} {
		b = fallBack(p, b, m)
	}
	last := 33.1
	for _, tt := range []struct {
		after float64 // minutes after the last fallback
		want  int
	}{{0, 3}, {59, 3}, {60, 2}, {119, 2}, {120, 1}, {180, 0}, {1000, 0}} {
		if got := p.Fallbacks(b, at(last+tt.after)); got != tt.want {
			t.Errorf("%v min after the last fallback: %d count, want %d", tt.after, got, tt.want)
		}
	}

	// 2 h 30 min later the member falls, and a minute after that the fall
	// is undone: one fallback still counted, so this is the second (20 min).
	c := fallBack(p, b, last+150)
	if c.Fallbacks != 2 || c.HoldUntil.Sub(c.LastFallback) != 20*time.Minute {
		t.Fatalf("after 2.5 quiet hours: %d fallbacks, held %v; want 2 and 20m", c.Fallbacks, c.HoldUntil.Sub(c.LastFallback))
	}
	// After 3 quiet hours it is the first again.
	c = fallBack(p, b, last+180)
	if c.Fallbacks != 1 || c.HoldUntil.Sub(c.LastFallback) != 10*time.Minute {
		t.Fatalf("after 3 quiet hours: %d fallbacks, held %v; want 1 and 10m", c.Fallbacks, c.HoldUntil.Sub(c.LastFallback))
	}

	// A shed that fell to nothing and rises again more than Quiet later
	// (a new hot spot) counts no fallback and holds nothing.
	d := p.Observe(ShedBackoff{}, 0, 0.3, at(0))
	d = p.Observe(d, 0.3, 0, at(10))
	d = p.Observe(d, 0, 0.2, at(70))
	if d.Fallbacks != 0 || d.Holds(at(70)) {
		t.Fatalf("a rise an hour after a fall: %+v, want no fallback", d)
	}
	// One less than Quiet after it does.
	d = p.Observe(d, 0.2, 0, at(80))
	d = p.Observe(d, 0, 0.2, at(139))
	if d.Fallbacks != 1 || !d.Holds(at(148)) {
		t.Fatalf("a rise 59 min after a fall: %+v, want a fallback", d)
	}
	// Rises that continue a rise count once.
	d = p.Observe(d, 0.2, 0.25, at(139.1))
	if d.Fallbacks != 1 || d.HoldUntil != at(149) {
		t.Fatalf("a second rise: %+v, want the same one fallback", d)
	}
}

// TestShedBackoffReplicas: the state is a function of the shed changes and
// their times, so two replicas that apply the same documents agree; one
// that starts late (knowing no history) agrees again once it has seen as
// many fallbacks as it takes the hold to reach MaxBackoff.
func TestShedBackoffReplicas(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	type change struct {
		old, new float64
		at       float64
	}
	var changes []change
	changes = append(changes, change{0, 0.05, 0}, change{0.05, 0.1, 0.1})
	for _, m := range []float64{1, 11.2, 31.4, 71.6, 111.8, 152} { // each try when the hold is over
		changes = append(changes, change{0.1, 0.05, m}, change{0.05, 0.1, m + 0.1})
	}
	var a, b, late ShedBackoff
	for i, ch := range changes {
		a = p.Observe(a, ch.old, ch.new, at(ch.at))
		b = p.Observe(b, ch.old, ch.new, at(ch.at))
		if i >= 6 { // starts after two fallbacks
			late = p.Observe(late, ch.old, ch.new, at(ch.at))
		}
	}
	if a != b {
		t.Fatalf("two replicas, same changes: %+v and %+v", a, b)
	}
	if late != a {
		t.Fatalf("a late replica after three fallbacks: %+v, the others %+v", late, a)
	}
}

func TestShedStatus(t *testing.T) {
	p := ShedPolicy{Factor: 1.25}
	rising := p.Observe(ShedBackoff{}, 0, 0.3, at(0))
	falling := p.Observe(rising, 0.3, 0.25, at(5))
	held := fallBack(p, fallBack(p, rising, 1), 12) // two fallbacks, the last at 12.1: held until 32.1
	tests := []struct {
		b    ShedBackoff
		shed float64
		now  float64
		dir  ShedDirection
		want string
	}{
		{ShedBackoff{}, 0, 0, ShedNone, "no shed"},
		{falling, 0, 6, ShedNone, "no shed"},
		{rising, 0.3, 1, ShedRising, "shed 30 %, rising"},
		{falling, 0.25, 6, ShedFalling, "shed 25 %, falling"},
		{held, 0.3, 18.1, ShedHolding, "shed 30 %, holding: fell back 2× (the last 6 min ago), next try in 14 min"},
		{held, 0.3, 28.5, ShedHolding, "shed 30 %, holding: fell back 2× (the last 16 min ago), next try in 4 min"},
		{held, 0.3, 32, ShedHolding, "shed 30 %, holding: fell back 2× (the last 19 min ago), next try in 6 s"},
		{held, 0.123, 32.1, ShedRising, "shed 12.3 %, rising"},
		{held, 0.3, 80, ShedRising, "shed 30 %, rising"},
		{falling, 0.0007, 6, ShedFalling, "shed 0.07 %, falling"},
	}
	for _, tt := range tests {
		s := p.Describe(tt.b, tt.shed, at(tt.now))
		if s.Direction != tt.dir || s.String() != tt.want {
			t.Errorf("at %v min: %v, %q; want %v, %q", tt.now, s.Direction, s, tt.dir, tt.want)
		}
	}
	s := p.Describe(held, 0.3, at(20))
	if s.Fallbacks != 2 || s.HoldUntil != at(32.1) || s.LastFallback != at(12.1) || s.Changed != at(12.1) {
		t.Errorf("held: %+v", s)
	}
	if s := p.Describe(held, 0.3, held.LastFallback.Add(time.Hour)); s.Fallbacks != 1 {
		t.Errorf("an hour after the last fallback: %d counted, want 1", s.Fallbacks)
	}
	for _, tt := range []struct {
		d    time.Duration
		up   bool
		want string
	}{
		{-time.Second, true, "0 s"},
		{59 * time.Second, false, "59 s"},
		{90 * time.Second, false, "1 min"},
		{90 * time.Second, true, "2 min"},
		{time.Hour, true, "1 h"},
		{time.Hour + 5*time.Minute + time.Second, false, "1 h 5 min"},
	} {
		if got := roughDuration(tt.d, tt.up); got != tt.want {
			t.Errorf("roughDuration(%v, %v) = %q, want %q", tt.d, tt.up, got, tt.want)
		}
	}
	if got := ShedDirection(7).String(); got != "ShedDirection(7)" {
		t.Errorf("ShedDirection(7) = %q", got)
	}
}
