// Package probe decides when the router probes a node: a schedule of due
// times, a token bucket, and what each outcome means. It does no I/O.
package probe

import (
	"container/heap"
	"sync"
	"time"
)

// Schedule decides when each probing node is probed; it does no I/O
// and takes the time as an argument, so tests drive it with a fake clock.
//
// The control problem: a node that reports every interval I and stops
// (killed, frozen, cut off) must be noticed within about 1.5 I, yet a
// router with 10,000 members must neither spend O(members) per tick
// looking for the late ones nor flood the server when a blip delays every
// report at once. So each node has a due time (its last report plus
// factor × I) in a min-heap, and finding who is due costs O(due). A report
// costs O(1): it only notes when it came, and the heap keeps the node's
// earlier due time until that comes up; then take moves the node on to its
// real due time (O(log n), once per node and interval rather than once per
// report: 0.96 µs a report at 10,000 members when each report fixed the
// heap, on the health path that must take 100,000 reports a second). Probes are paid for from a token bucket
// (rate per second, a burst of a tenth of a second's worth): past it, due
// nodes wait for tokens and are counted once as rate-limited. A node has at
// most one probe in flight; while it is in flight it is out of the heap.
//
// Outcomes: an answer (or a report that arrives while the probe is out)
// puts the node back on schedule; "no responders" is down at once; a
// timeout is probed again at once, and timeouts in a row are down. A down
// node leaves the schedule until its next report.
type Schedule struct {
	factor   float64 // due after factor × interval of silence
	timeouts int     // timeouts in a row that make a node down
	rate     float64 // probes per second
	burst    float64 // most tokens held

	mu       sync.Mutex // guards everything below
	byNode   map[string]*entry
	waiting  dueHeap // entries not in flight, earliest due first
	tokens   float64
	refilled time.Time
	marked   time.Time // when due nodes were last counted as rate-limited
}

// markEvery is how often at most Take counts the due nodes that wait for a
// token. Counting walks every due entry of the heap, and Take runs once per
// token: at 100,000 members with tens of thousands due, walking at the
// probe rate took a third of the router's CPU. A node is counted at most
// this much after it began to wait.
const markEvery = 100 * time.Millisecond

// entry is one probing node in the schedule.
type entry struct {
	node     string
	interval time.Duration
	due      time.Time // probe when nothing arrived by then
	index    int       // in waiting; -1 while a probe is in flight
	seen     time.Time // the last report
	started  time.Time // when the probe in flight was sent
	timeouts int       // in a row
	limited  bool      // counted as rate-limited since its last probe
	poked    bool      // callers said it failed: due stands, reports or not
}

// realDue is when e is due: factor × interval after its last report, or
// its due time as it stands if callers asked for a probe.
func (s *Schedule) realDue(e *entry) time.Time {
	if e.poked {
		return e.due
	}
	return e.seen.Add(s.after(e.interval))
}

// Ticket is one probe to send.
type Ticket struct {
	Node    string
	Started time.Time
}

// Outcome is how a probe ended.
type Outcome int

const (
	Answered Outcome = iota
	NoResponders
	Timeout
	RateLimited // not an outcome of a probe: a due probe waited for tokens
	Error       // the request failed otherwise (connection closed, ...)
	NumOutcomes
)

var OutcomeNames = [NumOutcomes]string{"answered", "no_responders", "timeout", "rate_limited", "error"}

func New(factor float64, timeouts int, rate float64) *Schedule {
	return &Schedule{
		factor: factor, timeouts: timeouts, rate: rate, burst: max(1, rate/10),
		byNode: map[string]*entry{}, tokens: max(1, rate/10),
	}
}

func (s *Schedule) after(iv time.Duration) time.Duration {
	return time.Duration(s.factor * float64(iv))
}

// seen notes an accepted report of node at now: a probing node is due
// factor × interval later; any other node (or one that left) leaves the
// schedule. It reports whether the node is now the first due (whoever
// sleeps until the first due time must look again). O(log n).
func (s *Schedule) Seen(node string, interval time.Duration, probing bool, now time.Time) (first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byNode[node]
	if !probing || interval <= 0 {
		if e != nil {
			s.drop(e)
		}
		return false
	}
	if e == nil {
		e = &entry{node: node, index: -1}
		s.byNode[node] = e
	}
	e.interval, e.seen, e.timeouts = interval, now, 0
	if e.index < 0 && !e.started.IsZero() {
		return false // a probe is in flight; its result reschedules
	}
	if e.poked {
		return false // callers asked for a probe: it stands
	}
	due := now.Add(s.after(interval))
	if e.index >= 0 && !due.Before(e.due) {
		return false // later than the heap says: take moves it on (see above)
	}
	e.due = due
	s.place(e)
	return e.index == 0
}

