package router

import (
	"bytes"
	"fmt"
	"math"
	"runtime/debug"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/internal/text"
)

// handleRoute answers route.request.
func (r *Router) handleRoute(req micro.Request) {
	start := time.Now()
	r.inflight.Add(1)
	r.lastReq.Store(start.UnixNano())
	defer r.inflight.Add(-1)
	data := req.Data()
	enc := bus.DetectEncoding(data, nats.Header(req.Headers()))
	strategy := "unknown"
	var p *pool
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("panic answering a request", "panic", v, "stack", string(debug.Stack()))
			r.respondError(req, enc, fmt.Errorf("%w: %v", bus.ErrInternal, v))
			r.stats.request(p, strategy, bus.CodeInternal, time.Since(start), r.cfg)
		}
	}()
	reply, err := r.route(data, enc, &strategy, &p)
	code := 200
	if err == nil {
		buf := replyBufs.Get().(*[]byte)
		var out []byte
		if out, err = enc.AppendReply((*buf)[:0], &reply); err == nil {
			err = r.send(req, out, "ask for fewer keys or a smaller count")
		} else {
			err = fmt.Errorf("%w: encode reply: %w", bus.ErrInternal, err)
		}
		if cap(out) <= maxPooledReply { // Respond has copied it out
			*buf = out
			replyBufs.Put(buf)
		}
	}
	if err != nil {
		code = bus.ErrorCode(err)
		r.respondError(req, enc, err)
	}
	r.stats.request(p, strategy, code, time.Since(start), r.cfg)
}

// replyBufs hold encoded replies between requests, so that answering
// allocates no reply buffer; batch-sized ones are let go.
var replyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledReply = 64 << 10

// route decodes and validates a request, finds its pool and answers it.
func (r *Router) route(data []byte, enc bus.Encoding, strategy *string, p **pool) (bus.Reply, error) {
	var q bus.Request
	if err := enc.UnmarshalRequest(data, &q); err != nil {
		return bus.Reply{}, badRequest("%v", err)
	}
	s, err := r.validate(&q)
	if err != nil {
		return bus.Reply{}, err
	}
	*strategy = s.Name()
	if *p = r.pool(q.Pool); *p == nil {
		return bus.Reply{}, noMembers(q.Pool)
	}
	return s.Select(r.ctx, q)
}

// validate checks q against the contract and the limits, fills in
// defaults, and returns the strategy to answer it.
func (r *Router) validate(q *bus.Request) (Strategy, error) {
	lim := r.cfg.Limits
	if q.Key != "" && q.Keys != nil {
		return nil, badRequest("set key or keys, not both")
	}
	if len(q.Key) > lim.MaxKeyBytes {
		return nil, badRequest("key is %d bytes; the limit is %d", len(q.Key), lim.MaxKeyBytes)
	}
	if q.Count < 0 || q.Count > lim.MaxCount {
		return nil, badRequest("count %d is out of range: want 1 to %d (0 or absent means 1)", q.Count, lim.MaxCount)
	}
	if q.Count == 0 {
		q.Count = 1
	}
	if len(q.Candidates) > lim.MaxCandidates {
		return nil, badRequest("%d candidates; the limit is %d", len(q.Candidates), lim.MaxCandidates)
	}
	for i, c := range q.Candidates {
		if err := bus.ValidateNodeID(c); err != nil {
			return nil, badRequest("candidates[%d]: %v", i, err)
		}
	}
	if len(q.Keys) > lim.MaxBatch {
		return nil, badRequest("%d keys; the batch limit is %d", len(q.Keys), lim.MaxBatch)
	}
	if len(q.Keys) == 0 {
		q.Keys = nil
	}
	for i, k := range q.Keys {
		if k == "" || len(k) > lim.MaxKeyBytes {
			return nil, badRequest("keys[%d] is %d bytes; want 1 to %d", i, len(k), lim.MaxKeyBytes)
		}
	}
	if q.Pool != "" {
		if err := bus.ValidatePoolName(q.Pool); err != nil {
			return nil, badRequest("%v", err)
		}
	}
	if q.Spread < 0 || q.Spread > lim.MaxCount {
		return nil, badRequest("spread %d is out of range: want 1 to %d (0 or absent means 1)", q.Spread, lim.MaxCount)
	}
	if q.Spread > 1 {
		switch {
		case q.Count > 1:
			return nil, badRequest("spread picks one node among the key's first %d owners; it does not go with count > 1", q.Spread)
		case q.Keys != nil:
			return nil, badRequest("spread does not go with keys (a batch)")
		case q.Key == "" || q.Strategy == bus.StrategyResourceAware:
			return nil, badRequest("spread needs %s and a key", bus.StrategyConsistentHash)
		}
	}
	switch q.Strategy {
	case "":
		if q.Key != "" || q.Keys != nil {
			return r.ch, nil
		}
		return r.ra, nil
	case bus.StrategyConsistentHash:
		if q.Key == "" && q.Keys == nil {
			return nil, badRequest("%s needs a key (or keys)", bus.StrategyConsistentHash)
		}
		return r.ch, nil
	case bus.StrategyResourceAware:
		return r.ra, nil
	}
	return nil, badRequest("unknown strategy %q: use %s or %s", text.Clip(q.Strategy), bus.StrategyConsistentHash, bus.StrategyResourceAware)
}

