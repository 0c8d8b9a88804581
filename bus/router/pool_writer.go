package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
)

// desired applies what this router knows onto base: nodes that report for
// the pool and were heard within the member TTL are members with their
// reported weight and status (and the shed the load policy wants); nodes
// that said leaving, went silent for the TTL, moved to other pools, or (for
// members this router has never heard from) stayed silent for the TTL since
// it started, are not; nor are nodes ejected from the pool. With joins false, nodes not in base stay out (used
// when the whole document would be too large to write).
func (p *pool) desired(base bus.RingDocument, rev uint64, joins bool) bus.RingDocument {
	r := p.r
	now, wall := r.silenceNow(), r.cfg.Now()
	legacy := r.legacy.Load()
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	startup := now.Sub(r.started) <= r.cfg.MemberTTL
	reporters := p.members()
	out := base
	out.Nodes = make([]bus.RingNode, 0, len(base.Nodes)+len(reporters))
	for _, n := range base.Nodes {
		if p.isEjected(n.ID, wall) {
			continue
		}
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
		if !r.alive(t, now) || p.isEjected(id, wall) {
			if member {
				if gone == nil {
					gone = make([]bool, inBase)
				}
				gone[i] = true
			}
			continue
		}
		n := bus.RingNode{ID: id, Weight: t.weight, Shed: p.shed[id]}
		if member && rev != p.shedRev {
			// The policy ran on another revision: a replica that wrote since
			// may have stepped further. Keep the document's shed until the
			// policy runs on this one, or replicas undo each other's steps.
			n.Shed = out.Nodes[i].Shed
		}
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
	want := p.desired(base, rev, true)
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
		want = p.desired(base, rev, false)
		if data, err = want.Encode(); err != nil {
			return fmt.Errorf("bus: encode ring document: %w", err)
		}
		if len(data) > limit || want.Equal(base) {
			return fmt.Errorf("%w: %d members would make %d bytes; the server's max_payload allows %d", errDocTooLarge, len(p.desired(base, rev, true).Nodes), full, limit)
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
			if r.cfg.WriteV3 {
				if err := p.purgeV3(ctx); err != nil && ctx.Err() == nil {
					r.stats.kvErrors.Add(1)
					r.log.Warn("purging old delete markers failed; trying again at the next sweep", "pool", p.name, "err", err)
				}
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
		if err == nil && r.cfg.WriteV3 {
			err = p.syncV3(ctx)
		}
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
	d, rev, err := p.ring.Resync(opCtx)
	if err != nil {
		if ctx.Err() == nil {
			p.r.suspectBucket()
			p.r.log.Debug("ring resync failed", "pool", p.name, "err", err)
		}
		return
	}
	if !p.desired(d, rev, true).Equal(d) || (p.r.cfg.WriteV3 && p.v3Differs()) {
		p.wake()
	}
}
