package router

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
)

// The one-key-per-member layout (v3; DESIGN.md, "Ring publication, one key
// per member (v3)"). A pool's writer makes its member keys say what the
// router wants (desired, on the ring the pool answers from): create for a
// join, compare-and-set update for a change, delete with the last revision
// for a leave, pools.<pool> last. The keeper's watch applies every entry to
// the pool's PoolView and publishes one snapshot per batch, with the pool's
// v3 revision; that is what requests are answered from. While the legacy
// document is on, the writer then writes the same membership as one
// format-1/2 document for routers and caches of earlier releases.

// v3Key is what a router knows of one v3 key of a pool: its last revision
// (of a value or of a delete marker) and its value.
type v3Key struct {
	rev      uint64    // 0: unknown (never seen, or deleted by this router and not yet watched)
	present  bool      // the key holds a value
	deleting bool      // this router deleted it; the marker has not come back yet
	mine     bool      // this router wrote the entry at rev (a value, or its delete's marker)
	value    []byte    // when present
	at       time.Time // when the entry at rev was written (the server's clock); zero if this router wrote it, or not known
	// When another router (or an operator) last wrote or deleted the key,
	// by the server's clock, whatever this router wrote since: a write of
	// this router that kept their news (say, their weight with a shed
	// taken off) must not make it look older than this router's reports.
	othersAt time.Time
	// othersAt before the entry at rev: if that entry turns out to be this
	// router's write (its echo came before the write returned), othersAt
	// goes back to it.
	othersBefore time.Time
}

// v3Keys is a pool's v3 keys as last seen: fed by the bucket watch (the
// keeper) and by the pool's own writes, read by the pool's writer.
type v3Keys struct {
	mu   sync.Mutex // guards keys
	keys map[string]v3Key
}

// observe records an entry of a key, unless a newer one is known (the
// watch may deliver an entry after the writer saw a later revision).
//
// It reports whether the entry is news to this router: not one it knew of,
// nor the marker of its own delete (the watch brings this router's writes
// back too, and they must not wake its writer again).
func (s *v3Keys) observe(key string, rev uint64, present bool, value []byte, at time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		s.keys = map[string]v3Key{}
	}
	old, ok := s.keys[key]
	if ok && old.rev >= rev {
		return false
	}
	ours := old.deleting && !present // the marker of this router's delete
	k := v3Key{rev: rev, present: present, value: value, at: at, mine: ours, othersAt: old.othersAt, othersBefore: old.othersAt}
	if !ours {
		k.othersAt = at
	}
	s.keys[key] = k
	return !ours
}

// wrote records this router's own write of key at rev. The watch may have
// brought the entry back before the write returned; it is this router's
// all the same.
func (s *v3Keys) wrote(key string, rev uint64, value []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		s.keys = map[string]v3Key{}
	}
	k, ok := s.keys[key]
	switch {
	case ok && k.rev > rev:
		return
	case ok && k.rev == rev:
		k.mine, k.othersAt = true, k.othersBefore
	default:
		k = v3Key{rev: rev, present: true, value: value, mine: true, othersAt: k.othersAt}
	}
	s.keys[key] = k
}

// writtenAfter reports whether another router (or an operator) wrote or
// deleted key after t, by the server's clock. This router's own entries
// never count (an echo of its own write must not look like news).
func (s *v3Keys) writtenAfter(key string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[key]
	return ok && k.othersAt.After(t)
}

// markers returns the keys with prefix whose last entry is a delete or
// purge marker written before cutoff, and the highest of their revisions.
func (s *v3Keys) markers(prefix string, cutoff time.Time) (map[string]uint64, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]uint64{}
	var top uint64
	for key, k := range s.keys {
		if !k.present && k.rev > 0 && !k.at.IsZero() && k.at.Before(cutoff) && strings.HasPrefix(key, prefix) {
			out[key] = k.rev
			top = max(top, k.rev)
		}
	}
	return out, top
}

// purged forgets a key whose marker at rev was purged, unless it changed
// since.
func (s *v3Keys) purged(key string, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[key]; ok && !k.present && k.rev == rev {
		delete(s.keys, key)
	}
}