// respondError sends an error reply in the request's encoding.
func (r *Router) respondError(req micro.Request, enc bus.Encoding, err error) {
	code := bus.ErrorCode(err)
	msg := err.Error()
	body, mErr := enc.Marshal(&bus.ErrorBody{Error: msg, Code: code})
	if mErr != nil {
		body = nil
	}
	if err := req.Error(fmt.Sprint(code), msg, body); err != nil {
		r.log.Debug("error reply failed", "err", err)
	}
}

// decodePoolRequest decodes a route.ring/nodes/pools body; an empty body
// means every default.
func decodePoolRequest(data []byte, enc bus.Encoding) (bus.PoolRequest, error) {
	var q bus.PoolRequest
	if len(bytes.TrimSpace(data)) == 0 {
		return q, nil
	}
	if err := enc.Unmarshal(data, &q); err != nil {
		return q, badRequest("%v", err)
	}
	if q.Pool != "" {
		if err := bus.ValidatePoolName(q.Pool); err != nil {
			return q, badRequest("%v", err)
		}
	}
	if q.Offset < 0 {
		return q, badRequest("offset %d is negative", q.Offset)
	}
	if q.Limit < 0 || q.Limit > bus.MaxNodesPage {
		return q, badRequest("limit %d is out of range: want 1 to %d (0 or absent means %d)", q.Limit, bus.MaxNodesPage, bus.DefaultNodesPage)
	}
	return q, nil
}

func (r *Router) handleRing(req micro.Request) {
	enc := bus.DetectEncoding(req.Data(), nats.Header(req.Headers()))
	q, err := decodePoolRequest(req.Data(), enc)
	if err != nil {
		r.respondError(req, enc, err)
		return
	}
	p := r.pool(q.Pool)
	if p == nil {
		r.respondError(req, enc, noMembers(q.Pool))
		return
	}
	v := p.ring.Current()
	st := bus.RingState{Revision: v.Rev, Ring: v.Doc}
	if p.name != bus.DefaultPool {
		st.Pool = p.name
	}
	r.respond(req, enc, &st, fmt.Sprintf("read the members from the KV bucket instead (a Go RingCache, or nats kv watch %s '%s'), or page route.nodes",
		r.cfg.Bucket, bus.MembersFilter(p.name)))
}

func (r *Router) handleNodes(req micro.Request) {
	enc := bus.DetectEncoding(req.Data(), nats.Header(req.Headers()))
	q, err := decodePoolRequest(req.Data(), enc)
	if err != nil {
		r.respondError(req, enc, err)
		return
	}
	if r.pool(q.Pool) == nil {
		r.respondError(req, enc, noMembers(q.Pool))
		return
	}
	st := r.NodesPage(q.Pool, q.Offset, q.Limit)
	r.respond(req, enc, &st, "ask for a smaller page with \"limit\"")
}

func (r *Router) handlePools(req micro.Request) {
	enc := bus.DetectEncoding(req.Data(), nats.Header(req.Headers()))
	st := r.Pools()
	r.respond(req, enc, &st, "")
}

// respond encodes v in enc and sends it; a reply too large for the
// connection becomes an error reply that says what to ask instead (hint).
func (r *Router) respond(req micro.Request, enc bus.Encoding, v any, hint string) {
	out, err := enc.Marshal(v)
	if err != nil {
		r.respondError(req, enc, fmt.Errorf("%w: %w", bus.ErrInternal, err))
		return
	}
	if err := r.send(req, out, hint); err != nil {
		r.respondError(req, enc, err)
	}
}

// send sends a reply, or returns a 400 if it would exceed the connection's
// max_payload (NATS would drop it, and the caller would only see a
// timeout). hint tells the caller how to ask instead.
func (r *Router) send(req micro.Request, out []byte, hint string) error {
	if limit := r.maxReply(); len(out) > limit {
		r.stats.oversizeReplies.Add(1)
		msg := fmt.Sprintf("the reply would be %d bytes, %s %d", len(out), bus.OversizeReply, limit)
		if hint != "" {
			msg += "; " + hint
		}
		return badRequest("%s", msg)
	}
	if err := req.Respond(out); err != nil {
		r.log.Debug("respond failed", "err", err)
	}
	return nil
}

// maxReply is the largest reply body the connection can carry, leaving
// room for the reply's subject and headers.
func (r *Router) maxReply() int {
	if r.nc == nil {
		return math.MaxInt
	}
	return int(r.nc.MaxPayload()) - replyOverhead
}

// replyOverhead leaves room for the headers of a reply.
const replyOverhead = 1024
