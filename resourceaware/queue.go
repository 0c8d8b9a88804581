package resourceaware

import "math"

// Times in the stale list and snapshots are int64
// nanoseconds since the Balancer's epoch (see Balancer.since).

// never is the time of something that is not due.
const never = math.MaxInt64

// staleList holds the nodes with a fresh report, ordered by the time their
// report goes stale (received + Staleness). A heartbeat moves its node to
// the tail: O(1), since reports arrive in receive-time order (a report
// received before k others, possible only with a clock that runs backwards,
// walks past them). The first selection after the head's time pops only the
// nodes that are due, so going stale costs O(k) for k nodes, never a pass
// over all of them.
type staleList struct {
	head, tail *node
}

// set puts n in the list at time at, or moves it there.
func (l *staleList) set(n *node, at int64) {
	l.remove(n)
	n.staleAt, n.inStale = at, true
	p := l.tail
	for p != nil && p.staleAt > at {
		p = p.stalePrev
	}
	n.stalePrev = p
	if p == nil {
		n.staleNext, l.head = l.head, n
	} else {
		n.staleNext, p.staleNext = p.staleNext, n
	}
	if n.staleNext == nil {
		l.tail = n
	} else {
		n.staleNext.stalePrev = n
	}
}

// remove takes n out of the list if it is there.
func (l *staleList) remove(n *node) {
	if !n.inStale {
		return
	}
	if n.stalePrev == nil {
		l.head = n.staleNext
	} else {
		n.stalePrev.staleNext = n.staleNext
	}
	if n.staleNext == nil {
		l.tail = n.stalePrev
	} else {
		n.staleNext.stalePrev = n.stalePrev
	}
	n.stalePrev, n.staleNext, n.inStale = nil, nil, false
}

// first returns the time the head goes stale, or never.
func (l *staleList) first() int64 {
	if l.head == nil {
		return never
	}
	return l.head.staleAt
}
