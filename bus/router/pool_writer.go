package router

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/natsroute/natsroute/bus"
)

// desired applies what this router knows onto base: nodes that report for
// the pool and were heard within the member TTL are members with their
// reported weight and status (and the shed the load policy wants); nodes
// that said leaving, went silent for the TTL, moved to other pools, or (for
// members this router has never heard from) stayed silent for the TTL since
// it started, are not; nor are nodes ejected from the pool.
func (p *pool) desired(base bus.RingDocument, rev uint64) bus.RingDocument {
	r := p.r
	d := p.decider(rev)
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	d.reporters = p.members()
	// One pass over base, which is sorted by id, and one over reporters,
	// with map lookups only: the reporters found on the ring are marked
	// with this pass's number, and the others are the joins. (A binary
	// search of the ring per reporter was 28 % of the router's CPU in a
	// rolling restart at 10,000 members.)
	r.pass++
	d.pass = r.pass
	out := base
	out.Nodes = make([]bus.RingNode, 0, len(base.Nodes)+len(d.reporters))
	for _, n := range base.Nodes {
		if m, ok := d.member(n); ok {
			out.Nodes = append(out.Nodes, m)
		}
	}
	sorted := true
	for id, t := range d.reporters {
		if t.pass == d.pass {
			continue
		}
		if m, ok := d.join(id, t); ok {
			out.Nodes = append(out.Nodes, m)
			sorted = false
		}
	}
	if !sorted {
		slices.SortFunc(out.Nodes, cmpNodes)
	}
	return out.WithFormat()
}

// decider holds what desired's rules read besides the node itself. Its
// methods run with r.healthMu held.
type decider struct {
	p         *pool
	now, wall time.Time         // silence is judged at now; ejections at wall
	rev       uint64            // the revision of the ring decided on
	pass      uint64            // desired's pass, or 0
	startup   bool              // within a member TTL of the router's start
	legacy    bool              // a router of an earlier release shares the bucket
	reporters map[string]*track // p.members(), set once r.healthMu is held
}

// decider returns the rules as they stand; the caller then takes
// r.healthMu and sets reporters.
func (p *pool) decider(rev uint64) decider {
	r := p.r
	now := r.silenceNow()
	return decider{
		p: p, now: now, wall: r.cfg.Now(), rev: rev,
		startup: now.Sub(r.started) <= r.cfg.MemberTTL,
		legacy:  r.legacy.Load(),
	}
}

// member decides what becomes of n, a member of the ring decided on:
// whether it stays, and as what.
func (d *decider) member(n bus.RingNode) (bus.RingNode, bool) {
	p := d.p
	r := p.r
	if p.isEjected(n.ID, d.wall) {
		return n, false
	}
	t, known := r.tracker[n.ID]
	switch {
	case known && d.reporters[n.ID] != t:
		return n, false // it reports for other pools only
	case !known && !d.startup:
		return n, false
	case known:
		t.pass = d.pass
		// A member's key written by another router after this one's last
		// report from the node holds newer news (that router handled a
		// report this one has not yet): leave its weight, status and
		// presence as they are, or the two undo each other.
		if !r.alive(t, d.now) {
			if t.left && p.keyNewer(n.ID, t) {
				break // keep n
			}
			return n, false // expired, down, or left
		}
		m := p.reported(n.ID, t, d.legacy)
		if (m.Weight != n.Weight || m.Status != n.Status) && p.keyNewer(n.ID, t) {
			break // keep n
		}
		if d.rev != p.shedRev {
			// The policy ran on another revision: a replica that wrote
			// since may have stepped further. Keep the ring's shed until
			// the policy runs on this one, or replicas undo each other's
			// steps.
			m.Shed = n.Shed
		}
		if t.draining || d.legacy {
			m.Shed = 0
		}
		n = m
	}
	if d.legacy || r.cfg.BalanceFactor == 0 { // shedding off: no shed stays behind
		n.Shed = 0
	}
	return n, true
}

// join decides whether t, a reporter of the pool that is not on the ring
// decided on, joins it, and as what.
func (d *decider) join(id string, t *track) (bus.RingNode, bool) {
	p := d.p
	if !p.r.alive(t, d.now) || p.isEjected(id, d.wall) || p.keyNewer(id, t) {
		return bus.RingNode{}, false // a key deleted after the node's last report here: see member
	}
	return p.reported(id, t, d.legacy), true
}

// memberChange is what desiredFor decides for one node: what it was on the
// ring decided on, and what it should be.
type memberChange struct {
	id          string
	was, want   bus.RingNode
	wasIn, isIn bool
}

