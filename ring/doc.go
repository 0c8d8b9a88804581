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
//     weight 1).
//
// A Ring is safe for concurrent use: lookups read an immutable Snapshot
// through an atomic pointer and never lock; writers build a new Snapshot and
// swap it in. Get, GetN with a caller buffer (AppendN) and GetFrom over small
// candidate sets allocate nothing. The package is deterministic and has no
// goroutines or globals of its own.
package ring
