package router

import (
	"github.com/natsroute/natsroute/bus"
	"maps"
	"time"

	"github.com/natsroute/natsroute/resourceaware"
	"github.com/natsroute/natsroute/ring"
)

// updateShed recomputes the shed fractions the pool's members should carry
// from their fresh load reports, and reports whether they changed (the
// writer then writes the document). It runs from the pool's writer, once
// per ShedInterval, and only when load-aware ConsistentHash is on. While a
// router of a release that reads only format 1 shares the bucket, nothing
// sheds: that router would refuse the document and serve a stale ring.
func (p *pool) updateShed() bool {
	r := p.r
	doc := p.ring.Current().Doc
	var states []resourceaware.NodeState
	if !r.legacy.Load() {
		states = p.settle().Nodes()
	}
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	want := map[string]float64{}
	if states != nil {
		byID := make(map[string]int, len(states))
		for i, st := range states {
			byID[st.ID] = i
		}
		now := r.cfg.Now()
		ms := make([]ring.MemberLoad, len(doc.Nodes))
		for i, n := range doc.Nodes {
			m := ring.MemberLoad{Weight: n.Weight, Draining: n.Status == bus.StatusDraining, Shed: n.Shed}
			if j, ok := byID[n.ID]; ok && states[j].HasReport && !states[j].Stale {
				m.Fresh, m.Load = true, float64(states[j].Report.ActiveConnections)
				// A load reported before the shed last changed (plus a
				// moment for connections to turn over) cannot show the
				// change yet: the policy keeps that member's shed.
				m.Pending = !now.Add(-states[j].Age).After(p.shedAt[n.ID].Add(r.cfg.ShedInterval))
			}
			ms[i] = m
		}
		for i, f := range r.shedPolicy.Next(ms) {
			if f = bus.QuantizeShed(f); f > 0 {
				want[doc.Nodes[i].ID] = f
			}
		}
	}
	if maps.Equal(want, p.shed) {
		return false
	}
	p.shed = want
	return true
}

// noteShedChanges records when members' shed changed in the pool's
// document: every replica sees the same documents, so they agree on which
// loads were measured before a change. With r.healthMu held.
func (p *pool) noteShedChanges(old, cur bus.RingDocument) {
	now := p.r.cfg.Now()
	for _, n := range cur.Nodes {
		if o, _ := old.Node(n.ID); o.Shed != n.Shed {
			p.shedAt[n.ID] = now
		}
	}
	maps.DeleteFunc(p.shedAt, func(id string, at time.Time) bool {
		_, member := cur.Node(id)
		return !member && now.Sub(at) > p.r.cfg.MemberTTL
	})
}
