package router

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/natsroute/natsroute/bus"

	"github.com/natsroute/natsroute/resourceaware"
	"github.com/natsroute/natsroute/ring"
)

// Strategy is one way of choosing nodes. A Router keeps both built-in
// strategies, ConsistentHash and ResourceAware, in memory; every accepted
// health report goes to each, and each request to the one it names.
type Strategy interface {
	// Name is the strategy's name on the wire.
	Name() string
	// Select answers a validated request. It reads in-memory snapshots only
	// and returns early if ctx is cancelled.
	Select(ctx context.Context, q bus.Request) (bus.Reply, error)
	// Report takes a node's validated health report.
	Report(node string, h bus.Health) error
}

// consistentHash answers from the ring the router last saw in the bucket
// for the request's pool. Its Report feeds the membership that the router
// writes to the bucket.
type consistentHash struct{ r *Router }

func (consistentHash) Name() string { return bus.StrategyConsistentHash }

func (c consistentHash) Report(node string, h bus.Health) error { return c.r.observe(node, h) }

func (c consistentHash) Select(ctx context.Context, q bus.Request) (bus.Reply, error) {
	p := c.r.pool(q.Pool)
	if p == nil {
		return bus.Reply{}, noMembers(q.Pool)
	}
	v := p.ring.Current()
	reply := bus.Reply{Strategy: bus.StrategyConsistentHash, Revision: v.Rev}
	if q.Keys != nil {
		reply.Results = make([]bus.Result, len(q.Keys))
		buf := make([]string, 0, q.Count*len(q.Keys))
		for i, k := range q.Keys {
			if i%256 == 255 && ctx.Err() != nil {
				return bus.Reply{}, fmt.Errorf("%w: %w", bus.ErrInternal, ctx.Err())
			}
			start := len(buf)
			var err error
			if buf, err = lookup(v.Snap, buf, k, q.Count, q); err != nil {
				return bus.Reply{}, err
			}
			reply.Results[i] = bus.Result{Key: k, Node: buf[start]}
			if q.Count > 1 {
				reply.Results[i].Nodes = buf[start:len(buf):len(buf)]
			}
		}
		return reply, nil
	}
	n := max(q.Count, q.Spread)
	if n == 1 { // the common case, on a buffer that stays on the stack
		var one [1]string
		got, err := lookup(v.Snap, one[:0], q.Key, 1, q)
		if err != nil {
			return bus.Reply{}, err
		}
		reply.Node = got[0]
		if q.Explain {
			reply.Explanation = explainKey(p, v.Snap, q, got[0])
		}
		return reply, nil
	}
	nodes, err := lookup(v.Snap, make([]string, 0, n), q.Key, n, q)
	if err != nil {
		return bus.Reply{}, err
	}
	reply.Node = nodes[0]
	if q.Spread > 1 {
		// A hot key: ResourceAware's pick among its first owners.
		if reply.Node, err = p.settle().Select(nodes); err != nil {
			return bus.Reply{}, fmt.Errorf("%w: %w", bus.ErrInternal, err)
		}
	}
	reply.Nodes = nodes
	if q.Explain {
		reply.Explanation = explainKey(p, v.Snap, q, nodes[0])
	}
	return reply, nil
}

// explainKey says what the walk from key passed over before owner: draining
// members and members that shed the key.
func explainKey(p *pool, s *ring.Snapshot, q bus.Request, owner string) *bus.Explanation {
	e := &bus.Explanation{KeyHash: fmt.Sprintf("%016x", s.KeyHash(q.Key)), Out: p.outNotes()}
	s.Walk(q.Key, func(m ring.Member) bool {
		if m.ID == owner {
			return false
		}
		if q.Candidates != nil && !slices.Contains(q.Candidates, m.ID) {
			return true
		}
		switch {
		case m.Draining:
			e.Skipped = append(e.Skipped, m.ID)
		case m.Shed > 0 && ring.Sheds(q.Key, m.ID, m.Shed):
			e.Shed = append(e.Shed, bus.ShedNote{ID: m.ID, Fraction: m.Shed, State: p.shedState(m.ID, m.Shed)})
		}
		return true
	})
	return e
}

