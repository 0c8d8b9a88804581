package bus

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/ring"
)

// KVEntry is what a PoolView reads of a KV entry; jetstream.KeyValueEntry
// has it.
type KVEntry interface {
	Key() string
	Value() []byte
	Revision() uint64
	Operation() jetstream.KeyValueOp
}

// PoolView builds one pool's ring from the KV entries of the
// one-key-per-member layout (v3): "pools.<pool>" and "members.<pool>.<node>".
// Feed it every entry of those keys in stream order (a KV watch of
// PoolWatchKeys gives that, initial values first) with Apply, and call
// Publish for a snapshot: after the watch's initial values are all applied
// (its nil entry), then once per batch of delivered entries.
//
// Each member change costs O(1) in Apply; Publish applies the changes
// gathered since the last one to the ring with ring.Apply, which costs the
// changed members' points times a log and shares the rest of the previous
// snapshot (a batch that moves more than an eighth of the points is one
// fresh build: a burst of 10,000 joins is one build, not 10,000).
//
// The rules it implements (subjects.md, "Ring publication, one key per
// member (v3)"):
//
//   - The pool is v3 iff "pools.<pool>" holds a value. Its vnodes build the
//     ring; a value this version cannot read (another format or hash)
//     stops Publish with an error, and the caller keeps its last good ring.
//   - A member is on the ring iff its key holds a value. A value that is
//     refused (DecodeMemberEntry) counts as no value, so readers that start
//     at different times agree; Err reports it until the key is fixed or
//     removed.
//   - The revision is the highest KV revision applied among the pool's
//     keys, delete and purge markers included, and also entries that
//     change nothing or are refused.
//
// A PoolView is not safe for concurrent use: one goroutine applies and
// publishes; the snapshots it returns are immutable and may be shared.
type PoolView struct {
	pool, poolKey, memberPrefix string

	rev     uint64
	entry   *PoolEntry // the pool's valid value; nil if none
	poolErr error      // "pools.<pool>" holds a value that was refused
	members map[string]ring.Member
	refused map[string]error // member keys whose value was refused

	rg      *ring.Ring    // nil: build afresh at the next Publish
	pending []ring.Change // member changes not yet applied to rg
	dirty   bool          // something (if only the revision) changed since last
	last    *PoolSnapshot
}

// NewPoolView returns the view of pool with nothing applied.
func NewPoolView(pool string) (*PoolView, error) {
	if err := ValidatePoolName(pool); err != nil {
		return nil, fmt.Errorf("bus: NewPoolView: %w", err)
	}
	return &PoolView{
		pool: pool, poolKey: PoolKeyV3(pool), memberPrefix: MembersKeyPrefix + pool + ".",
		members: map[string]ring.Member{}, refused: map[string]error{}, dirty: true,
	}, nil
}

// PoolWatchKeys returns the KV watch filters of pool's v3 keys:
// "pools.<pool>" and "members.<pool>.*".
func PoolWatchKeys(pool string) []string {
	return []string{PoolKeyV3(pool), MembersFilter(pool)}
}

// Pool returns the pool's name.
func (v *PoolView) Pool() string { return v.pool }

// Revision returns the highest revision applied among the pool's keys.
func (v *PoolView) Revision() uint64 { return v.rev }

// V3 reports whether "pools.<pool>" holds a value (readable or not).
func (v *PoolView) V3() bool { return v.entry != nil || v.poolErr != nil }

// Member returns the member node as applied, if it is one.
func (v *PoolView) Member(node string) (ring.Member, bool) {
	m, ok := v.members[node]
	return m, ok
}

// Len returns the number of members applied.
func (v *PoolView) Len() int { return len(v.members) }

// Apply applies one entry. Entries of keys that are not the pool's are
// ignored (nil). It returns an error, wrapping ErrInvalidEntry, for an
// entry it refused; the entry still counts (see PoolView).
func (v *PoolView) Apply(e KVEntry) error {
	key := e.Key()
	var node string
	switch {
	case key == v.poolKey:
	case strings.HasPrefix(key, v.memberPrefix) && !strings.Contains(key[len(v.memberPrefix):], "."):
		node = key[len(v.memberPrefix):]
	default:
		return nil
	}
	v.rev = max(v.rev, e.Revision())
	v.dirty = true
	put := e.Operation() == jetstream.KeyValuePut
	if node == "" {
		return v.applyPool(put, e.Value(), e.Revision())
	}
	if err := ValidateNodeID(node); err != nil {
		return fmt.Errorf("%w: key %q at revision %d: %w", ErrInvalidEntry, key, e.Revision(), err)
	}
	var m MemberEntry
	var err error
	if put {
		if m, err = DecodeMemberEntry(e.Value()); err != nil {
			err = fmt.Errorf("key %q at revision %d (the member counts as absent): %w", key, e.Revision(), err)
			v.refused[node] = err
			put = false
		} else {
			delete(v.refused, node)
		}
	} else {
		delete(v.refused, node)
	}
	// Changes are kept for the ring only while there is one to patch;
	// otherwise the next Publish builds it from members.
	if put {
		rm := m.Member(node)
		if old, ok := v.members[node]; !ok || old != rm {
			v.members[node] = rm
			if v.rg != nil {
				v.pending = append(v.pending, ring.Change{Member: rm})
			}
		}
	} else if _, ok := v.members[node]; ok {
		delete(v.members, node)
		if v.rg != nil {
			v.pending = append(v.pending, ring.Change{Member: ring.Member{ID: node}, Remove: true})
		}
	}
	return err
}

