// Package bus puts natsroute on the wire: subjects and codecs, the Router
// service, publication of the ring to a JetStream KV bucket, the Go Client,
// the health Reporter and the local RingCache.
//
// The wire contract (subjects, payloads, errors, the ring document) is
// documented for users in subjects.md at the root of the repository.
//
// A Router subscribes to health.* (every replica sees every report), serves
// route.request, route.ring, route.nodes and route.pools as a NATS micro
// service in a queue group, and keeps the ring membership in the KV bucket
// with compare-and-set writes. Lookups never block on I/O: they read
// immutable snapshots of the ring and of the health of every node.
package bus
