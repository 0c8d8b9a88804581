package embedded_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestExpiryUnderLoad: a silent member leaves within the TTL plus the
// bounded hold (5 s) while every other member heartbeats without pause, so
// the router's health queue is rarely empty. The heartbeats themselves
// write nothing to the bucket.
func TestExpiryUnderLoad(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.MemberTTL = time.Second
	r := startRouter(t, connect(t, s.ClientURL()), cfg)

	const n = 200
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("busy-%03d", i)
		health(t, nc, ids[i], okHealth)
	}
	health(t, nc, "ghost", okHealth)
	waitFor(t, 10*time.Second, "every member", func() bool { d, _ := r.Ring(); return len(d.Nodes) == n+1 })
	writes := r.Stats().KVWrites

	// Heartbeat every busy member back to back from two connections until
	// the ghost is gone (or the test gives up).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for p := range 2 {
		pub := connect(t, s.ClientURL())
		wg.Go(func() {
			for {
				for i := p; i < n; i += 2 {
					select {
					case <-stop:
						return
					default:
					}
					health(t, pub, ids[i], okHealth)
				}
			}
		})
	}
	start := time.Now()
	deadline := cfg.MemberTTL + 5*time.Second + 3*time.Second // TTL + hold + the writer's sweep and slack
	waitFor(t, deadline, "the ghost to expire under load", func() bool {
		return !strings.Contains(members(r), "ghost")
	})
	took := time.Since(start)
	close(stop)
	wg.Wait()
	d, _ := r.Ring()
	st := r.Stats()
	t.Logf("ghost left %v after the load began; %d reports accepted, %d dropped", took, st.ReportsAccepted, st.HealthDropped)
	if len(d.Nodes) != n {
		t.Fatalf("%d members after the ghost left, want the %d busy ones", len(d.Nodes), n)
	}
	// The ghost leaving: its key deleted and the document written, and
	// perhaps pools.default rewritten before its delete marker is purged
	// (MemberTTL later). Heartbeats write nothing.
	waitFor(t, 5*time.Second, "the ghost's key deleted and the document written", func() bool { return r.Stats().KVWrites-writes >= 2 })
	if got := r.Stats().KVWrites - writes; got > 3 {
		t.Fatalf("%d KV writes during the heartbeats, want 2 or 3 (the ghost leaving)", got)
	}
	if st.HealthDropped != 0 {
		t.Fatalf("%d reports dropped", st.HealthDropped)
	}
}
