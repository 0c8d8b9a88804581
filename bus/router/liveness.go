package router

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsroute/natsroute/bus/router/internal/probe"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/text"
	"github.com/natsroute/natsroute/resourceaware"
)

// liveness probes nodes that miss a report or that callers say failed,
// and takes down the ones that do not answer (DESIGN.md, Liveness). A down
// member leaves its pools' ring documents as on a leave and leaves
// ResourceAware; its next report brings it back.
type liveness struct {
	r     *Router
	sched *probe.Schedule
	kick  chan struct{} // wakes run: the schedule changed at its head

	fbMu       sync.Mutex // guards the feedback token bucket
	fbTokens   float64
	fbRefilled time.Time

	probes   [probe.NumOutcomes]atomic.Uint64
	downs    [numDownReasons]atomic.Uint64
	feedback [numFeedbackOutcomes]atomic.Uint64

	fbSub *nats.Subscription // set by start
}

// Why probes took a node down.
const (
	downNoResponders = iota
	downTimeouts
	numDownReasons
)

var downReasonNames = [numDownReasons]string{"no_responders", "probe_timeouts"}

// What became of a route.feedback message.
type feedbackOutcome int

const (
	feedbackProbed      feedbackOutcome = iota // about a probing member: probed (or its probe was out already), counted toward ejection
	feedbackCounted                            // about a member that does not probe: counted toward ejection
	feedbackIgnored                            // valid, but not about a member of that pool
	feedbackInvalid                            // refused: undecodable or a bad field
	feedbackRateLimited                        // dropped: past the feedback rate
	numFeedbackOutcomes
)

var feedbackOutcomeNames = [numFeedbackOutcomes]string{"probed", "counted", "ignored", "invalid", "rate_limited"}

func newLiveness(r *Router) *liveness {
	c := r.cfg
	return &liveness{
		r:     r,
		sched: probe.New(c.ProbeMissFactor, c.ProbeTimeouts, c.ProbeRate),
		kick:  make(chan struct{}, 1),
		// A second's worth of feedback may come at once.
		fbTokens: c.FeedbackRate,
	}
}

// start subscribes to route.feedback (no queue group: every replica sees
// every message) and starts the prober.
func (l *liveness) start(ctx context.Context) error {
	r := l.r
	sub, err := r.nc.Subscribe(bus.SubjectFeedback, l.onFeedback)
	if err != nil {
		return fmt.Errorf("router: subscribe %s: %w", bus.SubjectFeedback, err)
	}
	l.fbSub = sub
	r.wg.Go(func() { l.run(ctx) })
	return nil
}

// stop unsubscribes from route.feedback; run ends with the router's context.
func (l *liveness) stop() error {
	if l.fbSub == nil {
		return nil
	}
	err := l.fbSub.Unsubscribe()
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
		err = nil
	}
	return err
}

// seen is called by observe, with r.healthMu held, for every accepted
// report: it puts a probing node back on schedule.
func (l *liveness) seen(node string, h bus.Health, now time.Time) {
	probing := h.Probe && h.Interval > 0 && h.Status != bus.StatusLeaving
	if l.sched.Seen(node, h.Interval, probing, now) {
		l.wake()
	}
}

// wake has run look at the schedule again.
func (l *liveness) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// run sends the probes that are due, sleeping until the next one is.
func (l *liveness) run(ctx context.Context) {
	r := l.r
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := r.cfg.Now()
		due, limited := l.sched.Take(now)
		l.probes[probe.RateLimited].Add(uint64(limited))
		for _, t := range due {
			r.wg.Go(func() { l.probe(ctx, t) })
		}
		wait := time.Hour
		if at, ok := l.sched.Next(now); ok {
			// The schedule's own clock may be a test's: sleep at least a
			// millisecond, at most a second, and look again.
			wait = min(max(at.Sub(now), time.Millisecond), time.Second)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-l.kick: // Reset discards a fire not received (Go 1.23 timers)
		case <-timer.C:
		}
	}
}