// deleted records a delete by this router: the key holds nothing, and the
// marker's revision is not known until the watch brings it (kv.Delete does
// not return it). The old revision stays as a floor, so a late entry of the
// value just deleted is not taken for the current one.
func (s *v3Keys) deleted(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[key]
	if ok && !k.present {
		return // the watch brought the marker first
	}
	if s.keys == nil {
		s.keys = map[string]v3Key{}
	}
	s.keys[key] = v3Key{rev: k.rev, deleting: true, othersAt: k.othersAt}
}

func (s *v3Keys) get(key string) v3Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[key]
}

// reset forgets everything: the bucket was created anew.
func (s *v3Keys) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = nil
}

// present returns the keys with prefix that hold a value.
func (s *v3Keys) present(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for key, k := range s.keys {
		if k.present && strings.HasPrefix(key, prefix) {
			out = append(out, key)
		}
	}
	return out
}

// legacyDoc is what a router knows of its pool's whole document key: its
// last revision and value.
type legacyDoc struct {
	mu      sync.Mutex
	rev     uint64 // 0: absent, or deleted
	present bool
	data    []byte
	wrote   *bus.RingDocument // the membership this router last wrote there, at rev
}

func (l *legacyDoc) observe(rev uint64, data []byte, present bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if rev < l.rev {
		return
	}
	if rev > l.rev {
		l.wrote = nil
	}
	l.rev, l.present, l.data = rev, present, data
}

// reset forgets the document: the bucket was created anew.
func (l *legacyDoc) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rev, l.present, l.data, l.wrote = 0, false, nil, nil
}

// publish makes the pool answer from its member keys once a batch of the
// watch has been applied to its view, if pools.<pool> holds a value; if it
// does not, the pool answers from its document, as before v3 (the router
// converts it at its first write). A pool whose keys are gone (deleted by
// hand) goes back to its document until the writer puts them back.
func (p *pool) publish() {
	r := p.r
	news, newsOf := p.news, p.newsOf
	p.news, p.newsOf = false, p.newsOf[:0]
	if p.view != nil {
		s, err := p.view.Publish()
		if err != nil { // pools.<pool> unreadable: keep the last good ring
			r.stats.docRejected.Add(1)
			r.stats.limitedLog(r.log, rejectEntry, "ring entry refused; still answering from the last good ring", "pool", p.name, "err", err)
			return
		}
		if s.V3 {
			if e := p.docEntry; e != nil && e.Operation() != jetstream.KeyValuePut && !r.cfg.NoLegacyDocument {
				// Someone deleted the document: write it again. A document
				// another router wrote is left alone until this one's ring
				// changes: a router of an earlier release writes what it
				// knows there, and re-asserting ours at once would make the
				// two take turns for ever.
				p.legacyChanged()
			}
			p.docEntry = nil
			if cur := p.ring.Current(); p.ring.Published() && s.Revision < cur.Rev {
				// A fresh watch holds older revisions than the view: the
				// bucket was deleted and created anew.
				r.suspectBucket()
				return
			}
			if p.ring.Publish(s.Document(), s.Revision, s.Ring) && !r.cfg.NoLegacyDocument {
				p.legacyChanged() // the document follows the keys
			}
			// Someone else changed the keys (a replica, an operator): see
			// whether this router wants something else of them. Its own
			// writes coming back are not news.
			switch {
			case news:
				p.wake()
			case len(newsOf) > 0:
				p.wakeFor(newsOf...)
			}
			return
		}
	}
	p.ring.Unpublish()
	if e := p.docEntry; e != nil {
		p.docEntry = nil
		p.ring.ApplyEntry(e)
	}
}

// memberValue is a member's v3 value as this router writes it.
func memberValue(n bus.RingNode) bus.MemberEntry {
	m := bus.MemberEntryOf(n)
	m.Shed = bus.QuantizeShed(m.Shed)
	return m
}

