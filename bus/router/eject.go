package router

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/text"
)

// ejector takes gray nodes out of their pools for a while: members that
// callers say fail them while they still answer probes (DESIGN.md,
// Liveness; Envoy's outlier detection is the anchor). Every replica sees
// every route.feedback message and counts the same failures; the one whose
// write creates the ejection key wins, and every replica honours the key,
// whoever wrote it. The key has a per-key TTL, so an ejection ends by
// itself even when no router is left; each replica also ends it on its own
// clock at the same moment.
type ejector struct {
	r    *Router
	kick chan struct{} // wakes run: an ejection began or ended

	mu       sync.Mutex // guards fails, hist, answered and inflight
	fails    map[poolNode]*failures
	hist     map[poolNode]ejectHistory
	answered map[string]time.Time // when each node last answered a probe
	// Ejections this router decided on that the watch has not brought back
	// yet: they count toward the pool's share, or a burst of failures
	// against every node would write a key for each.
	inflight map[poolNode]time.Time

	ejections atomic.Uint64 // ejections this router began (its write created the key)
	capped    atomic.Uint64 // ejections refused: the pool's share was reached
	unshared  atomic.Uint64 // ejections kept local: the bucket refused the key
}

type poolNode struct{ pool, node string }

// failures are a member's recent caller-reported failures, oldest first.
type failures struct {
	recent []failure
	reason string // the last one given
}

type failure struct {
	caller string
	at     time.Time
}

// maxRecent bounds the failures kept per member: past the threshold, more
// say nothing new.
const maxRecent = 64

// ejectHistory is how many times in a row a member was ejected, and when
// the last ejection ended.
type ejectHistory struct {
	repeat int
	ended  time.Time
}

// next is the number in a row of a node's next ejection at now: one more
// than the last, or 1 again once the node has stayed in for longest since
// its last ejection ended.
func (h ejectHistory) next(now time.Time, longest time.Duration) int {
	if !h.ended.IsZero() && now.Sub(h.ended) > longest {
		return 1
	}
	return h.repeat + 1
}

// ejectionLength is how long the repeat-th ejection in a row lasts: first,
// doubled each time, at most longest.
func ejectionLength(repeat int, first, longest time.Duration) time.Duration {
	d := first
	for i := 1; i < repeat && d < longest; i++ {
		d *= 2
	}
	return min(d, longest)
}

// ejection is an ejection a pool honours (pool.ejected, under r.healthMu).
type ejection struct {
	rev   uint64 // of its KV entry; 0 if kept local
	until time.Time
	rec   bus.Ejection
}

func newEjector(r *Router) *ejector {
	return &ejector{
		r:        r,
		kick:     make(chan struct{}, 1),
		fails:    map[poolNode]*failures{},
		hist:     map[poolNode]ejectHistory{},
		answered: map[string]time.Time{},
		inflight: map[poolNode]time.Time{},
	}
}

// connName is the router's connection name, if it has one.
func (r *Router) connName() string {
	if r.nc == nil {
		return ""
	}
	return text.Clip(r.nc.Opts.Name)
}

func (e *ejector) on() bool { return e.r.cfg.EjectMaxPercent > 0 }

// fail records that caller says node failed it in p, and ejects the node
// if that makes enough failures from enough callers.
//
// Feedback that names no caller counts toward no ejection: nothing tells
// one anonymous caller from another, and a flood from one of them must not
// look like many callers (the Go Client always names itself).
func (e *ejector) fail(p *pool, node, caller, reason string, now time.Time) {
	if !e.on() || caller == "" {
		return
	}
	k := poolNode{p.name, node}
	e.mu.Lock()
	f := e.fails[k]
	if f == nil {
		f = &failures{}
		e.fails[k] = f
	}
	f.prune(now.Add(-e.r.cfg.EjectWindow))
	if len(f.recent) == maxRecent {
		f.recent = slices.Delete(f.recent, 0, 1)
	}
	f.recent = append(f.recent, failure{caller: caller, at: now})
	if reason != "" {
		f.reason = reason
	}
	e.mu.Unlock()
	e.consider(p, node, now)
}

// prune drops the failures before floor.
func (f *failures) prune(floor time.Time) {
	i := 0
	for i < len(f.recent) && f.recent[i].at.Before(floor) {
		i++
	}
	f.recent = slices.Delete(f.recent, 0, i)
}

// callers counts the distinct callers among the failures.
func (f *failures) callers() int {
	seen := make(map[string]struct{}, len(f.recent))
	for _, x := range f.recent {
		seen[x.caller] = struct{}{}
	}
	return len(seen)
}