// probe asks a node for its health and acts on the outcome.
func (l *liveness) probe(ctx context.Context, t probe.Ticket) {
	r := l.r
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeTimeout)
	m, err := r.nc.RequestWithContext(pctx, bus.ProbeSubject(t.Node), nil)
	cancel()
	if ctx.Err() != nil {
		return // the router is closing
	}
	var o probe.Outcome
	switch {
	case err == nil:
		o = probe.Answered
	case errors.Is(err, nats.ErrNoResponders):
		o = probe.NoResponders
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		o = probe.Timeout
	default:
		o = probe.Error
		r.log.Debug("probe failed", "node", t.Node, "err", err)
	}
	l.probes[o].Add(1)
	down, current := l.sched.Result(t.Node, t.Started, o, r.cfg.Now())
	if down {
		kind, reason := downNoResponders, "down: no responders to probe"
		if o == probe.Timeout {
			kind, reason = downTimeouts, fmt.Sprintf("down: %d probes timed out (%v each)", r.cfg.ProbeTimeouts, r.cfg.ProbeTimeout)
		}
		l.markDown(t.Node, kind, reason, t.Started)
	}
	if o == probe.Answered && current { // an answer after a leave must not undo it
		r.takeReport(t.Node, m.Data, m.Header)
	}
	if o == probe.Answered {
		r.ej.answeredProbe(t.Node, r.cfg.Now())
	}
	l.wake()
}

// markDown takes a node out of its pools, unless a report came after the
// probe that found it down was sent.
func (l *liveness) markDown(node string, kind int, reason string, since time.Time) {
	r := l.r
	if r.legacy.Load() {
		// A router of an earlier release keeps every reporting node until
		// its TTL and would put it back: the two would fight over the
		// document. The node leaves after the TTL, as before.
		r.log.Info("node down, but left in the ring while a router of an earlier release shares the bucket", "node", node, "reason", reason)
		return
	}
	r.healthMu.Lock()
	t := r.tracker[node]
	if t == nil || t.left || t.down != "" || t.seen.After(since) {
		r.healthMu.Unlock()
		return
	}
	t.down = reason
	pools := append([]string(nil), t.pools...)
	r.healthMu.Unlock()
	for _, name := range pools {
		if p := r.pool(name); p != nil {
			p.forget(node)
			p.wakeFor(node)
		}
	}
	l.downs[kind].Add(1)
	r.log.Info("node down", "node", node, "reason", reason, "pools", pools)
}

// downReason says why a node is out of its pools ("down: ..."), or "".
func (l *liveness) downReason(node string) string {
	r := l.r
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	if t := r.tracker[node]; t != nil {
		return t.down
	}
	return ""
}

// onFeedback takes one route.feedback message: rate-limited, decoded,
// and if it is about a probing node of its pool, that node is probed now.
// With a reply subject it answers {} or an error.
func (l *liveness) onFeedback(m *nats.Msg) {
	r := l.r
	enc := bus.DetectEncoding(m.Data, m.Header)
	if !l.feedbackToken() {
		l.feedback[feedbackRateLimited].Add(1)
		l.reply(m, enc, bus.CodeNoNodes, fmt.Sprintf("natsroute: feedback rate limit (%v a second) reached; dropped", r.cfg.FeedbackRate))
		return
	}
	f, err := bus.DecodeFeedback(m.Data, m.Header)
	if err != nil {
		l.feedback[feedbackInvalid].Add(1)
		r.stats.limitedLog(r.log, rejectMalformed, "feedback refused", "err", err)
		l.reply(m, enc, bus.CodeBadRequest, err.Error())
		return
	}
	p, now := r.pool(f.PoolOrDefault()), r.cfg.Now()
	switch {
	case p == nil || !l.member(f.Node, p):
		l.feedback[feedbackIgnored].Add(1)
	case l.sched.Poke(f.Node, now):
		l.feedback[feedbackProbed].Add(1)
		l.wake()
		r.ej.fail(p, f.Node, f.Caller, f.Reason, now)
	default:
		l.feedback[feedbackCounted].Add(1)
		r.ej.fail(p, f.Node, f.Caller, f.Reason, now)
	}
	l.reply(m, enc, 0, "")
}