// syncV3 makes the pool's member keys say want, base being what the pool
// answers from: members first (creates and updates, then deletes), the pool
// key last, so a v3 reader, which takes the pool as v3 as soon as
// "pools.<pool>" holds a value, never sees a pool converted before its
// members are there. When the pool answers from its keys, base is what
// they hold, and only the members want changes are looked at (O(members)
// comparisons, no encoding); otherwise (a pool converted from its document,
// or republished into a new bucket) every key is.
func (p *pool) syncV3(ctx context.Context, base, want bus.RingDocument) error {
	kv := p.ring.Bucket()
	if kv == nil {
		return jetstream.ErrBucketNotFound
	}
	var puts []keyPut
	var dels []string
	wanted := func(n bus.RingNode) (err error) {
		puts, err = p.wantedPut(puts, n)
		return err
	}
	if p.ring.Published() {
		// Both are sorted by id: one merge walk.
		b, w := base.Nodes, want.Nodes
		for len(b) > 0 || len(w) > 0 {
			switch {
			case len(w) == 0 || len(b) > 0 && b[0].ID < w[0].ID:
				dels = append(dels, bus.MemberKey(p.name, b[0].ID))
				b = b[1:]
				continue
			case len(b) > 0 && b[0].ID == w[0].ID:
				same := memberValue(b[0]) == memberValue(w[0])
				b = b[1:]
				if same {
					w = w[1:]
					continue
				}
			}
			if err := wanted(w[0]); err != nil {
				return err
			}
			w = w[1:]
		}
	} else {
		keep := make(map[string]bool, len(want.Nodes))
		for _, n := range want.Nodes {
			keep[bus.MemberKey(p.name, n.ID)] = true
			if err := wanted(n); err != nil {
				return err
			}
		}
		for _, key := range p.v3.present(bus.MembersKeyPrefix + p.name + ".") {
			if !keep[key] {
				dels = append(dels, key)
			}
		}
	}
	return p.writeKeys(ctx, kv, puts, dels, want.VNodes)
}

// keyPut is a member key to write and its value.
type keyPut struct {
	key  string
	data []byte
}

// wantedPut appends n's key to puts unless it already holds n's value (it
// may, before the view shows it: the watch has not brought back this
// router's write yet).
func (p *pool) wantedPut(puts []keyPut, n bus.RingNode) ([]keyPut, error) {
	key := bus.MemberKey(p.name, n.ID)
	data, err := memberValue(n).Encode(bus.JSON)
	if err != nil {
		return puts, fmt.Errorf("router: encode member %q of pool %q: %w", n.ID, p.name, err)
	}
	if k := p.v3.get(key); !k.present || !bytes.Equal(k.value, data) {
		puts = append(puts, keyPut{key, data})
	}
	return puts, nil
}

// syncChanged is syncV3 for the nodes ids only (see flush).
func (p *pool) syncChanged(ctx context.Context, base bus.RingDocument, rev uint64, ids []string) error {
	kv := p.ring.Bucket()
	if kv == nil {
		return jetstream.ErrBucketNotFound
	}
	var puts []keyPut
	var dels []string
	for _, c := range p.desiredFor(base, rev, ids) {
		var err error
		switch {
		case c.isIn && (!c.wasIn || memberValue(c.was) != memberValue(c.want)):
			puts, err = p.wantedPut(puts, c.want)
		case c.isIn:
		case c.wasIn:
			dels = append(dels, bus.MemberKey(p.name, c.id))
		default:
			// Not on the ring the pool answers from, but this router's own
			// write of it may be on its way there (a join whose leave came
			// before the watch brought the join back): take it back.
			key := bus.MemberKey(p.name, c.id)
			if k := p.v3.get(key); k.present && k.mine {
				dels = append(dels, key)
			}
		}
		if err != nil {
			return err
		}
	}
	return p.writeKeys(ctx, kv, puts, dels, base.VNodes)
}

