package embedded_test

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus"
)

// TestMassLeave: every member of a large pool says leaving at once (a zone
// outage, or a deploy whose Reporters close together). Each leave is in the
// KV document within the deadline, long before any member TTL could have
// expired them: leaves cost O(n) as a batch, as joins do, not O(n) each.
// NATSROUTE_MASSLEAVE_N sets the fleet (default 3,000; the README's figure
// is at 10,000 with BenchmarkScale's leave burst).
func TestMassLeave(t *testing.T) {
	n := 3000
	if v := os.Getenv("NATSROUTE_MASSLEAVE_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	s := runServer(t)
	cfg := testConfig(t)
	cfg.MemberTTL = 10 * time.Minute // nothing expires: only leaves can empty the ring
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	pub := connect(t, s.ClientURL())
	join, leave := make([][]byte, n), make([][]byte, n)
	for i := range n {
		id := fmt.Sprintf("node-%05d", i)
		h := okHealth
		h.Seq = 1
		join[i], _ = bus.EncodeHealth(id, h, bus.Msgpack)
		h.Seq, h.Status = 2, bus.StatusLeaving
		leave[i], _ = bus.EncodeHealth(id, h, bus.Msgpack)
	}
	publish := func(msgs [][]byte) {
		for i, m := range msgs {
			if err := pub.Publish(bus.HealthSubject(fmt.Sprintf("node-%05d", i)), m); err != nil {
				t.Fatal(err)
			}
		}
		if err := pub.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	publish(join)
	waitFor(t, time.Minute, fmt.Sprintf("%d members", n), func() bool { d, _ := r.Ring(); return len(d.Nodes) == n })
	joined := time.Since(t0)
	if st := r.Stats(); st.Known != n {
		t.Fatalf("ResourceAware knows %d nodes, want %d", st.Known, n)
	}
	t0 = time.Now()
	publish(leave)
	waitFor(t, time.Minute, "an empty ring", func() bool { d, _ := r.Ring(); return len(d.Nodes) == 0 })
	left := time.Since(t0)
	t.Logf("%d members: joins in the document after %v, leaves after %v", n, joined.Round(time.Millisecond), left.Round(time.Millisecond))
	if st := r.Stats(); st.Known != 0 {
		t.Fatalf("ResourceAware still knows %d nodes after they all left", st.Known)
	}
	m := req(t, pub, bus.SubjectRequest, []byte(`{"strategy":"ResourceAware"}`), nil)
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "503" {
		t.Fatalf("ResourceAware after every node left: code %q, want 503", code)
	}
}
