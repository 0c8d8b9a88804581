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
// A Balancer is safe for concurrent use. Selections read an immutable
// snapshot (selection weights and their cumulative sums) through an atomic
// pointer and pick with a binary search: no lock and no allocation on the
// pick path. Reports rebuild the snapshot, and so does the first selection
// after a report crosses the staleness line. The clock and the random source
// are injectable; by default randomness comes from ChaCha8 generators seeded
// from crypto/rand. The package imports no NATS and starts no goroutines.
package resourceaware