// writeKeys writes the member keys: puts (creates and updates), then
// deletes, then pools.<pool> (unless it holds that already).
func (p *pool) writeKeys(ctx context.Context, kv jetstream.KeyValue, puts []keyPut, dels []string, vnodes int) error {
	if err := inParallel(ctx, len(puts), func(i int) error { return p.putV3(ctx, kv, puts[i].key, puts[i].data) }); err != nil {
		return err
	}
	if err := inParallel(ctx, len(dels), func(i int) error { return p.deleteV3(ctx, kv, dels[i]) }); err != nil {
		return err
	}
	pe, err := bus.NewPoolEntry(vnodes).Encode(bus.JSON)
	if err != nil {
		return fmt.Errorf("router: encode pool entry of %q: %w", p.name, err)
	}
	return p.putV3(ctx, kv, bus.PoolKeyV3(p.name), pe)
}

// legacyChanged has the writer write the pool's document again (see
// flushLegacy).
func (p *pool) legacyChanged() {
	p.legacyDue.Store(true)
	p.signal()
}

// legacyEvery is the shortest time between two writes of a pool's whole
// document. It follows the member keys, and each write is the whole
// membership (290 KB and 1 ms of encoding at 10,000 members): a rolling
// restart would otherwise write it for every change. Readers of earlier
// releases see a change at most this much later than v3 readers.
const legacyEvery = 100 * time.Millisecond

// flushLegacy writes the pool's whole document, while it is on, if the ring
// the pool answers from changed since it was last written (or the document
// was deleted), at most once per legacyEvery since *last; it returns how
// long to wait when it held the write back. A pool that still answers from
// its document writes none: its member keys are being written, and the
// document follows them once they answer.
func (p *pool) flushLegacy(ctx context.Context, last *time.Time) (time.Duration, error) {
	if p.r.cfg.NoLegacyDocument || !p.legacyDue.Load() || !p.ring.Published() {
		return 0, nil
	}
	if wait := time.Until(last.Add(legacyEvery)); wait > 0 {
		return wait, nil
	}
	p.legacyDue.Store(false)
	*last = time.Now()
	if err := p.writeLegacy(ctx, p.ring.Current().Doc); err != nil {
		p.legacyDue.Store(true)
		return 0, err
	}
	return 0, nil
}

