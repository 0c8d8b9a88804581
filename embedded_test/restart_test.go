package embedded_test

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// reconnecting are client options for tests that restart servers.
func reconnecting() []nats.Option {
	return []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond), nats.ReconnectJitter(0, 0)}
}

// TestRouterSurvivesServerRestart: the router reconnects on its own, keeps
// the ring, answers again, and still writes membership changes.
func TestRouterSurvivesServerRestart(t *testing.T) {
	port, dir := freePort(t), t.TempDir()
	opts := func(o *server.Options) { o.Port, o.StoreDir = port, dir }
	s := runServer(t, opts)
	nc := connect(t, s.ClientURL(), reconnecting()...)
	r := startRouter(t, connect(t, s.ClientURL(), reconnecting()...), testConfig(t))
	health(t, nc, "a", okHealth)
	health(t, nc, "b", okHealth)
	waitFor(t, 5*time.Second, "a,b", func() bool { return members(r) == "a,b" })
	rev := r.Revision()
	js, _ := jetstream.New(connect(t, s.ClientURL(), reconnecting()...))
	cache, err := bus.WatchRing(ctxT(t), js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()

	s.Shutdown()
	s.WaitForShutdown()
	t0 := time.Now()
	s2 := runServer(t, opts)
	up := time.Since(t0)
	got := answered(t, nc, `{"key":"user-42"}`, 10*time.Second)
	t.Logf("server up after %v; router answering %v after that", up, time.Since(t0)-up)
	if got.Revision != rev || (got.Node != "a" && got.Node != "b") {
		t.Fatalf("after restart: %+v (revision before %d)", got, rev)
	}
	health(t, nc, "c", okHealth)
	waitFor(t, 10*time.Second, "c to join after the restart", func() bool { return members(r) == "a,b,c" })
	local, lrev := localRing(t, nc)
	if lrev != r.Revision() || local.Len() != 3 {
		t.Fatalf("bucket at %d with %d members, router at %d", lrev, local.Len(), r.Revision())
	}
	// The client's cache follows across the restart too.
	if err := cache.WaitRevision(ctxT(t), lrev); err != nil {
		t.Fatal(err)
	}
	if len(cache.Document().Nodes) != 3 {
		t.Fatalf("cache has %d nodes after the restart", len(cache.Document().Nodes))
	}
	waitFor(t, 5*time.Second, "a reconnect to be counted", func() bool { return r.Stats().Reconnects >= 1 })

	// The server goes first (the cleanups run in reverse): Close must not
	// hang on a connection that is reconnecting.
	s2.Shutdown()
	t0 = time.Now()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	t0 = time.Now()
	_ = cache.Close()
	t.Logf("with the server down, Router.Close took %v and RingCache.Close %v", took, time.Since(t0))
	if took > time.Second || time.Since(t0) > time.Second {
		t.Fatal("Close must not wait on a server that is gone")
	}
}

// TestRestartedRouterStartsFromBucket: a new router answers from the
// bucket's ring before any report, and its TTL clocks start at its start.
func TestRestartedRouterStartsFromBucket(t *testing.T) {
	s := runServer(t)
	nc := connect(t, s.ClientURL())
	cfg := testConfig(t)
	cfg.MemberTTL = 500 * time.Millisecond
	first, err := router.New(connect(t, s.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	startOrFail(t, first)
	health(t, nc, "a", okHealth)
	health(t, nc, "b", okHealth)
	waitFor(t, 5*time.Second, "a,b", func() bool { return members(first) == "a,b" })
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil { // idempotent
		t.Fatal(err)
	}

	started := time.Now()
	second := startRouter(t, connect(t, s.ClientURL()), cfg)
	if members(second) != "a,b" {
		t.Fatalf("restarted router starts with %q, want a,b from the bucket", members(second))
	}
	if got := jsonReply(t, nc, `{"key":"k"}`); got.Node == "" {
		t.Fatal("no answer from the bucket's ring")
	}
	// Only b keeps reporting: a expires one TTL after the router started.
	waitFor(t, 5*time.Second, "a to expire", func() bool {
		health(t, nc, "b", okHealth)
		time.Sleep(20 * time.Millisecond)
		return members(second) == "b"
	})
	if el := time.Since(started); el < cfg.MemberTTL {
		t.Fatalf("a expired %v after the router started, before the TTL %v", el, cfg.MemberTTL)
	}
}