// lookup appends the first n nodes for key to dst.
func lookup(s *ring.Snapshot, dst []string, key string, n int, q bus.Request) ([]string, error) {
	var err error
	if q.Candidates != nil {
		dst, err = s.AppendFrom(dst, key, q.Candidates, n)
	} else {
		dst, err = s.AppendN(dst, key, n)
	}
	if errors.Is(err, ring.ErrEmpty) {
		if q.Candidates != nil {
			return dst, fmt.Errorf("%w: no candidate node is usable", bus.ErrNoNodes)
		}
		return dst, noMembers(q.Pool)
	}
	if err != nil {
		return dst, fmt.Errorf("%w: %w", bus.ErrInternal, err)
	}
	return dst, nil
}

// resourceAware picks by health among a pool's ring members and the nodes
// that report for it.
type resourceAware struct{ r *Router }

func (resourceAware) Name() string { return bus.StrategyResourceAware }

// Report gives the report to the balancer of every pool the node reports
// for (observe, which runs first, has made sure they exist).
func (s resourceAware) Report(node string, h bus.Health) error {
	if h.Status == bus.StatusLeaving { // it leaves every pool it was in
		s.r.healthMu.Lock()
		var pools []string
		if t := s.r.tracker[node]; t != nil {
			pools = slices.Clone(t.pools)
		}
		s.r.healthMu.Unlock()
		for _, name := range append(pools, poolsOf(h)...) {
			if p := s.r.pool(name); p != nil {
				p.forget(node)
			}
		}
		return nil
	}
	rep := h.Report()
	rep.Received = s.r.cfg.Now() // a report that waits in a batch keeps its time
	for _, name := range poolsOf(h) {
		if p := s.r.pool(name); p != nil {
			if err := p.report(node, rep); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s resourceAware) Select(ctx context.Context, q bus.Request) (bus.Reply, error) {
	if q.Keys != nil {
		return bus.Reply{}, badRequest("keys (a batch) needs strategy %s", bus.StrategyConsistentHash)
	}
	if err := ctx.Err(); err != nil {
		return bus.Reply{}, fmt.Errorf("%w: %w", bus.ErrInternal, err)
	}
	p := s.r.pool(q.Pool)
	if p == nil {
		return bus.Reply{}, noMembers(q.Pool)
	}
	b := p.settle()
	reply := bus.Reply{Strategy: bus.StrategyResourceAware, Revision: p.ring.Current().Rev}
	var err error
	if q.Count == 1 {
		reply.Node, err = b.Select(q.Candidates)
	} else {
		reply.Nodes, err = b.SelectN(q.Candidates, q.Count)
		if err == nil {
			reply.Node = reply.Nodes[0]
		}
	}
	if errors.Is(err, resourceaware.ErrNoNodes) {
		if p.name != bus.DefaultPool && q.Candidates == nil {
			return bus.Reply{}, noMembers(p.name)
		}
		return bus.Reply{}, fmt.Errorf("%w: no node has reported or joined the ring", bus.ErrNoNodes)
	}
	if err != nil {
		return bus.Reply{}, fmt.Errorf("%w: %w", bus.ErrInternal, err)
	}
	if q.Explain {
		e := &bus.Explanation{}
		for _, n := range b.Nodes() {
			if q.Candidates == nil || slices.Contains(q.Candidates, n.ID) {
				e.Nodes = append(e.Nodes, bus.NodeScore{ID: n.ID, Score: n.Score, Eligible: n.Eligible, Reason: n.Reason, Note: n.Note})
			}
		}
		e.Out = p.outNotes()
		reply.Explanation = e
	}
	return reply, nil
}