// answeredProbe notes that node answered a probe at now, and ejects it
// from the pools where callers' failures were waiting for that answer.
func (e *ejector) answeredProbe(node string, now time.Time) {
	if !e.on() {
		return
	}
	e.mu.Lock()
	e.answered[node] = now
	var pools []string
	for k := range e.fails {
		if k.node == node {
			pools = append(pools, k.pool)
		}
	}
	e.mu.Unlock()
	for _, name := range pools {
		if p := e.r.pool(name); p != nil {
			e.consider(p, node, now)
		}
	}
}

// consider ejects node from p if its failures call for it: enough of them
// from enough callers within the window, the node not down and, if it
// answers probes, having answered one since the first of those failures
// (a node that does not answer is down, not ejected), the node not ejected
// already, and the pool's share not reached. The write happens off the
// caller's goroutine.
func (e *ejector) consider(p *pool, node string, now time.Time) {
	r := e.r
	cfg := r.cfg
	k := poolNode{p.name, node}
	e.mu.Lock()
	f := e.fails[k]
	if _, writing := e.inflight[k]; f == nil || writing {
		e.mu.Unlock()
		return
	}
	f.prune(now.Add(-cfg.EjectWindow))
	n, callers := len(f.recent), f.callers()
	if n < cfg.EjectFailures || callers < cfg.EjectCallers {
		if n == 0 {
			delete(e.fails, k)
		}
		e.mu.Unlock()
		return
	}
	first := f.recent[0].at
	answered := e.answered[node]
	reason := f.reason
	repeat := e.hist[k].next(now, cfg.EjectMaxTime)
	e.mu.Unlock()
	if r.legacy.Load() {
		// A router of an earlier release puts every reporting node back in
		// the ring: the two would fight over the document.
		r.stats.limitedLog(r.log, rejectEjectCap, "ejection held back while a router of an earlier release shares the bucket", "pool", p.name, "node", node)
		return
	}

	r.healthMu.Lock()
	t := r.tracker[node]
	// A node whose reports say it answers probes must have answered one
	// sent after the first of these failures. (Whether it was on the probe
	// schedule is not the same: a probe that found no responders takes it
	// off the schedule a moment before it is marked down, and a dead node
	// was once ejected in that moment.)
	ok := t != nil && p.reporters[node] == t && r.alive(t, now) && (!t.probes || !answered.Before(first))
	_, already := p.ejected[node]
	honoured, share := p.ejectedCount(now), p.ejectCap()
	r.healthMu.Unlock()
	if !ok || already {
		return
	}
	e.mu.Lock()
	_, writing := e.inflight[k]
	full := honoured+e.inflightIn(p.name) >= share
	if !writing && !full {
		e.inflight[k] = now
	}
	e.mu.Unlock()
	if writing {
		return
	}
	if full {
		e.capped.Add(1)
		r.stats.limitedLog(r.log, rejectEjectCap, "ejection refused: the pool's share of ejected nodes is reached",
			"pool", p.name, "node", node, "failures", n, "callers", callers, "max_percent", cfg.EjectMaxPercent)
		return
	}
	d := ejectionLength(repeat, cfg.EjectTime, cfg.EjectMaxTime)
	rec := bus.Ejection{Failures: n, Callers: callers, Reason: text.Clip(reason), Seconds: d.Seconds(), Repeat: min(repeat, 64), Router: r.connName()}
	if len(rec.Reason) > bus.MaxFeedbackText {
		rec.Reason = ""
	}
	r.wg.Go(func() { e.write(p, node, rec, d) })
}

// inflightIn counts the pool's ejections in flight. With e.mu held.
func (e *ejector) inflightIn(pool string) int {
	n := 0
	for k := range e.inflight {
		if k.pool == pool {
			n++
		}
	}
	return n
}

// write creates the ejection's key with a TTL of its length. The watch
// brings it back, in stream order with every other replica's ejections:
// applying it here first would let this replica honour its own ejection
// ahead of another's that came earlier in the stream, and the replicas
// would disagree on which ones the pool's share leaves out. A key that
// exists is another replica's ejection of the same node. A bucket that
// refuses the key (one created without per-key TTLs that this router may
// not update) leaves the ejection to this router alone, and says so.
func (e *ejector) write(p *pool, node string, rec bus.Ejection, d time.Duration) {
	r := e.r
	k := poolNode{p.name, node}
	written := false
	defer func() {
		e.mu.Lock()
		delete(e.fails, k) // it starts afresh after
		if !written {
			delete(e.inflight, k) // no entry of ours will come back
		}
		e.mu.Unlock()
	}()
	data, err := bus.EncodeEjection(rec)
	if err != nil {
		r.log.Error("ejection not encoded", "pool", p.name, "node", node, "err", err)
		return
	}
	kv := p.ring.Bucket()
	if kv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
	defer cancel()
	rev, err := kv.Create(ctx, bus.EjectionKey(p.name, node), data, jetstream.KeyTTL(d))
	switch {
	case err == nil:
		e.ejections.Add(1)
		written = true // in flight until the watch brings it
		r.log.Debug("ejection written", "pool", p.name, "node", node, "revision", rev)
	case errors.Is(err, jetstream.ErrKeyExists):
		// Another replica was first: its entry comes through the watch.
	case r.ctx.Err() != nil:
	default:
		e.unshared.Add(1)
		e.ejections.Add(1)
		r.log.Warn("ejection not shared with other replicas: the bucket refused its key; this router alone honours it",
			"pool", p.name, "node", node, "err", err)
		e.apply(p, node, rec, 0, r.cfg.Now(), time.Now())
	}
}

