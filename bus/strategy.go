package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"

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
	Select(ctx context.Context, q Request) (Reply, error)
	// Report takes a node's validated health report.
	Report(node string, h Health) error
}

// consistentHash answers from the ring the router last saw in the bucket.
// Its Report feeds the membership that the router writes to the bucket.
type consistentHash struct{ r *Router }

func (consistentHash) Name() string { return StrategyConsistentHash }

func (c consistentHash) Report(node string, h Health) error { return c.r.observe(node, h) }

func (c consistentHash) Select(ctx context.Context, q Request) (Reply, error) {
	v := c.r.ring.current()
	reply := Reply{Strategy: StrategyConsistentHash, Revision: v.rev}
	if q.Keys != nil {
		reply.Results = make([]Result, len(q.Keys))
		buf := make([]string, 0, q.Count*len(q.Keys))
		for i, k := range q.Keys {
			if i%256 == 255 && ctx.Err() != nil {
				return Reply{}, fmt.Errorf("%w: %w", ErrInternal, ctx.Err())
			}
			start := len(buf)
			var err error
			if buf, err = lookup(v.snap, buf, k, q); err != nil {
				return Reply{}, err
			}
			reply.Results[i] = Result{Key: k, Node: buf[start]}
			if q.Count > 1 {
				reply.Results[i].Nodes = buf[start:len(buf):len(buf)]
			}
		}
		return reply, nil
	}
	nodes, err := lookup(v.snap, make([]string, 0, q.Count), q.Key, q)
	if err != nil {
		return Reply{}, err
	}
	reply.Node = nodes[0]
	if q.Count > 1 {
		reply.Nodes = nodes
	}
	if q.Explain {
		e := &Explanation{KeyHash: fmt.Sprintf("%016x", v.snap.KeyHash(q.Key))}
		v.snap.Walk(q.Key, func(m ring.Member) bool {
			if m.ID == nodes[0] {
				return false
			}
			if m.Draining && (q.Candidates == nil || slices.Contains(q.Candidates, m.ID)) {
				e.Skipped = append(e.Skipped, m.ID)
			}
			return true
		})
		reply.Explanation = e
	}
	return reply, nil
}

// lookup appends the nodes for key to dst.
func lookup(s *ring.Snapshot, dst []string, key string, q Request) ([]string, error) {
	var err error
	if q.Candidates != nil {
		dst, err = s.AppendFrom(dst, key, q.Candidates, q.Count)
	} else {
		dst, err = s.AppendN(dst, key, q.Count)
	}
	if errors.Is(err, ring.ErrEmpty) {
		if q.Candidates != nil {
			return dst, fmt.Errorf("%w: no candidate node is usable", ErrNoNodes)
		}
		return dst, fmt.Errorf("%w: the ring has no members", ErrNoNodes)
	}
	if err != nil {
		return dst, fmt.Errorf("%w: %w", ErrInternal, err)
	}
	return dst, nil
}

// resourceAware picks by health among the ring's members and the nodes
// that report.
type resourceAware struct {
	r *Router
	b *resourceaware.Balancer
}

func (resourceAware) Name() string { return StrategyResourceAware }

func (s resourceAware) Report(node string, h Health) error {
	if h.Status == StatusLeaving {
		s.b.Forget(node)
		return nil
	}
	return s.b.Report(node, h.report())
}

func (s resourceAware) Select(ctx context.Context, q Request) (Reply, error) {
	if q.Keys != nil {
		return Reply{}, badRequest("keys (a batch) needs strategy %s", StrategyConsistentHash)
	}
	if err := ctx.Err(); err != nil {
		return Reply{}, fmt.Errorf("%w: %w", ErrInternal, err)
	}
	reply := Reply{Strategy: StrategyResourceAware, Revision: s.r.ring.current().rev}
	var err error
	if q.Count == 1 {
		reply.Node, err = s.b.Select(q.Candidates)
	} else {
		reply.Nodes, err = s.b.SelectN(q.Candidates, q.Count)
		if err == nil {
			reply.Node = reply.Nodes[0]
		}
	}
	if errors.Is(err, resourceaware.ErrNoNodes) {
		return Reply{}, fmt.Errorf("%w: no node has reported or joined the ring", ErrNoNodes)
	}
	if err != nil {
		return Reply{}, fmt.Errorf("%w: %w", ErrInternal, err)
	}
	if q.Explain {
		e := &Explanation{}
		for _, n := range s.b.Nodes() {
			if q.Candidates == nil || slices.Contains(q.Candidates, n.ID) {
				e.Nodes = append(e.Nodes, NodeScore{ID: n.ID, Score: n.Score, Eligible: n.Eligible, Reason: n.Reason})
			}
		}
		reply.Explanation = e
	}
	return reply, nil
}