// writeLegacy writes want as the pool's whole format-1/2 document, for
// routers and caches of earlier releases, with compare-and-set on the
// document's last revision; a lost race re-reads it and ends the write (the
// writer retries from its view then, see errKeyConflict). A document over the
// server's max_payload is not written (counted and logged once a minute):
// readers of earlier releases keep the last one that fitted.
func (p *pool) writeLegacy(ctx context.Context, want bus.RingDocument) error {
	r := p.r
	if r.cfg.NoLegacyDocument {
		return nil
	}
	l := &p.legacy
	l.mu.Lock()
	done := l.wrote != nil && l.wrote.Equal(want)
	l.mu.Unlock()
	if done {
		return nil
	}
	data, err := want.Encode()
	if err != nil {
		return fmt.Errorf("router: encode ring document: %w", err)
	}
	if limit := r.maxDocument(); len(data) > limit {
		p.noteOversize(fmt.Errorf("%w: %d members make %d bytes; the server's max_payload allows %d (the member keys are written; readers of earlier releases keep the last document)",
			errDocTooLarge, len(want.Nodes), len(data), limit))
		return nil
	}
	kv := p.ring.Bucket()
	if kv == nil {
		return jetstream.ErrBucketNotFound
	}
	l.mu.Lock()
	rev, present, same := l.rev, l.present, l.present && bytes.Equal(l.data, data)
	l.mu.Unlock()
	if !same {
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var newRev uint64
		if present {
			newRev, err = kv.Update(opCtx, p.key, data, rev)
		} else { // Create also takes a key whose last entry is a delete marker
			newRev, err = kv.Create(opCtx, p.key, data)
		}
		cancel()
		switch {
		case err == nil:
			r.stats.kvWrites.Add(1)
			l.observe(newRev, data, true)
		case !casConflict(err):
			return fmt.Errorf("router: kv write %q: %w", p.key, err)
		default:
			r.stats.kvConflicts.Add(1)
			if err := p.rereadLegacy(ctx, kv); err != nil {
				return err
			}
			l.mu.Lock()
			same = l.present && bytes.Equal(l.data, data)
			l.mu.Unlock()
			if !same {
				// Another router wrote the document since this one read it.
				// Writing want again at once, from a view that may lag behind
				// theirs, put an older membership over a newer one
				// (TestV3LegacyDocumentOn, about 1 run in 30): the writer
				// tries again after its backoff, from its view then.
				return fmt.Errorf("%w: %q", errKeyConflict, p.key)
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.wrote = &want
	r.log.Debug("ring document written", "pool", p.name, "revision", l.rev, "members", len(want.Nodes), "bytes", len(data))
	return nil
}

// rereadLegacy reads the pool's document after a lost race.
func (p *pool) rereadLegacy(ctx context.Context, kv jetstream.KeyValue) error {
	opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	e, err := kv.Get(opCtx, p.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Deleted or purged: Get does not say at which revision, and Create
		// takes a key whose last entry is a delete marker.
		p.legacy.reset()
		return nil
	case err != nil:
		return fmt.Errorf("router: kv get %q: %w", p.key, err)
	}
	p.legacy.observe(e.Revision(), e.Value(), true)
	return nil
}

// v3InFlight bounds the v3 key writes one pool's writer has in flight; the
// keys are independent, and each write's compare-and-set keeps it right
// whatever the order. A burst of 10,000 joins reached the keys after 4.5 s
// with 32 in flight, 2.0 s with 256 and 1.3 s with 1,024 (BenchmarkScale,
// one run each on this loaded 2-core machine: the round trips, not the
// CPU, bounded it).
const v3InFlight = 1024

// inParallel runs op(0..n-1) with at most v3InFlight at once and returns
// the first error (the others still finish; the writer retries the sync).
func inParallel(ctx context.Context, n int, op func(i int) error) error {
	if n <= 1 {
		if n == 1 {
			return op(0)
		}
		return nil
	}
	next := make(chan int)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var first error
	for range min(v3InFlight, n) {
		wg.Go(func() {
			for i := range next {
				if err := op(i); err != nil {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
				}
			}
		})
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return cmp.Or(first, ctx.Err())
}

// v3Attempts bounds the compare-and-set attempts on one key in one sync;
// past it the writer retries the whole sync later.
const v3Attempts = 10

// putV3 makes key hold data: create if it holds nothing, compare-and-set
// update otherwise. A lost race returns errKeyConflict: the writer decides
// again once the watch has brought the other write into the ring it answers
// from (retrying at once with what it wanted before the other write would
// undo it: replicas stepping a shed would overwrite each other's steps).
func (p *pool) putV3(ctx context.Context, kv jetstream.KeyValue, key string, data []byte) error {
	k := p.v3.get(key)
	if k.present && bytes.Equal(k.value, data) {
		return nil
	}
	opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var rev uint64
	var err error
	switch {
	case k.present:
		rev, err = kv.Update(opCtx, key, data, k.rev)
	case k.rev > 0 && !k.deleting:
		// The last entry is a delete marker at k.rev: update on it. Create
		// would first fail, then read the key, then update: three round
		// trips for every rejoin of a rolling restart. If the marker is not
		// the last entry any more (written over, or purged), Create sorts
		// it out.
		if rev, err = kv.Update(opCtx, key, data, k.rev); casConflict(err) {
			rev, err = kv.Create(opCtx, key, data)
		}
	default:
		// Create also takes a key whose last entry is a delete marker.
		rev, err = kv.Create(opCtx, key, data)
	}
	if err != nil {
		return p.keyWriteError(key, err)
	}
	p.r.stats.kvWrites.Add(1)
	p.v3.wrote(key, rev, data)
	return nil
}

// deleteV3 deletes key, which held a value at its last known revision; a
// lost race returns errKeyConflict (see putV3).
func (p *pool) deleteV3(ctx context.Context, kv jetstream.KeyValue, key string) error {
	k := p.v3.get(key)
	if !k.present {
		return nil
	}
	opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := kv.Delete(opCtx, key, jetstream.LastRevision(k.rev)); err != nil {
		return p.keyWriteError(key, err)
	}
	p.r.stats.kvWrites.Add(1)
	p.v3.deleted(key)
	return nil
}

// keyWriteError counts a lost race on key as a conflict.
func (p *pool) keyWriteError(key string, err error) error {
	if casConflict(err) {
		p.r.stats.kvConflicts.Add(1)
		return fmt.Errorf("%w: %q", errKeyConflict, key)
	}
	return fmt.Errorf("router: kv write %q: %w", key, err)
}

// rereadV3 reads key after a lost race.
func (p *pool) rereadV3(ctx context.Context, kv jetstream.KeyValue, key string) error {
	opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	e, err := kv.Get(opCtx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		p.v3.deleted(key) // deleted or purged; Create takes it either way
		return nil
	case err != nil:
		return fmt.Errorf("router: kv get %q: %w", key, err)
	}
	p.v3.observe(key, e.Revision(), true, e.Value(), time.Time{})
	return nil
}

// casConflict reports whether err is a lost compare-and-set: the key's
// revision was not the one given (or, for a create, it holds a value).
// Replicated streams report it as 10164, single ones as 10071.
func casConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || api.ErrorCode == 10164)
}

// purgeV3 purges the delete markers of the pool's members that left more
// than MemberTTL ago, so the stream does not keep a message for every node
// id ever seen. First it rewrites pools.<pool> with the same value unless
// its revision is already above every marker to purge: a reader that
// starts after the purge then computes a pool revision at least as high as
// the purged markers' (DESIGN.md, v3 Writers). Each marker is purged with
// its stream sequence as the bound, so a key created again meanwhile keeps
// its new value (kv.PurgeDeletes purges whole subjects from a listing, and
// would lose such a value).
func (p *pool) purgeV3(ctx context.Context) error {
	r := p.r
	prefix := bus.MembersKeyPrefix + p.name + "."
	old, top := p.v3.markers(prefix, r.cfg.Now().Add(-r.cfg.MemberTTL))
	if len(old) == 0 {
		return nil
	}
	kv := p.ring.Bucket()
	if kv == nil {
		return jetstream.ErrBucketNotFound
	}
	poolKey := bus.PoolKeyV3(p.name)
	for attempt := 0; ; attempt++ {
		k := p.v3.get(poolKey)
		if !k.present {
			return nil // not converted yet: syncV3 writes it first
		}
		if k.rev > top {
			break
		}
		if attempt == v3Attempts {
			return fmt.Errorf("router: kv rewrite %q before a purge: too many conflicts", poolKey)
		}
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rev, err := kv.Update(opCtx, poolKey, k.value, k.rev)
		cancel()
		if err == nil {
			r.stats.kvWrites.Add(1)
			p.v3.wrote(poolKey, rev, k.value)
			continue
		}
		if !casConflict(err) {
			return fmt.Errorf("router: kv rewrite %q before a purge: %w", poolKey, err)
		}
		r.stats.kvConflicts.Add(1)
		if err := p.rereadV3(ctx, kv, poolKey); err != nil {
			return err
		}
	}
	opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	st, err := r.js.Stream(opCtx, "KV_"+kv.Bucket())
	cancel()
	if err != nil {
		return fmt.Errorf("router: purge old delete markers: %w", err)
	}
	n := 0
	for key, rev := range old {
		if n == purgeBatch {
			break // the next sweep takes more: the writer has writes to do
		}
		subject := "$KV." + kv.Bucket() + "." + key
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := st.Purge(opCtx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeSequence(rev+1))
		cancel()
		if err != nil {
			return fmt.Errorf("router: purge the delete marker of %q: %w", key, err)
		}
		p.v3.purged(key, rev)
		p.r.stats.v3Purged.Add(1)
		n++
	}
	r.log.Debug("purged old delete markers", "pool", p.name, "markers", n, "left", len(old)-n)
	return nil
}

// purgeBatch bounds the delete markers one sweep purges, one request each,
// so the writer, which sweeps between writes, is not held up long: at
// 50,000 members, purging every marker of a mass leave under one 2 s
// deadline timed out at every sweep, holding the writer up to 2 s each
// time (in that run 643 leaves were still not written ten minutes later;
// whether this was the whole cause is not established).
const purgeBatch = 256
