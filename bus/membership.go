package bus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
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
	left     bool // the last report said leaving
}

var errStaleSeq = errors.New("seq is older than the last one seen")

// observe records a report in the membership tracker and wakes the KV
// writer if the ring document must change. With seq set, a report older
// than the last one seen is refused (unless the node had left).
func (r *Router) observe(node string, h Health) error {
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	t := r.tracker[node]
	if t == nil {
		t = &track{}
		r.tracker[node] = t
	} else if h.Seq != 0 && h.Seq < t.seq && !t.left {
		return fmt.Errorf("%w: %w (%d < %d)", ErrInvalidReport, errStaleSeq, h.Seq, t.seq)
	}
	prev := *t
	t.seen, t.seq = r.cfg.Now(), h.Seq
	t.left = h.Status == StatusLeaving
	t.weight = h.Weight
	if t.weight == 0 {
		t.weight = 1
	}
	t.draining = h.Status == StatusDraining
	// Wake the writer when this node's ring entry should change: compared
	// with the last report (the view may not show a write in flight yet),
	// and with the view (another replica may have written otherwise).
	changed := prev.seen.IsZero() || prev.left != t.left || prev.weight != t.weight || prev.draining != t.draining
	n, member := r.ring.current().doc.node(node)
	if changed || member == t.left || (member && (n.Weight != t.weight || (n.Status == StatusDraining) != t.draining)) {
		r.wake()
	}
	return nil
}

// ingestBehind reports whether health reports are waiting to be processed.
func (r *Router) ingestBehind() bool {
	if r.healthSub == nil {
		return false
	}
	n, _, err := r.healthSub.Pending()
	return err == nil && n > 0
}

func (r *Router) wake() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// desired applies what this router knows onto base: nodes it heard from
// within the member TTL are members with their reported weight and status;
// nodes that said leaving, went silent for the TTL, or (for members it has
// never heard from) stayed silent for the TTL since it started, are not.
//
// Silence is judged by this router's receive time, so while reports are
// queued unprocessed (the router is behind, say starved of CPU) nothing
// expires: the queued reports may be the ones that keep nodes alive.
func (r *Router) desired(base RingDocument) RingDocument {
	behind := r.ingestBehind()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	now, ttl := r.cfg.Now(), r.cfg.MemberTTL
	if behind {
		ttl = time.Duration(math.MaxInt64) // expire nothing this round
	}
	nodes := make(map[string]RingNode, len(base.Nodes)+len(r.tracker))
	for _, n := range base.Nodes {
		if _, known := r.tracker[n.ID]; known || now.Sub(r.started) <= ttl {
			nodes[n.ID] = n
		}
	}
	for id, t := range r.tracker {
		if t.left || now.Sub(t.seen) > ttl {
			delete(nodes, id)
			continue
		}
		n := RingNode{ID: id, Weight: t.weight}
		if t.draining {
			n.Status = StatusDraining
		}
		nodes[id] = n
	}
	out := base
	out.Nodes = make([]RingNode, 0, len(nodes))
	for _, id := range slices.Sorted(maps.Keys(nodes)) {
		out.Nodes = append(out.Nodes, nodes[id])
	}
	return out
}

// sweep forgets tracker entries long past the TTL and reports whether the
// ring document should change (a member expired).
func (r *Router) sweep() bool {
	v := r.ring.current()
	if !r.ingestBehind() {
		r.healthMu.Lock()
		now := r.cfg.Now()
		for id, t := range r.tracker {
			if now.Sub(t.seen) > 2*r.cfg.MemberTTL {
				delete(r.tracker, id)
			}
		}
		r.healthMu.Unlock()
	}
	return !r.desired(v.doc).equal(v.doc)
}

// flush makes the bucket's document match what this router knows, with
// compare-and-set on the revision it answers from (the watch keeps that
// current, so this usually takes one round trip); on a conflict it re-reads
// the document and re-applies.
func (r *Router) flush(ctx context.Context) error {
	for attempt := 0; attempt < 50; attempt++ {
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := r.flushOnce(opCtx, attempt > 0)
		cancel()
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		r.stats.kvConflicts.Add(1)
	}
	return errors.New("bus: kv update: too many conflicts")
}

func (r *Router) flushOnce(ctx context.Context, reread bool) error {
	v := r.ring.current()
	base, rev := v.doc, v.rev
	if reread {
		var err error
		if base, rev, err = r.ring.resync(ctx); err != nil {
			return err
		}
	}
	if base.Nodes == nil {
		base = newDocument(base.VNodes)
	}
	want := r.desired(base)
	if want.equal(base) {
		return nil
	}
	data, err := want.Encode()
	if err != nil {
		return fmt.Errorf("bus: encode ring document: %w", err)
	}
	var newRev uint64
	if rev == 0 {
		newRev, err = r.ring.bucket().Create(ctx, RingKey, data)
	} else {
		newRev, err = r.ring.bucket().Update(ctx, RingKey, data, rev)
	}
	if err != nil {
		return err
	}
	r.stats.kvWrites.Add(1)
	r.ring.apply(want, newRev)
	r.log.Debug("ring written", "revision", newRev, "members", len(want.Nodes))
	return nil
}

// syncBalancer keeps ResourceAware's node set in step with the ring:
// members that have not reported count as neutral, and nodes that left the
// ring are forgotten unless they are still reporting. It runs under the
// ring follower's lock, after each new view.
func (r *Router) syncBalancer(old, cur *view) {
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	now := r.cfg.Now()
	ids := make([]string, len(cur.doc.Nodes))
	for i, n := range cur.doc.Nodes {
		ids[i] = n.ID
	}
	_ = r.balancer.Add(ids...)
	for _, n := range old.doc.Nodes {
		if _, still := cur.doc.node(n.ID); still {
			continue
		}
		if t := r.tracker[n.ID]; t == nil || t.left || now.Sub(t.seen) > r.cfg.MemberTTL {
			r.balancer.Forget(n.ID)
		}
	}
}

// write is the KV writer: it coalesces membership changes, writes them with
// compare-and-set, expires silent members and re-reads the ring now and
// then in case the watch missed something.
func (r *Router) write(ctx context.Context) {
	sweepEvery := min(max(r.cfg.MemberTTL/4, 10*time.Millisecond), time.Second)
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	backoff := 50 * time.Millisecond
	var lastFlush time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dirty:
		case <-retry.C:
		case <-sweep.C:
			if !r.sweep() {
				continue
			}
		case <-r.resyncNow:
			r.resync(ctx)
			continue
		case <-resync.C:
			r.resync(ctx)
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
		case <-r.dirty:
		default:
		}
		lastFlush = time.Now()
		if err := r.flush(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.stats.kvErrors.Add(1)
			r.log.Warn("ring write failed; retrying", "err", err, "in", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
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

// resync re-reads the ring from the bucket and writes if it must.
func (r *Router) resync(ctx context.Context) {
	opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	d, _, err := r.ring.resync(opCtx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Debug("ring resync failed", "err", err)
		}
		return
	}
	if !r.desired(d).equal(d) {
		r.wake()
	}
}
