package ring

// A point names its owner by a slot: a number a member gets when it joins
// and keeps until it leaves, after which a later member may reuse it. Slots
// do not move when others join or leave, so a change rewrites only the
// points of the members that changed. The member behind a slot is in a
// two-level table of fixed-size leaves, and the membership in id order is in
// an index of short sorted chunks; both are immutable and shared between
// snapshots, and a change copies only the leaves and chunks it touches.

const (
	leafBits = 6
	leafLen  = 1 << leafBits // entries per slot leaf: 2.5 KB
)

// entry is what a snapshot knows of the member in one slot. Lookups read id,
// drain and shed; an empty id marks a free slot.
type entry struct {
	id     string
	weight float64
	shed   float64
	rank   uint32 // while shed > 0: the member's number among those that shed
	drain  bool
}

func (e *entry) member() Member {
	return Member{ID: e.id, Weight: e.weight, Draining: e.drain, Shed: e.shed}
}

// set stores m; a shed of -0, which Set lets through in a member equal to
// one on the ring, is stored as 0.
func (e *entry) set(m Member) {
	e.id, e.weight, e.drain, e.shed = m.ID, m.Weight, m.Draining, max(m.Shed, 0)
}

type leaf [leafLen]entry

// entry returns the member in slot o.
func (s *Snapshot) entry(o uint32) *entry { return &s.slots[o>>leafBits][o&(leafLen-1)] }

// numbers is an immutable stack of free numbers (slots or shed ranks);
// nil is empty. Snapshots share it: a push or a pop makes a new head.
type numbers struct {
	top  uint32
	next *numbers
	len  int
}

func (f *numbers) push(n uint32) *numbers {
	return &numbers{top: n, next: f, len: f.size() + 1}
}

func (f *numbers) size() int {
	if f == nil {
		return 0
	}
	return f.len
}

// take returns a free number from f, or a new one from *high.
func take(f **numbers, high *uint32) uint32 {
	if *f != nil {
		n := (*f).top
		*f = (*f).next
		return n
	}
	*high++
	return *high - 1
}

// idRef is one member of the id index.
type idRef struct {
	id   string
	slot uint32
}

const (
	idChunk    = 64 // members per chunk of the id index, as built
	idChunkMin = 32 // a chunk that a change leaves smaller is joined to the next
)

// idIndex is the membership sorted by id, in chunks: chunks[c] is sorted,
// not empty, and every id in it is below firsts[c+1] == chunks[c+1][0].id.
type idIndex struct {
	chunks [][]idRef
	firsts []string
}

// lookup returns the slot of the member with this id.
func (ix *idIndex) lookup(id string) (uint32, bool) {
	lo, hi := 0, len(ix.firsts) // the chunk is the last with first <= id
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ix.firsts[m] <= id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return 0, false
	}
	ch := ix.chunks[lo-1]
	lo, hi = 0, len(ch)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ch[m].id < id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(ch) && ch[lo].id == id {
		return ch[lo].slot, true
	}
	return 0, false
}

// newIDIndex indexes refs, sorted by id.
func newIDIndex(refs []idRef) idIndex {
	var ix idIndex
	ix.add(refs)
	return ix
}

// add appends refs, which sort after every id already in ix, in chunks of
// idChunk (the last one up to idChunk+idChunkMin).
func (ix *idIndex) add(refs []idRef) {
	for len(refs) > 0 {
		k := len(refs)
		if k >= idChunk+idChunkMin {
			k = idChunk
		}
		ch := make([]idRef, k)
		copy(ch, refs)
		ix.chunks = append(ix.chunks, ch)
		ix.firsts = append(ix.firsts, ch[0].id)
		refs = refs[k:]
	}
}

// idOp inserts (slot >= 0) or deletes (slot < 0) one id.
type idOp struct {
	id   string
	slot int64
}

// update returns ix with ops applied; ops are sorted by id and unique,
// inserts name absent ids and deletes present ones. Chunks no op touches
// are shared; touched ones are copied once, and one left under idChunkMin
// entries is merged with the next.
func (ix *idIndex) update(ops []idOp) idIndex {
	out := idIndex{
		chunks: make([][]idRef, 0, len(ix.chunks)+len(ops)/idChunk+1),
		firsts: make([]string, 0, len(ix.firsts)+len(ops)/idChunk+1),
	}
	var pend []idRef // entries of touched chunks not yet placed
	k := 0
	for c, ch := range ix.chunks {
		end := k
		for end < len(ops) && (c+1 == len(ix.chunks) || ops[end].id < ix.firsts[c+1]) {
			end++
		}
		if end == k && len(pend) == 0 {
			out.chunks, out.firsts = append(out.chunks, ch), append(out.firsts, ix.firsts[c])
			continue
		}
		pend = mergeIDs(pend, ch, ops[k:end])
		k = end
		if len(pend) >= idChunkMin {
			out.add(pend)
			pend = pend[:0]
		}
	}
	pend = mergeIDs(pend, nil, ops[k:]) // into an empty index
	out.add(pend)
	return out
}

// mergeIDs appends ch with ops applied to dst.
func mergeIDs(dst, ch []idRef, ops []idOp) []idRef {
	i := 0
	for _, op := range ops {
		for i < len(ch) && ch[i].id < op.id {
			dst = append(dst, ch[i])
			i++
		}
		if op.slot < 0 {
			if i < len(ch) && ch[i].id == op.id {
				i++
			}
			continue
		}
		dst = append(dst, idRef{op.id, uint32(op.slot)})
	}
	return append(dst, ch[i:]...)
}