// applyEntry takes a watched entry of an ejection key: a value begins the
// ejection (from the entry's creation), a delete or purge ends it.
func (e *ejector) applyEntry(en jetstream.KeyValueEntry) {
	r := e.r
	name, node, ok := bus.EjectionFromKey(en.Key())
	if !ok {
		return
	}
	p := r.pool(name)
	if p == nil {
		return
	}
	if en.Operation() != jetstream.KeyValuePut {
		e.end(p, node, en.Revision(), "its key was deleted")
		return
	}
	rec, err := bus.DecodeEjection(en.Value())
	if err != nil {
		r.stats.limitedLog(r.log, rejectMalformed, "ejection in the bucket refused", "key", en.Key(), "err", err)
		return
	}
	e.apply(p, node, rec, en.Revision(), r.cfg.Now(), en.Created())
}

// apply makes p honour an ejection created at created (wall clock) and
// recorded at revision rev, unless it is over already or the pool's share
// of ejections is reached (replicas apply entries in the same order, so
// they agree on which one is over the share).
func (e *ejector) apply(p *pool, node string, rec bus.Ejection, rev uint64, now, created time.Time) {
	r := e.r
	e.mu.Lock()
	delete(e.inflight, poolNode{p.name, node}) // whoever wrote it, it is here
	e.mu.Unlock()
	left := time.Duration(rec.Seconds*float64(time.Second)) - max(0, time.Since(created))
	if left <= 0 {
		return
	}
	until := now.Add(left)
	r.healthMu.Lock()
	if cur, ok := p.ejected[node]; ok && (rev == 0 || cur.rev >= rev) {
		r.healthMu.Unlock()
		return
	} else if !ok && p.ejectedCount(now) >= p.ejectCap() {
		r.healthMu.Unlock()
		e.capped.Add(1)
		r.stats.limitedLog(r.log, rejectEjectCap, "ejection in the bucket not honoured: the pool's share of ejected nodes is reached",
			"pool", p.name, "node", node, "max_percent", r.cfg.EjectMaxPercent)
		return
	}
	p.ejected[node] = ejection{rev: rev, until: until, rec: rec}
	p.nEjected.Store(int32(len(p.ejected)))
	r.healthMu.Unlock()

	k := poolNode{p.name, node}
	e.mu.Lock()
	h := e.hist[k]
	h.repeat = max(h.repeat, rec.Repeat)
	e.hist[k] = h
	delete(e.fails, k)
	e.mu.Unlock()

	p.forget(node)
	p.wakeFor(node)
	e.wake()
	r.log.Warn("node ejected", "pool", p.name, "node", node, "failures", rec.Failures, "callers", rec.Callers,
		"reason", rec.Reason, "for", left.Round(time.Second), "repeat", rec.Repeat, "by", rec.Router)
}

// end ends node's ejection from p early (its key was deleted), unless the
// deletion is older than the ejection.
func (e *ejector) end(p *pool, node string, rev uint64, why string) {
	r := e.r
	r.healthMu.Lock()
	cur, ok := p.ejected[node]
	if !ok || cur.rev >= rev {
		r.healthMu.Unlock()
		return
	}
	delete(p.ejected, node)
	p.nEjected.Store(int32(len(p.ejected)))
	r.healthMu.Unlock()
	e.ended(p, node, r.cfg.Now(), why)
}

// ended records that node's ejection from p is over and has the pool
// take it back.
func (e *ejector) ended(p *pool, node string, now time.Time, why string) {
	k := poolNode{p.name, node}
	e.mu.Lock()
	h := e.hist[k]
	h.ended = now
	e.hist[k] = h
	e.mu.Unlock()
	p.wakeFor(node)
	e.r.log.Info("node ejection over", "pool", p.name, "node", node, "why", why)
}

func (e *ejector) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// run ends ejections when their time is up, and forgets old history,
// until ctx ends.
func (e *ejector) run(ctx context.Context) {
	r := e.r
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := r.cfg.Now()
		next := e.endOver(now)
		e.forgetOld(now)
		timer.Reset(min(max(next.Sub(now), time.Millisecond), time.Minute))
		select {
		case <-ctx.Done():
			return
		case <-e.kick:
		case <-timer.C:
		}
	}
}

