package ring

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// ShedBackoff is what ShedPolicy remembers about one member between calls:
// when its shed last rose and fell, and how many falls in a row had to be
// undone. Next itself keeps no state: the caller holds one ShedBackoff per
// member, feeds every change of the member's shed to ShedPolicy.Observe,
// and tells Next which members are held (MemberLoad.Hold, from Holds).
//
// The state is derived from the ring document, not carried in it: it is a
// function of the shed values a member had in the documents a router
// applied, in order, and of when it applied each. Every replica sees that
// sequence (it is what dates Pending), so the state needs no wire change and
// no agreement of its own: replicas that applied the same documents hold the
// same state, up to the moments each applied them (milliseconds apart,
// against holds of minutes). The price: a router that starts knows no
// history, and starts every member at no fallbacks. While it disagrees with
// a replica that has seen more, a member that holds a hot key may turn a few
// more times, at most once per doubling of the backoff (three times with
// the defaults): both count every fallback from then on, and Fallbacks stops
// at the count whose hold is MaxBackoff, so the two states meet again.
// Carrying the state in the document would spare that, at the cost of a
// field that every reader in every language must accept.
//
// The zero value is a member with no history.
type ShedBackoff struct {
	// Fallbacks is how many falls in a row were undone, as of LastFallback
	// (ShedPolicy.Fallbacks gives the count that still holds later). A fall
	// is undone by a rise less than Quiet after it. It stops at the count
	// whose hold is MaxBackoff.
	Fallbacks int

	// LastFallback is when the last fall was undone.
	LastFallback time.Time

	// HoldUntil is the earliest the shed may fall again.
	HoldUntil time.Time

	// LastRise and LastFall are when the shed last rose and last fell.
	LastRise, LastFall time.Time
}

// Changed is when the member's shed last changed (zero: no change seen).
func (b ShedBackoff) Changed() time.Time {
	if b.LastFall.After(b.LastRise) {
		return b.LastFall
	}
	return b.LastRise
}

// Holds reports whether the member's shed may not fall at now. Set
// MemberLoad.Hold from it.
func (b ShedBackoff) Holds(now time.Time) bool { return now.Before(b.HoldUntil) }

// Observe returns b updated for a change of the member's shed from old to
// new, applied at at. Call it for every member whose shed differs between
// the document the router held and the one it applies (a member new to the
// document had 0, one that left has 0), and for no other.
//
// A rise less than Quiet after a fall, with no rise between, undoes that
// fall: the member crossed its capacity again. It counts a fallback (after
// forgiving one for each full Quiet since the last) and holds the member's
// next fall for Backoff, doubled for each fallback before it in the row, at
// most MaxBackoff. The policy is assumed valid (see Validate).
func (p ShedPolicy) Observe(b ShedBackoff, old, new float64, at time.Time) ShedBackoff {
	p = p.withDefaults()
	switch {
	case new > old:
		if b.LastFall.After(b.LastRise) && at.Sub(b.LastFall) < p.Quiet {
			n := min(p.Fallbacks(b, at)+1, p.maxFallbacks())
			b.Fallbacks, b.LastFallback = n, at
			b.HoldUntil = at.Add(p.backoff(n))
		}
		b.LastRise = at
	case new < old:
		b.LastFall = at
	}
	return b
}

// Fallbacks is how many of b's fallbacks still count at now: one is
// forgiven for each full Quiet period since the last.
func (p ShedPolicy) Fallbacks(b ShedBackoff, now time.Time) int {
	p = p.withDefaults()
	quiet := int64(now.Sub(b.LastFallback) / p.Quiet)
	switch {
	case b.Fallbacks <= 0 || quiet >= int64(b.Fallbacks):
		return 0
	case quiet <= 0:
		return b.Fallbacks
	}
	return b.Fallbacks - int(quiet)
}

// backoff is the hold after the n-th fallback in a row (n >= 1): Backoff,
// doubled n − 1 times, at most MaxBackoff.
func (p ShedPolicy) backoff(n int) time.Duration {
	d := p.Backoff
	for ; n > 1 && d < p.MaxBackoff; n-- {
		d *= 2
	}
	return min(d, p.MaxBackoff)
}

