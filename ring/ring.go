package ring

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Ring is a consistent hash ring whose membership can change. Lookups read
// the current Snapshot without locking; Add, Remove and Set build a new
// Snapshot (reusing the points of every unchanged member) and swap it in.
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
	r.snap.Store(derive(&Snapshot{vnodes: cfg.VirtualNodes, hash: cfg.hash}, next))
	return r, nil
}

// Snapshot returns the current immutable ring.
func (r *Ring) Snapshot() *Snapshot { return r.snap.Load() }

// Add adds members, or replaces members that are already on the ring (their
// weight, draining flag and shed). Only the points of new or re-weighted
// members are computed; the rest are merged in place.
func (r *Ring) Add(members ...Member) error {
	add, err := normalizeAll(members, false)
	if err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	old := r.snap.Load()
	next := make([]Member, 0, len(old.members)+len(add))
	i, j := 0, 0
	for i < len(old.members) || j < len(add) {
		switch {
		case j == len(add) || (i < len(old.members) && old.members[i].ID < add[j].ID):
			next = append(next, old.members[i])
			i++
		case i == len(old.members) || add[j].ID < old.members[i].ID:
			next = append(next, add[j])
			j++
		default:
			next = append(next, add[j])
			i, j = i+1, j+1
		}
	}
	r.snap.Store(derive(old, next))
	return nil
}

// Remove removes the members with these ids; unknown ids are ignored.
func (r *Ring) Remove(ids ...string) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	old := r.snap.Load()
	gone := func(m Member) bool { return slices.Contains(ids, m.ID) }
	if len(ids) > 8 {
		set := make(map[string]struct{}, len(ids))
		for _, id := range ids {
			set[id] = struct{}{}
		}
		gone = func(m Member) bool { _, ok := set[m.ID]; return ok }
	}
	next := slices.DeleteFunc(slices.Clone(old.members), gone)
	if len(next) == len(old.members) {
		return
	}
	r.snap.Store(derive(old, next))
}

// Set replaces the whole membership in one swap. Members whose weight did
// not change keep their points, so applying a document in which one member
// changed costs one pass over the points, not a rebuild.
func (r *Ring) Set(members []Member) error {
	next, err := normalizeAll(members, false)
	if err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.snap.Store(derive(r.snap.Load(), next))
	return nil
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
