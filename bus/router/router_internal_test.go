package router

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// fakeRequest records what a handler answered.
type fakeRequest struct {
	data       []byte
	respBody   []byte
	errCode    string
	errMessage string
}

func (f *fakeRequest) Respond(b []byte, _ ...micro.RespondOpt) error { f.respBody = b; return nil }
func (f *fakeRequest) RespondJSON(v any, _ ...micro.RespondOpt) error {
	f.respBody, _ = json.Marshal(v)
	return nil
}
func (f *fakeRequest) Error(code, msg string, b []byte, _ ...micro.RespondOpt) error {
	f.errCode, f.errMessage, f.respBody = code, msg, b
	return nil
}
func (f *fakeRequest) Data() []byte           { return f.data }
func (f *fakeRequest) Headers() micro.Headers { return nil }
func (f *fakeRequest) Subject() string        { return bus.SubjectRequest }
func (f *fakeRequest) Reply() string          { return "_INBOX.x" }

type panicking struct{ Strategy }

func (panicking) Select(context.Context, bus.Request) (bus.Reply, error) { panic("boom") }

// TestPanicBecomes500: a panicking strategy yields a 500 reply with a body,
// and the next request is answered normally.
func TestPanicBecomes500(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	var codes []int
	cfg.OnRequest = func(_ string, code int, _ time.Duration) { codes = append(codes, code) }
	r := testRouter(t, cfg)
	r.ring().Apply(bus.RingDocument{Format: 1, Hash: bus.DocumentHash, VNodes: 150, Nodes: []bus.RingNode{{ID: "a", Weight: 1}}}, 7)
	r.ctx = context.Background()
	r.ch = panicking{consistentHash{r}}

	req := &fakeRequest{data: []byte(`{"key":"k"}`)}
	r.handleRoute(req)
	var body bus.ErrorBody
	if err := json.Unmarshal(req.respBody, &body); err != nil || req.errCode != "500" || body.Code != 500 || body.Error != req.errMessage {
		t.Fatalf("panic reply: code %q message %q body %q", req.errCode, req.errMessage, req.respBody)
	}
	r.ch = consistentHash{r}
	req = &fakeRequest{data: []byte(`{"key":"k"}`)}
	r.handleRoute(req)
	var rep bus.Reply
	if err := json.Unmarshal(req.respBody, &rep); err != nil || req.errCode != "" || rep.Node != "a" || rep.Revision != 7 {
		t.Fatalf("after the panic: %q %q", req.errCode, req.respBody)
	}
	if !slices.Equal(codes, []int{500, 200}) {
		t.Fatalf("OnRequest saw codes %v, want [500 200]", codes)
	}
}

// TestLeaveDuringJoinWriteWakesWriter: a leave observed while the join's
// write is in flight (the view does not show the node yet) must still wake
// the writer. It used to wait for the next expiry sweep, a second later,
// because the report was compared with the view only.
func TestLeaveDuringJoinWriteWakesWriter(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r := testRouter(t, cfg)
	f := r.ring()
	woke := func() bool {
		select {
		case <-r.pool(bus.DefaultPool).dirty:
			return true
		default:
			return false
		}
	}
	h := bus.Health{CPUUsage: 1}
	if err := r.observe("x", h); err != nil || !woke() {
		t.Fatalf("join: err %v, writer not woken", err)
	}
	// The writer now writes x; before its view shows x, x leaves.
	h.Status = bus.StatusLeaving
	if err := r.observe("x", h); err != nil || !woke() {
		t.Fatalf("leave during the join's write: err %v, writer not woken", err)
	}
	// A plain heartbeat of a member in the view wakes nobody.
	f.Apply(bus.RingDocument{Format: 1, Hash: bus.DocumentHash, VNodes: 150, Nodes: []bus.RingNode{{ID: "y", Weight: 1}}}, 1)
	h.Status = ""
	if err := r.observe("y", h); err != nil || !woke() { // first report of y
		t.Fatalf("first report: err %v", err)
	}
	if err := r.observe("y", h); err != nil || woke() {
		t.Fatalf("heartbeat woke the writer (err %v)", err)
	}
}

// TestExpiryWhileBehind: while health reports wait unprocessed, silence is
// judged at the last moment the queue was empty (the queued reports may be
// the silent members'), but for at most maxExpiryHold: sustained load
// cannot suspend expiry.
func TestExpiryWhileBehind(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server did not start")
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	now := time.Unix(1000, 0)
	cfg.Now = func() time.Time { return now }
	cfg.MemberTTL = time.Second
	r := testRouter(t, cfg)
	r.started = now
	p := r.pool(bus.DefaultPool)
	if err := r.observe("a", bus.Health{}); err != nil {
		t.Fatal(err)
	}
	r.caughtUp.Store(now.UnixNano()) // the queue was empty when a reported
	base := bus.RingDocument{Format: 1, Hash: bus.DocumentHash, VNodes: 150, Nodes: []bus.RingNode{{ID: "a", Weight: 1}}}
	p.ring.Apply(base, 1)

	release := make(chan struct{})
	sub, err := nc.Subscribe("h.*", func(*nats.Msg) { <-release })
	r.healthSub.Store(sub)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = nc.Publish("h.x", nil)
	}
	_ = nc.Flush()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if n, _, _ := sub.Pending(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no report queued")
		}
	}
	for _, c := range []struct {
		after  time.Duration // since a's report
		member bool
	}{
		{2 * time.Second, true},                        // silent 2 TTLs, but reports are queued since
		{maxExpiryHold + time.Second, true},            // held back for maxExpiryHold: silent exactly the TTL
		{maxExpiryHold + 1001*time.Millisecond, false}, // the hold is bounded: a expires under load
	} {
		now = time.Unix(1000, 0).Add(c.after)
		if got := p.desired(base, 0); (len(got.Nodes) == 1) != c.member {
			t.Fatalf("%v after its report, with reports queued: members %+v, want a member: %v", c.after, got.Nodes, c.member)
		}
		if p.due() == c.member {
			t.Fatalf("%v after its report: due() = %v", c.after, p.due())
		}
	}
	now = time.Unix(1000, 0).Add(2 * time.Second)
	close(release)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if n, _, _ := sub.Pending(); n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("queue did not drain")
		}
	}
	if got := p.desired(base, 0); len(got.Nodes) != 0 {
		t.Fatalf("once caught up, the silent member must expire: %+v", got.Nodes)
	}
	_ = sub.Unsubscribe()
}

// testRouter returns a Router with no connection, for tests of its parts.
func testRouter(t *testing.T, cfg Config) *Router {
	t.Helper()
	r, err := newRouter(nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestWindowWait pins how the writer sleeps out the rest of a window: waits
// of a millisecond or more round down to whole milliseconds (Go's idle
// timers fire up to 1 ms late otherwise), shorter ones are kept.
func TestWindowWait(t *testing.T) {
	for _, c := range []struct{ in, want time.Duration }{
		{-time.Millisecond, -time.Millisecond},
		{0, 0},
		{300 * time.Microsecond, 300 * time.Microsecond},
		{999 * time.Microsecond, 999 * time.Microsecond},
		{time.Millisecond, time.Millisecond},
		{4300 * time.Microsecond, 4 * time.Millisecond},
		{4999 * time.Microsecond, 4 * time.Millisecond},
		{5 * time.Millisecond, 5 * time.Millisecond},
	} {
		if got := windowWait(c.in); got != c.want {
			t.Errorf("windowWait(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