// member reports whether node reports for p.
func (l *liveness) member(node string, p *pool) bool {
	r := l.r
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	t := r.tracker[node]
	return t != nil && p.reporters[node] == t
}

// feedbackToken takes a token from the feedback bucket, if there is one.
func (l *liveness) feedbackToken() bool {
	now := time.Now()
	rate := l.r.cfg.FeedbackRate
	l.fbMu.Lock()
	defer l.fbMu.Unlock()
	if !l.fbRefilled.IsZero() {
		l.fbTokens = min(rate, l.fbTokens+now.Sub(l.fbRefilled).Seconds()*rate)
	}
	l.fbRefilled = now
	if l.fbTokens < 1 {
		return false
	}
	l.fbTokens--
	return true
}

// reply answers a feedback request: {} (code 0) or an error body with the
// NATS service error headers, in the request's encoding.
func (l *liveness) reply(m *nats.Msg, enc bus.Encoding, code int, msg string) {
	if m.Reply == "" {
		return
	}
	out := nats.NewMsg(m.Reply)
	if code == 0 {
		out.Data, _ = enc.Marshal(struct{}{})
	} else {
		out.Header.Set("Nats-Service-Error", msg)
		out.Header.Set("Nats-Service-Error-Code", fmt.Sprint(code))
		out.Data, _ = enc.Marshal(&bus.ErrorBody{Error: msg, Code: code})
	}
	if err := l.r.nc.PublishMsg(out); err != nil {
		l.r.log.Debug("feedback reply failed", "err", err)
	}
}

// takeReport takes a report that came as a probe's answer through the
// path of a published one (decode, then every strategy's Report).
func (r *Router) takeReport(node string, data []byte, hdr nats.Header) {
	err := r.report(node, data, hdr)
	if err != nil {
		reason := rejectReason(err)
		r.stats.rejected[reason].Add(1)
		r.stats.limitedLog(r.log, reason, "probe answer rejected", "node", text.Clip(node), "reason", reasonNames[reason], "err", err)
		return
	}
	r.stats.accepted.Add(1)
}

// withOut adds to a pool's balancer nodes (sorted by id) the nodes that
// report for it but are down or ejected, which the balancer has forgotten,
// so that route.nodes says why they are out.
func (p *pool) withOut(nodes []resourceaware.NodeState) []resourceaware.NodeState {
	r := p.r
	type out struct{ id, reason string }
	var outs []out
	now := r.cfg.Now()
	r.healthMu.Lock()
	for id, t := range p.reporters {
		switch {
		case t.down != "":
			outs = append(outs, out{id, "down"})
		case p.isEjected(id, now):
			outs = append(outs, out{id, "ejected"})
		}
	}
	r.healthMu.Unlock()
	for _, o := range outs {
		i, found := slices.BinarySearchFunc(nodes, o.id, func(n resourceaware.NodeState, id string) int { return strings.Compare(n.ID, id) })
		if !found {
			nodes = slices.Insert(nodes, i, resourceaware.NodeState{ID: o.id, Status: bus.StatusUp, Reason: o.reason})
		}
	}
	return nodes
}

// outNotes lists the pool's nodes that liveness keeps out, sorted by id,
// with why (for explain).
func (p *pool) outNotes() []bus.OutNote {
	r := p.r
	var ids []string
	now := r.cfg.Now()
	r.healthMu.Lock()
	for id, t := range p.reporters {
		if t.down != "" || p.isEjected(id, now) {
			ids = append(ids, id)
		}
	}
	r.healthMu.Unlock()
	slices.Sort(ids)
	var notes []bus.OutNote
	for _, id := range ids {
		why := cmp.Or(r.live.downReason(id), p.ejectedWhy(id))
		if why != "" {
			notes = append(notes, bus.OutNote{ID: id, Why: why})
		}
	}
	return notes
}
