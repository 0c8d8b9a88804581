// Package router is the natsroute router service: it takes health reports
// from health.* (every replica sees every report), keeps each pool's ring
// membership in the JetStream KV bucket with compare-and-set writes, and
// serves route.request, route.ring, route.nodes and route.pools as a NATS
// micro service in a queue group. It probes nodes that miss a report
// (health.<node>.probe) and takes down those that do not answer; every
// replica takes route.feedback. Lookups never block on I/O: they read
// immutable snapshots of the ring and of the health of every node.
//
// The cmd/router binary runs one. To embed a router in another program,
// give it a connection (JetStream enabled on the server) and a Config:
//
//	cfg := router.DefaultConfig()
//	cfg.Logger = logger
//	r, err := router.New(nc, cfg)
//	if err != nil { ... }
//	if err := r.Start(ctx); err != nil { ... } // ctx bounds start-up only
//	defer r.Close()                            // drains in-flight requests
//
// Stats, Nodes, Pools, PoolRing and Ready give what /metrics, /status and
// /readyz show. Any number of routers, in any number of programs, may share
// a bucket: they agree on the ring through it. A Router is safe for
// concurrent use; Close is idempotent and stops every goroutine it started.
//
// Files by role: router.go (the Router: lifecycle, pools, queries),
// router_requests.go (the request path: decode, pool, strategy, encode),
// membership.go (what reports say of nodes), pool.go and pool_writer.go
// (a pool's state and its KV writer), strategy.go, keeper.go (the bucket),
// legacy.go (routers of an earlier release), liveness.go (probes of nodes
// that miss a report or that callers report on route.feedback, and taking
// down the dead; when to probe is internal/probe, which does no I/O),
// stats.go, config.go.
package router
