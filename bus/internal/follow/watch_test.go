package follow

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func testBucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// waitUntil polls cond under mu until it holds or 10 s pass.
func waitUntil(t *testing.T, mu *sync.Mutex, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		ok := cond()
		mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestWatchAgainAfterKick: a watch re-established after a kick still
// follows its keys. (nats.go's WatchFiltered prefixes the keys slice in
// place; passing the same slice again failed every later watch with
// "invalid key", which the RingCache's 5 s re-read used to hide.)
func TestWatchAgainAfterKick(t *testing.T) {
	kv := testBucket(t)
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	seen := map[string]uint64{}
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		probe := func(context.Context) error { return nil }
		WatchKeys(ctx, func() jetstream.KeyValue { return kv }, []string{"a", "b.*"}, probe, func(e jetstream.KeyValueEntry) {
			mu.Lock()
			seen[e.Key()] = e.Revision()
			mu.Unlock()
		}, kick, quiet())
	}()
	t.Cleanup(func() { cancel(); <-done })
	for i, key := range []string{"a", "b.x", "b.y"} {
		rev, err := kv.PutString(ctx, key, "v")
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, &mu, "the watch to see "+key, func() bool { return seen[key] == rev })
		if i < 2 {
			kick <- struct{}{}
		}
	}
}

// TestWatchBatches: Flush comes only after the initial values are all
// applied, a kick starts again with Begin and the current values, and
// every entry is applied once per watch, in order.
func TestWatchBatches(t *testing.T) {
	kv := testBucket(t)
	bg := context.Background()
	for _, k := range []string{"m.a", "m.b", "m.c"} {
		if _, err := kv.PutString(bg, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(bg, "m.b"); err != nil { // a delete marker is an initial value too
		t.Fatal(err)
	}
	var mu sync.Mutex
	var begins int
	var applied []uint64 // revisions applied in this watch
	var flushedAt []int  // len(applied) at each Flush
	b := Batch{
		Begin: func() { mu.Lock(); begins++; applied, flushedAt = nil, nil; mu.Unlock() },
		Apply: func(e jetstream.KeyValueEntry) {
			mu.Lock()
			applied = append(applied, e.Revision())
			mu.Unlock()
		},
		Flush: func() { mu.Lock(); flushedAt = append(flushedAt, len(applied)); mu.Unlock() },
	}
	ctx, cancel := context.WithCancel(bg)
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		WatchBatches(ctx, func() jetstream.KeyValue { return kv }, []string{"m.*"}, func(context.Context) error { return nil }, b, kick, quiet())
	}()
	t.Cleanup(func() { cancel(); <-done })

	for round := 1; round <= 2; round++ {
		waitUntil(t, &mu, "the first flush", func() bool { return begins == round && len(flushedAt) > 0 })
		mu.Lock()
		// The last entry per key: m.a, the delete of m.b, m.c, and in round
		// 2 the delete of m.d.
		if want := 2 + round; flushedAt[0] != want {
			t.Fatalf("round %d: first Flush after %d entries, want all %d initial values (%v)", round, flushedAt[0], want, applied)
		}
		mu.Unlock()
		rev, err := kv.PutString(bg, "m.d", "v")
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, &mu, "m.d to be applied and flushed", func() bool {
			return len(applied) > 0 && applied[len(applied)-1] == rev && flushedAt[len(flushedAt)-1] == len(applied)
		})
		mu.Lock()
		for i := 1; i < len(applied); i++ {
			if applied[i] <= applied[i-1] {
				t.Fatalf("round %d: revisions out of order: %v", round, applied)
			}
		}
		mu.Unlock()
		if err := kv.Delete(bg, "m.d"); err != nil {
			t.Fatal(err)
		}
		if round == 1 {
			kick <- struct{}{}
		}
	}
}

// TestWatchBatchesGathersBursts: while flushes are slow, entries that keep
// arriving gather into fewer flushes than entries (a flush that took d
// holds the next for 4 × d) even when each arrives after the last flush
// ended, every entry is flushed in the end, and a change after a quiet
// spell is flushed without waiting for more.
func TestWatchBatchesGathersBursts(t *testing.T) {
	kv := testBucket(t)
	bg := context.Background()
	const slow = 15 * time.Millisecond // each flush; the next waits 60 ms
	var mu sync.Mutex
	var applied, flushed, flushes int
	b := Batch{
		Begin: func() {},
		Apply: func(jetstream.KeyValueEntry) { mu.Lock(); applied++; mu.Unlock() },
		Flush: func() {
			time.Sleep(slow)
			mu.Lock()
			flushes++
			flushed = applied
			mu.Unlock()
		},
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		WatchBatches(ctx, func() jetstream.KeyValue { return kv }, []string{"m.*"}, func(context.Context) error { return nil }, b, make(chan struct{}), quiet())
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, &mu, "the initial flush", func() bool { return flushes == 1 })

	// One entry every 25 ms: each comes after the last flush ended, so
	// flushing whatever is delivered would flush once per entry.
	const burst = 24
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for i := range burst {
		<-tick.C
		if _, err := kv.PutString(bg, fmt.Sprintf("m.k%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, &mu, "the burst flushed", func() bool { return flushed == burst })
	mu.Lock()
	n := flushes - 1
	mu.Unlock()
	t.Logf("%d entries 25 ms apart in %d flushes of 15 ms", burst, n)
	if n > burst*3/4 {
		t.Fatalf("%d entries took %d flushes: a burst must gather", burst, n)
	}

	// Quiet for longer than the hold: the next change is flushed at once.
	quietSpell := time.NewTimer(5 * slow)
	<-quietSpell.C
	start := time.Now()
	if _, err := kv.PutString(bg, "m.lone", "v"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, &mu, "the lone change flushed", func() bool { return flushed == burst+1 })
	if took := time.Since(start); took >= 4*slow {
		t.Fatalf("a lone change after a quiet spell was flushed after %v: it waited for the hold", took)
	}
}
