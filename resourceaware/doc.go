// Package resourceaware picks nodes in proportion to how healthy they report
// themselves to be.
//
// Each node reports CPU and memory usage, active connections and average
// latency. A node with a fresh report above a threshold (CPU or memory above
// 90 %, more than 10,000 connections by default) is excluded; the others are
// picked by weighted random on
//
//	score = 0.3·(100−cpu)/100 + 0.3·(100−mem)/100
//	      + 0.2·max(0, 1−conns/MaxActiveConnections)
//	      + 0.2·max(0, 1−latency/LatencyCeiling)
//
// multiplied by the node's weight. A node with no report, or whose report is
// older than Staleness (30 s, judged by the time the Balancer received it),
// counts as neutral: eligible, score 0.5. Draining nodes get no pick while any
// other node exists. If every node is excluded, selection falls back to all
// nodes (overloaded before draining): it never fails while a node exists.
//
// Two options, off by default, keep many routers that each pick by their own
// view from herding (see Config):
//
//   - Hysteresis: a node excluded above a threshold is readmitted only at or
//     below the threshold minus a margin, so a node hovering at 90 % CPU does
//     not flap in and out with every report. Status pages call it
//     "recovering".
//   - Slow start: a node that joins, or comes back after leaving or going
//     stale, reports itself idle and would score best of all; its selection
//     weight is ramped up over a window instead (Envoy's slow start: window,
//     aggression, minimum share).
//
// With both off, selection is exactly the seed's.
//
// A Balancer is safe for concurrent use. Selections read an immutable
// snapshot through an atomic pointer: per class, a persistent tree of
// selection weights that a pick walks down in O(log n), with no lock and no
// allocation. The picks are exactly the seed's (the node whose cumulative
// weight interval, in id order, holds a uniform point). A report for a known
// node (a heartbeat) does O(log n) work: it copies its node's path in the
// tree and swaps in a new snapshot that shares everything else; a report is
// visible to the next selection. Adding or forgetting nodes re-lays the
// snapshot, O(n) however many nodes change at once. Staleness is exact to
// the nanosecond (a report exactly Staleness old is fresh): reports are kept
// in the order they go stale, and the first selection after one goes stale
// takes the writer's lock and re-weighs only the nodes that did. Slow start
// works the same way: ramping nodes are kept in the order of their next
// step, and only they cost extra work. Counts returns the number of known and eligible
// nodes without a pass over them.
//
// The clock and the random source are injectable; by default randomness
// comes from ChaCha8 generators seeded from crypto/rand. The package imports
// no NATS and starts no goroutines.
package resourceaware