// desiredFor is desired for the nodes ids only: what each should be, by
// the same rules. The others stay as they are on base, which is what
// desired would make of them too as long as every change to what a node's
// entry depends on names the node (wakeFor) or asks for the whole pool
// (wake), and time alone (expiry, the start-up grace) is left to the sweep
// (due). TestChangedMatchesWhole holds the two to the same answers.
func (p *pool) desiredFor(base bus.RingDocument, rev uint64, ids []string) []memberChange {
	r := p.r
	d := p.decider(rev)
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	d.reporters = p.members()
	out := make([]memberChange, 0, len(ids))
	for _, id := range ids {
		c := memberChange{id: id}
		if c.was, c.wasIn = base.Node(id); c.wasIn {
			c.want, c.isIn = d.member(c.was)
		} else if t := d.reporters[id]; t != nil {
			c.want, c.isIn = d.join(id, t)
		}
		out = append(out, c)
	}
	return out
}

// keyNewer reports whether the member key of node id was written or
// deleted by another router after this router's last report from it, in a
// pool that answers from its member keys (for a pool still on its
// document, the keys are what the writer converts it to, not news).
func (p *pool) keyNewer(id string, t *track) bool {
	return p.ring.Published() && p.v3.writtenAfter(bus.MemberKey(p.name, id), t.seen)
}

// reported is a reporting node as its reports make it a member: its
// weight, draining status and the shed the load policy wants. With
// r.healthMu held.
func (p *pool) reported(id string, t *track, legacy bool) bus.RingNode {
	n := bus.RingNode{ID: id, Weight: t.weight, Shed: p.shed[id]}
	if t.draining || legacy {
		n.Shed = 0
	}
	if t.draining {
		n.Status = bus.StatusDraining
	}
	return n
}

func cmpNode(n bus.RingNode, id string) int {
	switch {
	case n.ID < id:
		return -1
	case n.ID > id:
		return 1
	}
	return 0
}

func cmpNodes(a, b bus.RingNode) int { return cmpNode(a, b.ID) }

// due reports whether the pool's document must change because of time
// alone: a reporting member expired, or a member this router never heard
// from outlived the start-up grace. It allocates nothing.
func (p *pool) due() bool {
	r := p.r
	doc := p.ring.Current().Doc
	now, wall := r.silenceNow(), r.cfg.Now()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	startup := now.Sub(r.started) <= r.cfg.MemberTTL
	reporters := p.members()
	for _, n := range doc.Nodes {
		if p.isEjected(n.ID, wall) {
			return true
		}
		t, known := r.tracker[n.ID]
		if (!known && !startup) || (known && (reporters[n.ID] != t || !r.alive(t, now))) {
			return true
		}
	}
	return false
}

// flush makes the pool's member keys say what this router knows, applied
// on the ring the pool answers from (the watch keeps that current): every
// member's when woken by wake (or while the pool answers from its
// document), else only the named nodes': a change then costs O(its nodes ×
// log members), not O(members). Each key is written with compare-and-set;
// a lost race ends the flush, and the watch bringing the other write in
// wakes the writer again. Then, while it is on, the document follows the
// keys (flushLegacy).
func (p *pool) flush(ctx context.Context) error {
	v := p.ring.Current()
	base := v.Doc
	if base.Nodes == nil {
		base = bus.NewRingDocument(base.VNodes)
	}
	ids := p.takeNamed()
	whole := p.whole.Swap(false) || !p.ring.Published() || len(ids) > max(64, len(base.Nodes)/8)
	var err error
	switch {
	case whole:
		err = p.syncV3(ctx, base, p.desired(base, v.Rev))
	case len(ids) > 0:
		err = p.syncChanged(ctx, base, v.Rev, ids)
	}
	switch {
	case err == nil:
	case whole || !errors.Is(err, errKeyConflict):
		p.whole.Store(true) // decide every member at the retry
	default:
		// Another router wrote one of these keys first (replicas handle
		// the same reports): decide them again once the watch brings its
		// write in, which names them too.
		p.addNamed(ids)
	}
	return err
}

// maxDocument is the largest ring document the server takes in one KV put.
func (r *Router) maxDocument() int {
	return int(r.nc.MaxPayload()) - kvPutOverhead
}

// kvPutOverhead leaves room for what travels with a KV value.
const kvPutOverhead = 512

