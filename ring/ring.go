package ring

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Ring is a consistent hash ring whose membership can change. Lookups read
// the current Snapshot without locking; Add, Remove, Set and Apply derive a
// new Snapshot from the current one and swap it in. A change of a few
// members costs their points (times a log), not the ring's: the new
// snapshot shares everything else with the old one (see Snapshot).
type Ring struct {
	writeMu sync.Mutex // serializes writers; readers never take it
	snap    atomic.Pointer[Snapshot]
}

// New returns a ring with the given members.
func New(cfg Config, members ...Member) (*Ring, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	next, err := normalizeAll(members, false)
	if err != nil {
		return nil, err
	}
	r := &Ring{}
	r.snap.Store(build(cfg.VirtualNodes, cfg.hash, next))
	return r, nil
}

// Snapshot returns the current immutable ring.
func (r *Ring) Snapshot() *Snapshot { return r.snap.Load() }

// Add adds members, or replaces members that are already on the ring (their
// weight, draining flag and shed).
func (r *Ring) Add(members ...Member) error {
	add, err := normalizeAll(members, false)
	if err != nil {
		return err
	}
	chs := make([]change, len(add))
	for i, m := range add {
		chs[i] = change{m: m}
	}
	r.update(chs, nil)
	return nil
}

// Remove removes the members with these ids; unknown ids are ignored.
func (r *Ring) Remove(ids ...string) {
	chs := make([]change, len(ids))
	for i, id := range ids {
		chs[i] = change{m: Member{ID: id}, remove: true}
	}
	r.update(sortChanges(chs), nil)
}

// Set replaces the whole membership in one swap. Only the members that
// differ from the current ones cost more than a comparison: applying a
// document in which one member changed costs that member's points, plus one
// pass over the list if it is sorted by id (ring documents are), or a sort.
func (r *Ring) Set(members []Member) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	old := r.snap.Load()
	chs, ok := old.diff(members)
	if !ok {
		next, err := normalizeAll(members, false)
		if err != nil {
			return err
		}
		members = next
		chs, _ = old.diff(next)
	}
	if next := old.apply(chs, members); next != old {
		r.snap.Store(next)
	}
	return nil
}

// Change is one member's change in a batch for Apply: Member joins the ring
// or replaces the member with its ID, or, with Remove set, the member with
// Member.ID leaves (only the ID is read; an unknown ID is ignored).
type Change struct {
	Member Member
	Remove bool
}

// Apply applies changes in one swap, in order: of several changes to one
// member, the last wins. Few changes cost their points, times a log; when
// the points they move are more than an eighth of the ring, it is built
// afresh instead (a burst of 10,000 joins is one build). If a change is
// invalid, none is applied.
func (r *Ring) Apply(changes ...Change) error {
	chs := make([]change, len(changes))
	for i, c := range changes {
		chs[i] = change{m: c.Member, remove: c.Remove}
		if c.Remove {
			chs[i].m = Member{ID: c.Member.ID}
			continue
		}
		m, err := c.Member.normalize()
		if err != nil {
			return err
		}
		chs[i].m = m
	}
	r.update(sortChanges(chs), nil)
	return nil
}

// sortChanges sorts chs by id, keeping the last of several for one id.
func sortChanges(chs []change) []change {
	slices.SortStableFunc(chs, func(a, b change) int { return strings.Compare(a.m.ID, b.m.ID) })
	out := chs[:0]
	for i, c := range chs {
		if i+1 < len(chs) && chs[i+1].m.ID == c.m.ID {
			continue
		}
		out = append(out, c)
	}
	return out
}

// update applies chs (sorted by id, unique) and swaps the result in.
func (r *Ring) update(chs []change, full []Member) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	old := r.snap.Load()
	if next := old.apply(chs, full); next != old {
		r.snap.Store(next)
	}
}

// Members returns the membership sorted by ID.
func (r *Ring) Members() []Member { return r.Snapshot().Members() }

// Len returns the number of members.
func (r *Ring) Len() int { return r.Snapshot().Len() }

// Get returns the member that owns key; see Snapshot.Get.
func (r *Ring) Get(key string) (string, error) { return r.Snapshot().Get(key) }

// GetN returns up to n distinct members for key; see Snapshot.GetN.
func (r *Ring) GetN(key string, n int) ([]string, error) { return r.Snapshot().GetN(key, n) }

// AppendN is GetN appending to dst; see Snapshot.AppendN.
func (r *Ring) AppendN(dst []string, key string, n int) ([]string, error) {
	return r.Snapshot().AppendN(dst, key, n)
}

// GetFrom is GetN restricted to candidates; see Snapshot.GetFrom.
func (r *Ring) GetFrom(key string, candidates []string, n int) ([]string, error) {
	return r.Snapshot().GetFrom(key, candidates, n)
}