// endOver ends the ejections whose time is up at now and returns when the
// next one ends (at most a minute from now).
func (e *ejector) endOver(now time.Time) time.Time {
	r := e.r
	next := now.Add(time.Minute)
	for _, p := range r.sortedPools() {
		if p.nEjected.Load() == 0 {
			continue
		}
		var over []string
		r.healthMu.Lock()
		for id, x := range p.ejected {
			if !now.Before(x.until) {
				over = append(over, id)
				delete(p.ejected, id)
			} else if x.until.Before(next) {
				next = x.until
			}
		}
		p.nEjected.Store(int32(len(p.ejected)))
		r.healthMu.Unlock()
		for _, id := range over {
			e.ended(p, id, now, "its time is up")
		}
	}
	return next
}

// forgetOld drops history and probe answers that no longer matter, so
// memory follows the fleet.
func (e *ejector) forgetOld(now time.Time) {
	cfg := e.r.cfg
	e.mu.Lock()
	defer e.mu.Unlock()
	maps.DeleteFunc(e.hist, func(_ poolNode, h ejectHistory) bool {
		return !h.ended.IsZero() && now.Sub(h.ended) > 2*cfg.EjectMaxTime
	})
	maps.DeleteFunc(e.answered, func(_ string, at time.Time) bool { return now.Sub(at) > cfg.EjectWindow })
	maps.DeleteFunc(e.fails, func(_ poolNode, f *failures) bool {
		return len(f.recent) == 0 || now.Sub(f.recent[len(f.recent)-1].at) > cfg.EjectWindow
	})
	// A written ejection whose entry never came back (the watch was down
	// and the key expired meanwhile) stops counting after a while.
	maps.DeleteFunc(e.inflight, func(_ poolNode, at time.Time) bool { return now.Sub(at) > time.Minute })
}

// ejectCap is how many of the pool's nodes may be ejected at once: its
// share of the members and the ejected, at least one. With r.healthMu held.
func (p *pool) ejectCap() int {
	n := len(p.ring.Current().Doc.Nodes) + len(p.ejected)
	return max(1, int(math.Floor(float64(n)*p.r.cfg.EjectMaxPercent/100+1e-9)))
}

// ejectedCount counts the pool's ejections still running at now. With
// r.healthMu held.
func (p *pool) ejectedCount(now time.Time) int {
	n := 0
	for _, x := range p.ejected {
		if now.Before(x.until) {
			n++
		}
	}
	return n
}

// isEjected reports whether node is ejected from p at now. With r.healthMu
// held.
func (p *pool) isEjected(node string, now time.Time) bool {
	x, ok := p.ejected[node]
	return ok && now.Before(x.until)
}

// ejectedNow is isEjected for callers without the lock; it costs an atomic
// load while nothing is ejected.
func (p *pool) ejectedNow(node string) bool {
	if p.nEjected.Load() == 0 {
		return false
	}
	r := p.r
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	return p.isEjected(node, r.cfg.Now())
}

// ejectedWhy says why and until when node is ejected from p, or "".
func (p *pool) ejectedWhy(node string) string {
	if p.nEjected.Load() == 0 {
		return ""
	}
	r := p.r
	now := r.cfg.Now()
	r.healthMu.Lock()
	x, ok := p.ejected[node]
	r.healthMu.Unlock()
	if !ok || !now.Before(x.until) {
		return ""
	}
	return describeEjection(x.rec, x.until.Sub(now))
}

// describeEjection says why a node is ejected and when it is back:
// "ejected: 5 failures from 3 callers (last: connection refused), back in 30 s".
func describeEjection(rec bus.Ejection, left time.Duration) string {
	s := fmt.Sprintf("ejected: %d failures from %d callers", rec.Failures, rec.Callers)
	if rec.Callers == 1 {
		s = fmt.Sprintf("ejected: %d failures from 1 caller", rec.Failures)
	}
	if rec.Reason != "" {
		s += fmt.Sprintf(" (last: %s)", text.Clip(rec.Reason))
	}
	if rec.Repeat > 1 {
		s += fmt.Sprintf(", ejection %d in a row", rec.Repeat)
	}
	return s + ", back in " + roughly(left)
}

// roughly writes d as a person would: "30 s", "4 min", "2 h".
func roughly(d time.Duration) string {
	switch {
	case d < time.Second:
		return "under a second"
	case d < 2*time.Minute:
		return fmt.Sprintf("%d s", int(math.Ceil(d.Seconds())))
	case d < 2*time.Hour:
		return fmt.Sprintf("%d min", int(math.Round(d.Minutes())))
	}
	return fmt.Sprintf("%d h", int(math.Round(d.Hours())))
}
