package embedded_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// recLogger records a server's warnings and errors, to print on failure
// (the stock logger would os.Exit on a fatal error).
type recLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *recLogger) add(level, f string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, level+" "+fmt.Sprintf(f, v...))
}
func (l *recLogger) Noticef(string, ...any)    {}
func (l *recLogger) Debugf(string, ...any)     {}
func (l *recLogger) Tracef(string, ...any)     {}
func (l *recLogger) Warnf(f string, v ...any)  { l.add("WARN", f, v...) }
func (l *recLogger) Errorf(f string, v ...any) { l.add("ERROR", f, v...) }
func (l *recLogger) Fatalf(f string, v ...any) { l.add("FATAL", f, v...) }
func (l *recLogger) dump(t testing.TB, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		t.Logf("%s: %s", name, s)
	}
}

// startCluster runs three JetStream servers in one cluster on 127.0.0.1 and
// waits until JetStream has a leader that sees every peer.
func startCluster(t *testing.T) []*server.Server {
	t.Helper()
	servers := startClusterServers(t)
	waitFor(t, 30*time.Second, "a JetStream leader seeing 3 peers, every server current", func() bool {
		leader := false
		for _, s := range servers {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == 3 {
				leader = true
			}
		}
		if !leader {
			return false
		}
		for _, s := range servers {
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return true
	})
	return servers
}

// startClusterServers runs three JetStream servers in one cluster on
// 127.0.0.1 and returns once they take connections, JetStream formed or not.
func startClusterServers(t *testing.T) []*server.Server {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	var servers []*server.Server
	for i, p := range ports {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
			Cluster: server.ClusterOpts{Name: "c", Host: "127.0.0.1", Port: p},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		log := &recLogger{}
		s.SetLoggerV2(log, false, false, false)
		t.Cleanup(func() {
			if t.Failed() {
				log.dump(t, opts.ServerName)
			}
		})
		go s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		servers = append(servers, s)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("cluster server did not start")
		}
	}
	return servers
}

// connectCluster connects to servers[first] first; the other servers'
// URLs let the connection fail over.
func connectCluster(t *testing.T, servers []*server.Server, first int) *nats.Conn {
	t.Helper()
	urls := []string{servers[first].ClientURL()}
	for i, s := range servers {
		if i != first {
			urls = append(urls, s.ClientURL())
		}
	}
	return connect(t, strings.Join(urls, ","), append(reconnecting(), nats.DontRandomize())...)
}

