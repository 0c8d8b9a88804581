package embedded_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// bucketMembers reads the default pool's member keys from the bucket: the
// members and the pool's revision, "" if the bucket is missing or the pool
// has no member keys.
func bucketMembers(js jetstream.JetStream) (string, uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.DefaultBucket)
	if err != nil {
		return "", 0
	}
	snap, err := poolSnapshot(kv, bus.DefaultPool)
	if err != nil {
		return "", 0
	}
	return docMembers(snap.Document()), snap.Revision
}

// bucketDocument reads the default pool's whole document (written for
// readers of earlier releases), "" if the bucket or the key is missing.
func bucketDocument(js jetstream.JetStream) (string, uint64) {
	e, err := bucketGet(js)
	if err != nil {
		return "", 0
	}
	d, err := bus.DecodeRingDocument(e.Value())
	if err != nil {
		return "", 0
	}
	return docMembers(d), e.Revision()
}

// joinAndWatch has nodes report, waits for them on the router's ring, and
// returns a RingCache at the router's revision.
func joinAndWatch(t *testing.T, r *router.Router, nc *nats.Conn, ids ...string) (jetstream.JetStream, *bus.RingCache) {
	t.Helper()
	for _, id := range ids {
		health(t, nc, id, okHealth)
	}
	want := strings.Join(ids, ",")
	waitFor(t, 5*time.Second, want, func() bool { return members(r) == want })
	js, _ := jetstream.New(nc)
	cache, err := bus.WatchRing(ctxT(t), js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cache.Close() })
	if err := cache.WaitRevision(ctxT(t), r.Revision()); err != nil {
		t.Fatal(err)
	}
	return js, cache
}

// checkRecovered waits until the bucket holds want again, the router and a
// RingCache that ran through the loss answer from it at its revision, a new
// member reaches all three, and a RingCache started afresh sees it too.
func checkRecovered(t *testing.T, r *router.Router, cache *bus.RingCache, nc *nats.Conn, js jetstream.JetStream, want string) {
	t.Helper()
	waitFor(t, 20*time.Second, "the bucket to hold "+want+" again", func() bool {
		got, _ := bucketMembers(js)
		return got == want
	})
	_, rev := bucketMembers(js)
	waitFor(t, 20*time.Second, "router and cache at the new bucket's revision", func() bool {
		return r.Revision() == rev && cache.Revision() == rev && docMembers(cache.Document()) == want
	})
	health(t, nc, "z", okHealth)
	waitFor(t, 10*time.Second, "a new member in the bucket, the router and the cache", func() bool {
		got, rev := bucketMembers(js)
		return got == want+",z" && r.Revision() == rev && cache.Revision() == rev && docMembers(cache.Document()) == want+",z"
	})
	fresh, err := bus.WatchRing(ctxT(t), js, "", bus.WithRingCacheLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if got := docMembers(fresh.Document()); got != want+",z" {
		t.Fatalf("a RingCache started after the recovery has %q", got)
	}
}

// TestBucketDeleted: an operator deletes the KV bucket under a running
// router. The router notices, creates it again with its settings,
// republishes the ring from memory and counts it; a RingCache that was
// watching follows the new bucket by itself. Deleting only the key is
// healed the same way. Before issue 18 the router retried its write for
// ever and new members never reached the bucket.
func TestBucketDeleted(t *testing.T) {
	s := runServer(t)
	cfg := testConfig(t)
	cfg.Resync = 500 * time.Millisecond // how soon an idle router notices
	r := startRouter(t, connect(t, s.ClientURL()), cfg)
	nc := connect(t, s.ClientURL())
	js, cache := joinAndWatch(t, r, nc, "a", "b", "c")

	// The key alone.
	kv, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctxT(t), bus.RingKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the router to write a,b,c again after the key was deleted", func() bool {
		got, _ := bucketDocument(js)
		return got == "a,b,c"
	})

	// The whole bucket.
	if err := js.DeleteKeyValue(ctxT(t), bus.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, r, cache, nc, js, "a,b,c")
	if n := r.Stats().BucketRecreated; n != 1 {
		t.Fatalf("bucket recreated %d times, want 1", n)
	}
	st, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	status, err := st.Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if status.History() != 1 {
		t.Fatalf("recreated bucket keeps history %d, want the router's 1", status.History())
	}
}

// TestBucketLostWithServer: the server restarts on an empty store (a
// container without its volume). The router reconnects, finds no bucket,
// creates it and republishes; a RingCache follows.
func TestBucketLostWithServer(t *testing.T) {
	port := freePort(t)
	s := runServer(t, func(o *server.Options) { o.Port, o.StoreDir = port, t.TempDir() })
	cfg := testConfig(t)
	r := startRouter(t, connect(t, s.ClientURL(), reconnecting()...), cfg)
	nc := connect(t, s.ClientURL(), reconnecting()...)
	js, cache := joinAndWatch(t, r, nc, "a", "b")

	s.Shutdown()
	s.WaitForShutdown()
	runServer(t, func(o *server.Options) { o.Port, o.StoreDir = port, t.TempDir() })
	checkRecovered(t, r, cache, nc, js, "a,b")
	if n := r.Stats().BucketRecreated; n != 1 {
		t.Fatalf("bucket recreated %d times, want 1", n)
	}
}
