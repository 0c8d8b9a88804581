package embedded_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// TestReplicasAgree: two router replicas on one server, concurrent churn
// published from two connections; the bucket ends with exactly the nodes
// that should be members, and both replicas (and a ring rebuilt from the
// bucket) answer identically for 10,000 keys.
func TestReplicasAgree(t *testing.T) {
	s := runServer(t)
	cfg := testConfig(t)
	r1 := startRouter(t, connect(t, s.ClientURL()), cfg)
	r2 := startRouter(t, connect(t, s.ClientURL()), cfg)
	pubs := []*nats.Conn{connect(t, s.ClientURL()), connect(t, s.ClientURL())}

	const n = 100
	var want []string
	var wg sync.WaitGroup
	for p := range 2 {
		wg.Go(func() {
			for i := p; i < n; i += 2 {
				id := fmt.Sprintf("node-%03d", i)
				h := okHealth
				h.Weight = float64(1 + i%3)
				health(t, pubs[p], id, h)
				if i%4 < 2 { // every other pair leaves again
					h.Status = bus.StatusLeaving
					health(t, pubs[p], id, h)
				}
			}
		})
	}
	wg.Wait()
	for i := range n {
		if i%4 >= 2 {
			want = append(want, fmt.Sprintf("node-%03d", i))
		}
	}
	wantIDs := strings.Join(want, ",")
	ids := func(r *router.Router) string {
		d, _ := r.Ring()
		var out []string
		for _, nd := range d.Nodes {
			out = append(out, nd.ID)
		}
		return strings.Join(out, ",")
	}
	waitFor(t, 10*time.Second, "both replicas to converge", func() bool {
		return ids(r1) == wantIDs && ids(r2) == wantIDs && r1.Revision() == r2.Revision()
	})
	local, rev := localRing(t, pubs[0])
	if rev != r1.Revision() {
		t.Fatalf("bucket at %d, routers at %d", rev, r1.Revision())
	}
	for _, m := range local.Members() {
		var i int
		fmt.Sscanf(m.ID, "node-%d", &i)
		if m.Weight != float64(1+i%3) {
			t.Fatalf("%s has weight %v, want %d", m.ID, m.Weight, 1+i%3)
		}
	}

	keys := make([]string, 10_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	a1, a2 := batch(t, r1, keys), batch(t, r2, keys)
	for i, k := range keys {
		l, _ := local.Get(k)
		if a1[i] != a2[i] || a1[i] != l {
			t.Fatalf("key %s: replica 1 says %s, replica 2 %s, rebuilt ring %s", k, a1[i], a2[i], l)
		}
	}
	if !slices.Equal(a1, a2) {
		t.Fatal("replicas disagree")
	}
	t.Logf("KV writes %d+%d, conflicts %d+%d", r1.Stats().KVWrites, r2.Stats().KVWrites, r1.Stats().KVConflicts, r2.Stats().KVConflicts)
}