// Fault 3: a three-node JetStream cluster with an R3 bucket; routers and
// clients on different servers; the server leading the bucket's stream
// goes down. Selections keep working, membership changes during and after
// the failover reach the bucket, and every router and cache converges.
func TestFaultClusterStreamLeaderLoss(t *testing.T) {
	servers := startCluster(t)
	cfg := testConfig(t)
	cfg.KVReplicas = 3
	conn := func(i int) *nats.Conn { return connectCluster(t, servers, i) }
	rA := startRouter(t, conn(0), cfg)
	rB := startRouter(t, conn(1), cfg)
	clientConn := conn(2)
	js, _ := jetstream.New(clientConn)
	cache, err := bus.WatchRing(ctxT(t), js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()

	stop := make(chan struct{})
	base := []string{"n1", "n2", "n3"}
	stopReports := keepReporting(t, conn(2), base, stop)
	waitFor(t, 10*time.Second, "base members on both routers", func() bool { return members(rA) == "n1,n2,n3" && members(rB) == "n1,n2,n3" })
	all := append(base, "during", "after")
	client, _ := bus.NewClient(clientConn)
	res, stopLoad := runLoad(t, client, all, stop)
	waitFor(t, 5*time.Second, "load", func() bool { res.mu.Lock(); defer res.mu.Unlock(); return res.ok > 50 })

	leader := -1
	for i, s := range servers {
		if s.JetStreamIsStreamLeader("$G", "KV_"+bus.DefaultBucket) {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no stream leader for the bucket")
	}
	t.Logf("shutting down n%d, the bucket's stream leader", leader+1)
	servers[leader].Shutdown()
	reporter := conn((leader + 1) % 3)
	stopDuring := keepReporting(t, reporter, []string{"during"}, stop)
	res.mu.Lock()
	okBefore := res.ok
	res.mu.Unlock()
	waitFor(t, 20*time.Second, "'during' to reach the bucket", func() bool { return strings.Contains(members(rA), "during") })
	stopAfter := keepReporting(t, reporter, []string{"after"}, stop)
	want := "after,during,n1,n2,n3"
	waitFor(t, 20*time.Second, "both routers and the cache to converge", func() bool {
		if members(rA) != want || members(rB) != want || rA.Revision() != rB.Revision() {
			return false
		}
		return cache.Revision() == rA.Revision() && len(cache.Document().Nodes) == 5
	})
	// The bucket itself holds the same ring, in its member keys at the
	// routers' revision and in the document for earlier releases. Right
	// after a failover a read may meet no responders for a moment (the new
	// replicas subscribe once current), so reads are retried; what they
	// read is not.
	waitFor(t, 10*time.Second, "the bucket to answer", func() bool {
		got, _ := bucketDocument(js)
		return got != ""
	})
	if got, rev := bucketMembers(js); got != want || rev != rA.Revision() {
		t.Fatalf("bucket: member keys %q at revision %d (routers at %d)", got, rev, rA.Revision())
	}
	// The document follows the member keys, up to a write window later.
	waitFor(t, 5*time.Second, "the document to follow the member keys", func() bool {
		got, _ := bucketDocument(js)
		return got == want
	})
	waitFor(t, 5*time.Second, "more successful requests after the failover", func() bool {
		res.mu.Lock()
		defer res.mu.Unlock()
		return res.ok > okBefore+100
	})
	close(stop)
	stopLoad()
	stopReports()
	stopDuring()
	stopAfter()
	if res.fails > 0 || len(res.foreign) > 0 {
		t.Fatalf("%d requests failed; answers outside the membership: %v", res.fails, res.foreign)
	}
	t.Logf("%d requests ok, %d retried, 0 failed; ring revision %d", res.ok, res.retries, rA.Revision())
}

// Routers and a cache started while the cluster is still forming (no
// JetStream leader yet, then an R3 bucket whose direct-get responders are
// not subscribed yet) wait for it instead of failing, and then agree.
func TestClusterStartWhileForming(t *testing.T) {
	servers := startClusterServers(t)
	cfg := testConfig(t)
	cfg.KVReplicas = 3
	conn := func(i int) *nats.Conn { return connectCluster(t, servers, i) }
	routers := make([]*router.Router, 3)
	var wg sync.WaitGroup
	for i := range routers {
		wg.Go(func() {
			r, err := router.New(conn(i), cfg)
			if err != nil {
				t.Error(err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := r.Start(ctx); err != nil {
				t.Errorf("router %d: %v", i, err)
				return
			}
			t.Cleanup(func() { r.Close() })
			routers[i] = r
		})
	}
	var cache *bus.RingCache
	wg.Go(func() {
		js, _ := jetstream.New(conn(2))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := bus.WatchRing(ctx, js, "", bus.WithRingCacheLogger(testLogger(t)))
		if err != nil {
			t.Errorf("cache: %v", err)
			return
		}
		t.Cleanup(func() { c.Close() })
		cache = c
	})
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	stop := make(chan struct{})
	stopReports := keepReporting(t, conn(1), []string{"n1", "n2", "n3"}, stop)
	defer func() { close(stop); stopReports() }()
	waitFor(t, 20*time.Second, "every router and the cache at one revision with 3 members", func() bool {
		for _, r := range routers {
			if members(r) != "n1,n2,n3" || r.Revision() != routers[0].Revision() {
				return false
			}
		}
		return cache.Revision() == routers[0].Revision()
	})
	client, _ := bus.NewClient(conn(0))
	for _, k := range []string{"a", "user-42", "tenant/7"} {
		want, err := client.Pick(ctxT(t), k)
		if err != nil {
			t.Fatalf("Pick %q: %v", k, err)
		}
		if got, err := cache.Get(k); err != nil || got != want {
			t.Fatalf("key %q: cache %q (%v), router %q", k, got, err, want)
		}
	}
}
