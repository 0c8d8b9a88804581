// Package ring is a consistent hash ring with weighted virtual nodes.
//
// The construction is normative (clients in other languages rebuild the same
// ring from the membership natsroute publishes):
//
//   - Hash: XXH64 with seed 0 over the UTF-8 bytes.
//   - A member with weight w owns max(1, round(V·w)) points, V being
//     Config.VirtualNodes (default 150). Point i (0-based) sits at
//     xxh64(id + ":" + decimal(i)).
//   - The ring is every point sorted by (hash, member id), so it does not
//     depend on insertion order, and a hash collision never lets the removal
//     of one member delete another member's point.
//   - Get(key) hashes the key and returns the owner of the first point whose
//     hash is >= the key's hash, wrapping to the first point. GetN walks on
//     clockwise, collecting distinct members in ring order.
//   - A draining member keeps its points, but lookups walk past them to the
//     next member that is not draining. If every member in play is draining,
//     they are used as if none were.
//   - GetFrom restricts a lookup to candidates and answers exactly as a ring
//     built from only those candidates would (unknown candidates count as
//     weight 1 and shed nothing).
//
// Load-aware lookup (ring document format 2). A member may shed a fraction
// f in (0, 1] of its keys (Member.Shed): it sheds key k iff u < f, where
// x = xxh64(k + "\x00" + id) and u = (x >> 11) / 2^53 (Sheds). Walking
// clockwise from k's point and meeting each member once, GetN(k, n) is the
// first n of: the members that are not draining and do not shed k, in walk
// order, then the members that are not draining and shed k, in walk order.
// If every member is draining, the walk order as it is (shed plays no part).
// Get(k) is the first of GetN(k, 1); GetFrom applies the same rule to the
// ring of exactly the candidates. Shed moves no point, so:
//
//   - with no member shedding, every answer is exactly that of format 1;
//   - a key whose owner does not shed it keeps its owner: shedding never
//     moves a key between two members that do not shed it;
//   - a member with shed f hands on about f of its keys, each to the next
//     member on the walk that keeps it;
//   - removing a shed gives every key its owner back, and a change of shed
//     (or draining) alone shares the points of the previous snapshot.
//
// A Ring is safe for concurrent use: lookups read an immutable Snapshot
// through an atomic pointer and never lock; writers build a new Snapshot and
// swap it in. Get, GetN with a caller buffer (AppendN) and GetFrom over small
// candidate sets allocate nothing, with or without shedding members. A ring
// of 10,000 members × 150 points takes about 9 bytes a point (13 MB). A
// write that changes a few members costs their points times a log, and
// shares the rest of the previous snapshot; one that moves more than an
// eighth of the points builds the ring afresh. The package is deterministic
// and has no goroutines or globals of its own.
package ring