// maxFallbacks is the count whose hold is MaxBackoff: counting further
// would change no hold, only make forgiving take longer.
func (p ShedPolicy) maxFallbacks() int {
	n := 1
	for p.backoff(n) < p.MaxBackoff {
		n++
	}
	return n
}

// ShedDirection is where a member's shed is going, for operators.
type ShedDirection int

const (
	// ShedNone: the member sheds nothing.
	ShedNone ShedDirection = iota
	// ShedRising: the shed's last change was a rise.
	ShedRising
	// ShedFalling: the shed's last change was a fall.
	ShedFalling
	// ShedHolding: a fall was undone lately, and the shed may not fall
	// before ShedStatus.HoldUntil.
	ShedHolding
)

func (d ShedDirection) String() string {
	switch d {
	case ShedNone:
		return "none"
	case ShedRising:
		return "rising"
	case ShedFalling:
		return "falling"
	case ShedHolding:
		return "holding"
	}
	return "ShedDirection(" + strconv.Itoa(int(d)) + ")"
}

// ShedStatus describes one member's shed at a moment, for status pages and
// explanations. String renders it; a caller may render the fields instead.
type ShedStatus struct {
	At        time.Time     // the moment described
	Shed      float64       // the member's shed in the document
	Direction ShedDirection // ShedHolding, while it holds, wins over the last change's direction

	// Changed is when the shed last changed (zero: no change seen).
	Changed time.Time

	// Fallbacks is how many falls in a row were undone, as they count at
	// At, and LastFallback when the last one was.
	Fallbacks    int
	LastFallback time.Time

	// HoldUntil is the earliest the shed may fall, when ShedHolding.
	HoldUntil time.Time
}

// Describe says where a member's shed is going at now, from its backoff
// state and its shed in the document.
func (p ShedPolicy) Describe(b ShedBackoff, shed float64, now time.Time) ShedStatus {
	s := ShedStatus{At: now, Shed: shed, Fallbacks: p.Fallbacks(b, now), LastFallback: b.LastFallback, Changed: b.Changed()}
	fell := b.LastFall.After(b.LastRise)
	switch {
	case !(shed > 0):
		s.Direction = ShedNone
	case b.Holds(now):
		s.Direction, s.HoldUntil = ShedHolding, b.HoldUntil
	case fell:
		s.Direction = ShedFalling
	default:
		s.Direction = ShedRising
	}
	return s
}

// String renders s for operators: "no shed", "shed 30 %, rising",
// "shed 30 %, falling" or "shed 30 %, holding: fell back 2× (the last 6 min
// ago), next try in 4 min". A wait is rounded up, a time ago down.
func (s ShedStatus) String() string {
	if s.Direction == ShedNone {
		return "no shed"
	}
	pct := strconv.FormatFloat(math.Round(s.Shed*1e4)/100, 'f', -1, 64) // 4 decimals at most
	if s.Direction != ShedHolding {
		return fmt.Sprintf("shed %s %%, %s", pct, s.Direction)
	}
	return fmt.Sprintf("shed %s %%, holding: fell back %d× (the last %s ago), next try in %s",
		pct, s.Fallbacks, roughDuration(s.At.Sub(s.LastFallback), false), roughDuration(s.HoldUntil.Sub(s.At), true))
}

// roughDuration writes d in whole seconds under a minute and in whole
// minutes from there ("45 s", "4 min", "1 h 5 min"), rounded up if up and
// down otherwise.
func roughDuration(d time.Duration, up bool) string {
	d = max(d, 0)
	unit := time.Second
	if d >= time.Minute {
		unit = time.Minute
	}
	n := int64(d / unit)
	if up && d%unit != 0 {
		n++
	}
	switch {
	case unit == time.Second:
		return fmt.Sprintf("%d s", n)
	case n < 60:
		return fmt.Sprintf("%d min", n)
	case n%60 == 0:
		return fmt.Sprintf("%d h", n/60)
	}
	return fmt.Sprintf("%d h %d min", n/60, n%60)
}
