package resourceaware

import "math"

// Times in the stale list, the ramp queue and snapshots are int64
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

// rampQueue is a binary min-heap of ramping nodes on their next slow start
// step (keys in the heap itself, so sifting reads one array). Steps come in
// any order; node.rampIdx is each node's index, −1 when absent.
type rampQueue struct {
	items []rampEntry
}

type rampEntry struct {
	at int64
	n  *node
}

func (q *rampQueue) swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	q.items[i].n.rampIdx = int32(i)
	q.items[j].n.rampIdx = int32(j)
}

// head returns the time and node due first, or never and nil.
func (q *rampQueue) head() (int64, *node) {
	if len(q.items) == 0 {
		return never, nil
	}
	return q.items[0].at, q.items[0].n
}

// set puts n in the queue at time at, or moves it there.
func (q *rampQueue) set(n *node, at int64) {
	i := int(n.rampIdx)
	if i < 0 {
		i = len(q.items)
		n.rampIdx = int32(i)
		q.items = append(q.items, rampEntry{at, n})
	} else {
		q.items[i].at = at
	}
	if !q.down(i) {
		q.up(i)
	}
}

// remove takes n out of the queue if it is there.
func (q *rampQueue) remove(n *node) {
	i := int(n.rampIdx)
	if i < 0 {
		return
	}
	last := len(q.items) - 1
	if i != last {
		q.swap(i, last)
	}
	q.items[last] = rampEntry{}
	q.items = q.items[:last]
	n.rampIdx = -1
	if i != last && !q.down(i) {
		q.up(i)
	}
}

func (q *rampQueue) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if q.items[i].at >= q.items[p].at {
			return
		}
		q.swap(i, p)
		i = p
	}
}

// down sifts i down and reports whether it moved.
func (q *rampQueue) down(i int) bool {
	start := i
	for {
		l := 2*i + 1
		if l >= len(q.items) {
			break
		}
		m := l
		if r := l + 1; r < len(q.items) && q.items[r].at < q.items[l].at {
			m = r
		}
		if q.items[m].at >= q.items[i].at {
			break
		}
		q.swap(i, m)
		i = m
	}
	return i > start
}
