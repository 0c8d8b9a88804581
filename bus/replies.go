package bus

// The replies of route.ring, route.nodes and route.pools, and what they
// take: part of the wire contract (subjects.md), like Request and Reply.

// RingState is the reply of route.ring.
type RingState struct {
	Pool     string       `json:"pool,omitempty" msgpack:"pool,omitempty"` // omitted for the default pool
	Revision uint64       `json:"revision" msgpack:"revision"`
	Ring     RingDocument `json:"ring" msgpack:"ring"`
}

// PoolRequest is the body of route.ring, route.nodes and route.pools
// (every field optional; an empty body is fine).
type PoolRequest struct {
	Pool   string `json:"pool,omitempty" msgpack:"pool,omitempty"`     // default: DefaultPool
	Offset int    `json:"offset,omitempty" msgpack:"offset,omitempty"` // route.nodes: first node of the page
	Limit  int    `json:"limit,omitempty" msgpack:"limit,omitempty"`   // route.nodes: page size (default DefaultNodesPage)
}

// Page sizes of route.nodes.
const (
	DefaultNodesPage = 1000 // about 230 KB of JSON
	MaxNodesPage     = 4000 // the server's max_payload still decides: see send
)

// NodeStatus is one node as a router sees it (route.nodes).
type NodeStatus struct {
	ID          string  `json:"id" msgpack:"id"`
	Member      bool    `json:"member" msgpack:"member"`     // on the ring
	Status      string  `json:"status" msgpack:"status"`     // up or draining
	Weight      float64 `json:"weight" msgpack:"weight"`     // ring weight and selection multiplier
	Score       float64 `json:"score" msgpack:"score"`       // ResourceAware selection weight
	Eligible    bool    `json:"eligible" msgpack:"eligible"` // ResourceAware may pick it now
	Reason      string  `json:"reason,omitempty" msgpack:"reason,omitempty"`
	Reported    bool    `json:"reported" msgpack:"reported"`           // a report has arrived since the router started
	ReportAgeMS int64   `json:"report_age_ms" msgpack:"report_age_ms"` // -1 if none
	Stale       bool    `json:"stale" msgpack:"stale"`
	CPUUsage    float64 `json:"cpu_usage" msgpack:"cpu_usage"`
	MemoryUsage float64 `json:"memory_usage" msgpack:"memory_usage"`
	Connections int64   `json:"active_connections" msgpack:"active_connections"`
	LatencyMS   float64 `json:"avg_latency_ms" msgpack:"avg_latency_ms"`
	Shed        float64 `json:"shed,omitempty" msgpack:"shed,omitempty"` // fraction of its keys it sheds (load-aware)
	// ShedState says where a shed is going: "shed 30 %, falling", or while
	// a fall waits, "shed 30 %, holding: fell back 2× (the last 6 min ago),
	// next try in 4 min". Absent when the node does not shed.
	ShedState string `json:"shed_state,omitempty" msgpack:"shed_state,omitempty"`
	// Recovering: held out by hysteresis (back under the threshold, not yet
	// under threshold − margin); Reason says by how much.
	Recovering bool `json:"recovering,omitempty" msgpack:"recovering,omitempty"`
	// SlowStart is the node's slow-start multiplier while it ramps up
	// (absent once it has its full share); Note says so in words.
	SlowStart float64 `json:"slow_start,omitempty" msgpack:"slow_start,omitempty"`
	Note      string  `json:"note,omitempty" msgpack:"note,omitempty"`
	// Down says why the node is out of the pool although it has not left,
	// e.g. "down: no responders to probe"; absent otherwise. Its next report
	// brings it back.
	Down string `json:"down,omitempty" msgpack:"down,omitempty"`
	// Ejected says why and until when callers' failures keep the node out
	// of the pool although it answers probes, e.g. "ejected: 5 failures
	// from 3 callers, back in 30 s"; absent otherwise.
	Ejected string `json:"ejected,omitempty" msgpack:"ejected,omitempty"`
}

// NodesState is the reply of route.nodes: one page of a pool's nodes.
type NodesState struct {
	Pool     string       `json:"pool,omitempty" msgpack:"pool,omitempty"` // omitted for the default pool
	Revision uint64       `json:"revision" msgpack:"revision"`
	Total    int          `json:"total" msgpack:"total"`                   // nodes in the pool, all pages
	Offset   int          `json:"offset" msgpack:"offset"`                 // of the first node of this page
	Next     int          `json:"next,omitempty" msgpack:"next,omitempty"` // offset of the next page; absent on the last
	Nodes    []NodeStatus `json:"nodes" msgpack:"nodes"`
}

// PoolsState is the reply of route.pools.
type PoolsState struct {
	Pools []PoolInfo `json:"pools" msgpack:"pools"`
}

// PoolInfo is one pool as route.pools lists it.
type PoolInfo struct {
	Name     string `json:"name" msgpack:"name"`
	Key      string `json:"key" msgpack:"key"` // KV key of its ring document
	Members  int    `json:"members" msgpack:"members"`
	Known    int    `json:"known" msgpack:"known"` // members and nodes that report for it
	Revision uint64 `json:"revision" msgpack:"revision"`
	Format   int    `json:"format" msgpack:"format"`
}
