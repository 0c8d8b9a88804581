// Package bus is what an application imports to use natsroute: ask a router
// which node takes a key or a request (Client), report this process's
// health so that it is routed to (Reporter, Load, SystemHealth), and route
// locally with no round trip from a copy of the ring kept up to date from
// the KV bucket (WatchRing, RingCache).
//
// It also holds the wire contract that every client, in any language,
// implements: the subjects (route.request, route.ring, route.nodes,
// route.pools, health.<node>), the payloads and their codecs (Request,
// Reply, Health, RingDocument, the replies of route.ring/nodes/pools), the
// one-key-per-member layout of the bucket (PoolEntry, MemberEntry, their
// keys, and PoolView, which builds a pool's ring from those entries), and
// the errors with their codes. subjects.md at the root of the repository
// documents it for users.
//
// The router service itself is in package
// github.com/natsroute/natsroute/bus/router; an application that only asks,
// reports or caches does not compile it. Examples are in example_test.go
// (run them with go test -run Example ./bus, or read them on pkg.go.dev).
//
// Client, Reporter and RingCache are safe for concurrent use. RingCache
// lookups read an immutable snapshot and allocate nothing.
package bus