func (v *PoolView) applyPool(put bool, value []byte, rev uint64) error {
	if !put {
		v.entry, v.poolErr, v.rg, v.pending = nil, nil, nil, nil
		return nil
	}
	p, err := DecodePoolEntry(value)
	if err != nil {
		// Nothing is published until a readable value comes; the ring is
		// built afresh then, rather than gathering changes meanwhile.
		v.poolErr = fmt.Errorf("key %q at revision %d: %w", v.poolKey, rev, err)
		v.rg, v.pending = nil, nil
		return v.poolErr
	}
	if v.entry == nil || v.entry.VNodes != p.VNodes {
		v.rg, v.pending = nil, nil // built afresh with the new vnodes
	}
	v.entry, v.poolErr = &p, nil
	return nil
}

// Err returns why the pool's value, or some member's, was refused (the
// first member key in id order, and how many); nil if none is.
func (v *PoolView) Err() error {
	if v.poolErr != nil {
		return v.poolErr
	}
	if len(v.refused) == 0 {
		return nil
	}
	first := slices.Min(slices.Collect(maps.Keys(v.refused)))
	if len(v.refused) == 1 {
		return v.refused[first]
	}
	return fmt.Errorf("%d member entries refused, first: %w", len(v.refused), v.refused[first])
}

// Publish applies the member changes gathered since the last call to the
// ring and returns the pool's snapshot (the previous one if nothing, not
// even the revision, changed). It fails, wrapping ErrInvalidEntry, while
// "pools.<pool>" holds a value it cannot read; the caller keeps answering
// from its last good snapshot. A pool that is not v3 gets a snapshot with
// V3 false and no ring.
func (v *PoolView) Publish() (*PoolSnapshot, error) {
	if v.poolErr != nil {
		return nil, v.poolErr
	}
	if !v.dirty && v.last != nil {
		return v.last, nil
	}
	s := &PoolSnapshot{Pool: v.pool, Revision: v.rev}
	if v.entry != nil {
		if v.rg == nil {
			ms := slices.Collect(maps.Values(v.members))
			slices.SortFunc(ms, func(a, b ring.Member) int { return cmp.Compare(a.ID, b.ID) })
			rg, err := ring.New(ring.Config{VirtualNodes: v.entry.VNodes}, ms...)
			if err != nil { // entries are validated: a bug, not bad input
				return nil, fmt.Errorf("bus: pool %q: building the ring: %w", v.pool, err)
			}
			v.rg = rg
		} else if len(v.pending) > 0 {
			if err := v.rg.Apply(v.pending...); err != nil {
				return nil, fmt.Errorf("bus: pool %q: applying %d changes: %w", v.pool, len(v.pending), err)
			}
		}
		v.pending = v.pending[:0]
		s.V3, s.VNodes, s.Ring = true, v.entry.VNodes, v.rg.Snapshot()
	}
	v.last, v.dirty = s, false
	return s, nil
}

// PoolSnapshot is a pool's ring as a PoolView published it: immutable.
type PoolSnapshot struct {
	Pool     string
	Revision uint64 // the pool's revision (PoolView.Revision)
	V3       bool   // "pools.<pool>" held a readable value; otherwise VNodes is 0 and Ring nil
	VNodes   int
	Ring     *ring.Snapshot

	docOnce sync.Once
	doc     RingDocument
}

// Document returns the membership as the format-1/2 document a reader of
// that layout would hold at the same membership (format 2 iff a member
// sheds; nodes sorted by id). It is built from the ring on first use
// (O(members)) and kept. A snapshot that is not V3 has an empty document
// of the default vnodes.
func (s *PoolSnapshot) Document() RingDocument {
	s.docOnce.Do(func() {
		if !s.V3 {
			s.doc = NewRingDocument(ring.DefaultVirtualNodes)
			return
		}
		d := NewRingDocument(s.VNodes)
		ms := s.Ring.Members()
		d.Nodes = make([]RingNode, len(ms))
		for i, m := range ms {
			n := RingNode{ID: m.ID, Weight: m.Weight, Shed: m.Shed}
			if m.Draining {
				n.Status = StatusDraining
			}
			d.Nodes[i] = n
		}
		s.doc = d.WithFormat()
	})
	return s.doc
}
