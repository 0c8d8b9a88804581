package router

import (
	"context"
	"errors"
	"fmt"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/follow"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// track is what this router knows of one node from its health reports.
type track struct {
	seen     time.Time // when the last accepted report arrived (router's clock)
	seq      uint64
	weight   float64
	draining bool
	left     bool     // the last report said leaving
	pools    []string // the pools of its last report that was not leaving
}

// maxExpiryHold bounds how long expiry is held back while health reports
// wait unprocessed; see silenceNow.
const maxExpiryHold = 5 * time.Second

// poolsOf returns the pools a report lists, or the default pool.
func poolsOf(h bus.Health) []string {
	if h.Pools == nil {
		return []string{bus.DefaultPool}
	}
	return h.Pools
}

// observe records a report in the membership tracker, moves the node in and
// out of pools, and wakes the writer of every pool whose document must
// change. With seq set, a report older than the last one seen is refused
// (unless the node had left). A heartbeat costs a map lookup and, per pool
// of the node, a binary search in that pool's document.
func (r *Router) observe(node string, h bus.Health) error {
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	t := r.tracker[node]
	if t != nil && h.Seq != 0 && h.Seq < t.seq && !t.left {
		return fmt.Errorf("%w: %w (%d < %d)", bus.ErrInvalidReport, errStaleSeq, h.Seq, t.seq)
	}
	leaving := h.Status == bus.StatusLeaving
	pools := poolsOf(h)
	var prev track
	if t != nil {
		prev = *t
	}
	if leaving && t != nil { // leaving leaves every pool the node is in
		pools = t.pools
	}
	var add []*pool
	if !leaving {
		var fresh []string
		for _, name := range pools {
			if !slices.Contains(prev.pools, name) {
				fresh = append(fresh, name)
			}
		}
		var err error
		if add, err = r.ensurePools(fresh); err != nil {
			return err
		}
	}
	if t == nil {
		t = &track{}
		r.tracker[node] = t
	}
	t.seen, t.seq = r.cfg.Now(), h.Seq
	t.left = leaving
	t.weight = h.Weight
	if t.weight == 0 {
		t.weight = 1
	}
	t.draining = h.Status == bus.StatusDraining
	if !leaving && !slices.Equal(prev.pools, pools) {
		for _, name := range prev.pools {
			if !slices.Contains(pools, name) {
				if p := r.pool(name); p != nil {
					delete(p.reporters, node)
					p.forget(node)
					p.wake()
				}
			}
		}
		for _, p := range add {
			p.reporters[node] = t
		}
		t.pools = slices.Clone(pools)
	}
	// Wake a pool's writer when this node's entry should change: compared
	// with the last report (the view may not show a write in flight yet),
	// and with the view (another replica may have written otherwise).
	changed := prev.seen.IsZero() || prev.left != t.left || prev.weight != t.weight || prev.draining != t.draining
	for _, name := range t.pools {
		p := r.pool(name)
		if p == nil {
			continue
		}
		n, member := p.ring.Current().Doc.Node(node)
		if changed || slices.Contains(add, p) || member == t.left || (member && (n.Weight != t.weight || (n.Status == bus.StatusDraining) != t.draining)) {
			p.wake()
		}
	}
	return nil
}

func (p *pool) wake() {
	select {
	case p.dirty <- struct{}{}:
	default:
	}
}

// silenceNow is the time against which silence is judged. Reports are
// stamped when the router processes them, so while reports wait unprocessed
// (the router is behind, say starved of CPU) the queued ones may be what
// keeps nodes alive: silence is then judged at the last moment the queue
// was empty, when every report received before it had been processed. That
// hold is bounded by maxExpiryHold, so a router that never catches up still
// expires silent nodes (at worst maxExpiryHold late, or early for a node
// whose reports wait longer than that).
func (r *Router) silenceNow() time.Time {
	now := r.cfg.Now()
	if r.healthSub == nil {
		return now
	}
	if queueEmpty(r.healthSub) {
		return now
	}
	caught := time.Unix(0, r.caughtUp.Load())
	if floor := now.Add(-maxExpiryHold); caught.Before(floor) {
		return floor
	}
	return caught
}

// alive reports whether a tracked node is a live member at now.
func (r *Router) alive(t *track, now time.Time) bool {
	return !t.left && now.Sub(t.seen) <= r.cfg.MemberTTL
}

// desired applies what this router knows onto base: nodes that report for
// the pool and were heard within the member TTL are members with their
// reported weight and status (and the shed the load policy wants); nodes
// that said leaving, went silent for the TTL, moved to other pools, or (for
// members this router has never heard from) stayed silent for the TTL since
// it started, are not. With joins false, nodes not in base stay out (used
// when the whole document would be too large to write).
func (p *pool) desired(base bus.RingDocument, joins bool) bus.RingDocument {
	r := p.r
	now := r.silenceNow()
	legacy := r.legacy.Load()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	startup := now.Sub(r.started) <= r.cfg.MemberTTL
	reporters := p.members()
	out := base
	out.Nodes = make([]bus.RingNode, 0, len(base.Nodes)+len(reporters))
	for _, n := range base.Nodes {
		if t, known := r.tracker[n.ID]; known {
			if reporters[n.ID] != t {
				continue // it reports for other pools only
			}
		} else if !startup {
			continue
		}
		if legacy || r.cfg.BalanceFactor == 0 { // shedding off: no shed stays behind
			n.Shed = 0
		}
		out.Nodes = append(out.Nodes, n)
	}
	inBase := len(out.Nodes)
	var gone []bool // gone[i]: base member i expired or left
	for id, t := range reporters {
		i, member := slices.BinarySearchFunc(out.Nodes[:inBase], id, cmpNode)
		if !r.alive(t, now) {
			if member {
				if gone == nil {
					gone = make([]bool, inBase)
				}
				gone[i] = true
			}
			continue
		}
		n := bus.RingNode{ID: id, Weight: t.weight, Shed: p.shed[id]}
		if t.draining || legacy {
			n.Shed = 0
		}
		if t.draining {
			n.Status = bus.StatusDraining
		}
		if member {
			out.Nodes[i] = n
		} else if joins {
			out.Nodes = append(out.Nodes, n)
		}
	}
	if gone != nil {
		kept := out.Nodes[:0]
		for i, n := range out.Nodes {
			if i >= inBase || !gone[i] {
				kept = append(kept, n)
			}
		}
		out.Nodes = kept
	}
	slices.SortFunc(out.Nodes, cmpNodes)
	return out.WithFormat()
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
	now := r.silenceNow()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	startup := now.Sub(r.started) <= r.cfg.MemberTTL
	reporters := p.members()
	for _, n := range doc.Nodes {
		t, known := r.tracker[n.ID]
		if (!known && !startup) || (known && (reporters[n.ID] != t || !r.alive(t, now))) {
			return true
		}
	}
	return false
}

// members returns the nodes whose reports make them members of the pool:
// those that report for it, or, in the default pool while a router of an
// earlier release shares the bucket, every node (as that router has it; see
// watchLegacy). With r.healthMu held.
func (p *pool) members() map[string]*track {
	if p.name == bus.DefaultPool && p.r.legacy.Load() {
		return p.r.tracker
	}
	return p.reporters
}

// forgetSilent drops tracker entries long past the TTL, so a router's memory
// follows the fleet. It runs from the default pool's writer.
func (r *Router) forgetSilent() {
	now := r.silenceNow()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	for id, t := range r.tracker {
		if now.Sub(t.seen) <= 2*r.cfg.MemberTTL {
			continue
		}
		for _, name := range t.pools {
			if p := r.pool(name); p != nil && p.reporters[id] == t {
				delete(p.reporters, id)
			}
		}
		delete(r.tracker, id)
	}
}

// flush makes the bucket's document match what this router knows, with
// compare-and-set on the revision it answers from (the watch keeps that
// current, so this usually takes one round trip); on a conflict it re-reads
// the document and re-applies.
func (p *pool) flush(ctx context.Context) error {
	for attempt := 0; attempt < 50; attempt++ {
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := p.flushOnce(opCtx, attempt > 0)
		cancel()
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		p.r.stats.kvConflicts.Add(1)
	}
	return errors.New("bus: kv update: too many conflicts")
}

func (p *pool) flushOnce(ctx context.Context, reread bool) error {
	r := p.r
	v := p.ring.Current()
	base, rev := v.Doc, v.Rev
	if reread {
		var err error
		if base, rev, err = p.ring.Resync(ctx); err != nil {
			return err
		}
	}
	if base.Nodes == nil {
		base = bus.NewRingDocument(base.VNodes)
	}
	want := p.desired(base, true)
	if want.Equal(base) && (rev != 0 || len(want.Nodes) == 0) {
		return nil // revision 0 with members: a bucket created anew, to republish
	}
	data, err := want.Encode()
	if err != nil {
		return fmt.Errorf("bus: encode ring document: %w", err)
	}
	if limit := r.maxDocument(); len(data) > limit {
		// Too large to write whole: keep the members there are and write
		// only leaves and changes, if there are any.
		full := len(data)
		want = p.desired(base, false)
		if data, err = want.Encode(); err != nil {
			return fmt.Errorf("bus: encode ring document: %w", err)
		}
		if len(data) > limit || want.Equal(base) {
			return fmt.Errorf("%w: %d members would make %d bytes; the server's max_payload allows %d", errDocTooLarge, len(p.desired(base, true).Nodes), full, limit)
		}
		p.noteOversize(fmt.Errorf("%w: new members wait; %d bytes with them", errDocTooLarge, full))
	}
	p.ring.Expect(data, want)
	var newRev uint64
	if rev == 0 {
		newRev, err = p.ring.Bucket().Create(ctx, p.key, data)
	} else {
		newRev, err = p.ring.Bucket().Update(ctx, p.key, data, rev)
	}
	if err != nil {
		return err
	}
	r.stats.kvWrites.Add(1)
	p.ring.Apply(want, newRev)
	r.log.Debug("ring written", "pool", p.name, "revision", newRev, "members", len(want.Nodes), "bytes", len(data))
	return nil
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

// syncBalancer keeps the pool's ResourceAware view in step with its ring:
// members that have not reported count as neutral, and nodes that left the
// ring are forgotten unless they still report for the pool. It runs under
// the ring follower's lock, after each new view.
func (p *pool) syncBalancer(old, cur *follow.View[bus.RingDocument]) {
	r := p.r
	now := r.cfg.Now()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	// A document written before a node's leave still lists it: that must
	// not make a node that left known again.
	ids := make([]string, 0, len(cur.Doc.Nodes))
	for _, n := range cur.Doc.Nodes {
		if t := r.tracker[n.ID]; t == nil || r.alive(t, now) {
			ids = append(ids, n.ID)
		}
	}
	_ = p.balancer.Add(ids...)
	if old.Doc.Shedding() || cur.Doc.Shedding() {
		p.noteShedChanges(old.Doc, cur.Doc)
	}
	if cur.Doc.Shedding() && r.cfg.BalanceFactor == 0 {
		p.wake() // a router with shedding on wrote it; this one removes it
	}
	var gone []string
	for _, n := range old.Doc.Nodes {
		if _, still := cur.Doc.Node(n.ID); still {
			continue
		}
		if t := p.reporters[n.ID]; t == nil || !r.alive(t, now) {
			gone = append(gone, n.ID)
		}
	}
	p.balancer.Forget(gone...) // at once: each call re-lays the selection snapshot
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
	var lastFlush time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.dirty:
		case <-retry.C:
		case <-shed:
			if !p.updateShed() {
				continue
			}
		case <-sweep.C:
			if p.name == bus.DefaultPool {
				r.forgetSilent()
			}
			if !p.due() {
				continue
			}
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
		switch {
		case err == nil:
			backoff = 50 * time.Millisecond
		case ctx.Err() != nil:
			return
		case errors.Is(err, errDocTooLarge):
			// Not retried on a timer: the next change or sweep tries again.
			p.noteOversize(err)
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

// resync re-reads the pool's ring from the bucket and writes if it must.
func (p *pool) resync(ctx context.Context) {
	opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	d, _, err := p.ring.Resync(opCtx)
	if err != nil {
		if ctx.Err() == nil {
			p.r.suspectBucket()
			p.r.log.Debug("ring resync failed", "pool", p.name, "err", err)
		}
		return
	}
	if !p.desired(d, true).Equal(d) {
		p.wake()
	}
}