// remove takes node off the schedule.
func (s *Schedule) Remove(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.byNode[node]; e != nil {
		s.drop(e)
	}
}

// poke makes a scheduled node due now (callers said it failed). It reports
// whether the node is on the schedule; one in flight stays as it is.
func (s *Schedule) Poke(node string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byNode[node]
	if e == nil {
		return false
	}
	if e.index >= 0 && s.realDue(e).After(now) {
		e.due, e.poked = now, true
		heap.Fix(&s.waiting, e.index)
	}
	return true
}

// take returns the probes due at now that tokens pay for (each node then
// has its probe in flight), and how many due nodes newly had to wait.
func (s *Schedule) Take(now time.Time) (out []Ticket, limited int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refill(now)
	for len(s.waiting) > 0 && !s.waiting[0].due.After(now) {
		if e := s.waiting[0]; s.realDue(e).After(e.due) { // reported since: move on
			e.due = s.realDue(e)
			heap.Fix(&s.waiting, 0)
			continue
		}
		if s.tokens < 1 {
			if s.marked.IsZero() || now.Sub(s.marked) >= markEvery {
				s.marked = now
				limited = s.markLimited(0, now)
			}
			break
		}
		s.tokens--
		e := heap.Pop(&s.waiting).(*entry)
		e.started, e.limited, e.poked = now, false, false
		out = append(out, Ticket{Node: e.node, Started: now})
	}
	return out, limited
}

// markLimited flags the due entries in the heap below i that are not
// flagged yet, and counts them; it visits only entries the heap has due
// (some of which reported since, and are not counted).
func (s *Schedule) markLimited(i int, now time.Time) int {
	if i >= len(s.waiting) || s.waiting[i].due.After(now) {
		return 0
	}
	n := 0
	if e := s.waiting[i]; !e.limited && !s.realDue(e).After(now) {
		e.limited = true
		n = 1
	}
	return n + s.markLimited(2*i+1, now) + s.markLimited(2*i+2, now)
}

func (s *Schedule) refill(now time.Time) {
	if s.refilled.IsZero() {
		s.refilled = now
	}
	if d := now.Sub(s.refilled); d > 0 {
		s.tokens = min(s.burst, s.tokens+d.Seconds()*s.rate)
		s.refilled = now
	}
}

// next returns when take has something to do: the earliest due time, or
// when the next token comes if a due node waits for one.
func (s *Schedule) Next(now time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) == 0 {
		return time.Time{}, false
	}
	due := s.waiting[0].due
	if due.After(now) {
		return due, true
	}
	s.refill(now)
	if s.tokens >= 1 {
		return now, true
	}
	return now.Add(time.Duration((1 - s.tokens) / s.rate * float64(time.Second))), true
}

// result records how node's probe sent at started ended, at now. current
// says the probe is still the node's (it did not leave or get re-probed
// meanwhile): only then may an answer count as a report. down says the node
// is down (it has then left the schedule).
func (s *Schedule) Result(node string, started time.Time, o Outcome, now time.Time) (down, current bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byNode[node]
	if e == nil || e.index >= 0 || !e.started.Equal(started) {
		return false, false // dropped, rescheduled or re-probed meanwhile
	}
	e.started = time.Time{}
	if e.seen.After(started) || o == Answered {
		// A report came while the probe was out, or the answer is one.
		e.timeouts = 0
		e.due = later(e.seen, now).Add(s.after(e.interval))
		s.place(e)
		return false, true
	}
	switch o {
	case NoResponders:
		s.drop(e)
		return true, true
	case Timeout:
		if e.timeouts++; e.timeouts >= s.timeouts {
			s.drop(e)
			return true, true
		}
		e.due, e.poked = now, true // ask again at once, however recent its last report
	default: // an error of ours, not the node's: try again later
		e.due = now.Add(s.after(e.interval))
	}
	s.place(e)
	return false, true
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// place puts e in the heap or moves it there. With s.mu held.
func (s *Schedule) place(e *entry) {
	if e.index >= 0 {
		heap.Fix(&s.waiting, e.index)
		return
	}
	heap.Push(&s.waiting, e)
}

// drop forgets e. With s.mu held.
func (s *Schedule) drop(e *entry) {
	if e.index >= 0 {
		heap.Remove(&s.waiting, e.index)
	}
	delete(s.byNode, e.node)
}

// len is the number of nodes on the schedule, in flight included.
func (s *Schedule) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byNode)
}

// dueHeap orders entries by due time.
type dueHeap []*entry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *dueHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}