// noteOversize counts a document too large to write and says so at most
// once a minute per pool.
func (p *pool) noteOversize(err error) {
	p.oversize.Add(1)
	now := time.Now().UnixNano()
	last := p.lastOversizeLog.Load()
	if now-last < int64(time.Minute) || !p.lastOversizeLog.CompareAndSwap(last, now) {
		return
	}
	p.r.log.Error("ring document too large for the server's max_payload; raise max_payload in the nats-server configuration (see README, Scale)",
		"pool", p.name, "key", p.key, "err", err, "refused_so_far", p.oversize.Load())
}

// write is the pool's KV writer: it coalesces membership changes, writes
// them with compare-and-set, expires silent members and re-reads the ring
// now and then in case the watch missed something.
func (p *pool) write(ctx context.Context) {
	r := p.r
	sweepEvery := min(max(r.cfg.MemberTTL/4, 10*time.Millisecond), time.Second)
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	var shed <-chan time.Time // load-aware ConsistentHash, when on
	if r.cfg.BalanceFactor > 0 {
		t := time.NewTicker(r.cfg.ShedInterval)
		defer t.Stop()
		shed = t.C
	}
	backoff := 50 * time.Millisecond
	var lastFlush, lastLegacy time.Time
	legacy := time.NewTimer(time.Hour) // the document's next write, when held back
	legacy.Stop()
	defer legacy.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.dirty:
		case <-retry.C:
		case <-legacy.C:
		case <-shed:
			if !p.updateShed() {
				continue
			}
			p.whole.Store(true) // every member's shed may change
		case <-sweep.C:
			if p.name == bus.DefaultPool {
				r.forgetSilent()
			}
			if err := p.purgeV3(ctx); err != nil && ctx.Err() == nil {
				r.stats.kvErrors.Add(1)
				r.log.Warn("purging old delete markers failed; trying again at the next sweep", "pool", p.name, "err", err)
			}
			if !p.due() {
				continue
			}
			p.whole.Store(true) // time alone changed a member: expired, or not heard since the start
		case <-p.resyncNow:
			p.resync(ctx)
			continue
		case <-resync.C:
			p.resync(ctx)
			continue
		}
		// At most one write per Coalesce window: a lone change is written
		// at once, and the rest of a burst gathers into the next write.
		if wait := windowWait(time.Until(lastFlush.Add(r.cfg.Coalesce))); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		select {
		case <-p.dirty:
		default:
		}
		lastFlush = time.Now()
		err := p.flush(ctx)
		if err == nil {
			var wait time.Duration
			wait, err = p.flushLegacy(ctx, &lastLegacy)
			if wait > 0 {
				legacy.Reset(wait)
			}
		}
		switch {
		case err == nil:
			backoff = 50 * time.Millisecond
		case ctx.Err() != nil:
			return
		case errors.Is(err, errKeyConflict):
			// The watch brings the other write and wakes this writer; the
			// timer is in case it is slow.
			retry.Reset(backoff)
			backoff = min(2*backoff, 2*time.Second)
		default:
			r.stats.kvErrors.Add(1)
			r.suspectBucket()
			r.log.Warn("ring write failed; retrying", "pool", p.name, "err", err, "in", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// windowWait is how long the writer sleeps for the rest of a window. An
// idle Go process sleeps in epoll, whose timeout is whole milliseconds, so
// a timer fires up to 1 ms after it is due (4.3 ms fires at about 5.2 ms
// on our test VM). Waits of a millisecond or more are rounded down to
// whole milliseconds, which fire about on time: a change then waits at
// most the window, and two writes are at least the window less 1 ms apart.
func windowWait(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return d
	}
	return d.Truncate(time.Millisecond)
}

// resync wakes the writer if the pool's keys do not say what this router
// wants (time passed; a write was lost). A pool that does not answer from
// its member keys yet re-reads its document first; one that does re-reads
// nothing: its watch delivers every change, and starts afresh when it
// breaks.
func (p *pool) resync(ctx context.Context) {
	if !p.ring.Published() {
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, _, err := p.ring.Resync(opCtx); err != nil {
			if ctx.Err() == nil {
				p.r.suspectBucket()
				p.r.log.Debug("ring resync failed", "pool", p.name, "err", err)
			}
			return
		}
		if len(p.ring.Current().Doc.Nodes) > 0 { // to convert
			p.wake()
			return
		}
	}
	if p.name == bus.DefaultPool {
		// The watch of a deleted bucket may wait for it without a word:
		// check that it is there (two small requests).
		p.r.suspectBucket()
	}
	v := p.ring.Current()
	if !p.desired(v.Doc, v.Rev).Equal(v.Doc) {
		p.wake()
	}
}
