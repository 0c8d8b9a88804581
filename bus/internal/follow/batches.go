package follow

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Batch receives the entries of one watch of several keys (the
// one-key-per-member layout), in stream order.
type Batch struct {
	// Begin is called before the first entry of each new watcher: a watch
	// re-established after a break starts again from the bucket's current
	// values (delete markers purged meanwhile are not delivered again), so
	// whatever was built from the previous watcher must be started afresh.
	Begin func()
	// Apply takes one entry.
	Apply func(jetstream.KeyValueEntry)
	// Flush is called once the watcher's initial values have all been
	// applied (the watch's nil entry), and after that whenever no
	// delivered entry is waiting: a burst already delivered is applied
	// entry by entry, then flushed once. After a flush that took d, the
	// next waits until 4 × d has passed (at most 250 ms; see flushShare).
	// It is never called before the initial values are all applied.
	Flush func()
}

// WatchBatches follows keys of the bucket until ctx ends, handing their
// entries to b (see Batch): it keeps the watcher's nil entry ("initial
// values done") and groups the entries already delivered into one Flush.
// It re-creates the watcher when it stops (the server restarted, the
// bucket was recreated) or when kicked. Before each watch it calls probe,
// with a short timeout: right after a reconnect JetStream may not answer
// yet, and creating a watch would wait out the JetStream context's whole
// default timeout.
func WatchBatches(ctx context.Context, bucket func() jetstream.KeyValue, keys []string,
	probe func(context.Context) error, b Batch, kick <-chan struct{}, log *slog.Logger) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		if kv := bucket(); kv != nil {
			attempt, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			err = probe(attempt)
			cancel()
			var w jetstream.KeyWatcher
			if err == nil {
				w, err = kv.WatchFiltered(ctx, slices.Clone(keys)) // it prefixes the keys in place
			}
			if err == nil {
				backoff = 50 * time.Millisecond
				b.Begin()
				followBatches(ctx, w, b, kick)
				// On shutdown nats.go unsubscribes the watch itself (it holds
				// ctx); stopping it here too would wait out a 5 s JetStream
				// timeout to delete the consumer when the server is gone.
				if ctx.Err() == nil {
					_ = w.Stop()
				}
			}
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("ring watch failed; retrying", "keys", keys, "err", err, "in", backoff)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// flushShare bounds the time a watch spends flushing: after a flush that
// took d, the next waits until flushShare × d has passed since it ended,
// applying what arrives meanwhile. A change after a quiet spell is flushed
// at once (a flush of one member costs well under a millisecond), while a
// burst, whose flushes each patch much of the ring, gathers into fewer of
// them: in a burst of 10,000 joins, every reader patched a near-whole ring
// for each few dozen members the router wrote, and took 7.8 s to show them
// all.
const flushShare = 4

// maxFlushWait bounds that wait.
const maxFlushWait = 250 * time.Millisecond

// followBatches passes the watcher's entries to b until it stops, ctx ends
// or kick fires.
func followBatches(ctx context.Context, w jetstream.KeyWatcher, b Batch, kick <-chan struct{}) {
	initial := true // the nil entry has not come yet
	updates := w.Updates()
	var (
		next    time.Time        // no flush before it
		pending bool             // applied entries wait for a flush
		due     <-chan time.Time // fires at next while pending
	)
	flush := func() {
		start := time.Now()
		b.Flush()
		end := time.Now()
		next, pending, due = end.Add(min(flushShare*end.Sub(start), maxFlushWait)), false, nil
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			return
		case <-due:
			flush()
		case e, ok := <-updates:
			if !ok {
				return
			}
			// Take what is already delivered, then flush once.
			for {
				if e == nil {
					initial = false
				} else {
					b.Apply(e)
				}
				if len(updates) == 0 {
					break
				}
				if e, ok = <-updates; !ok {
					return
				}
			}
			switch wait := time.Until(next); {
			case initial:
			case wait <= 0:
				flush()
			case !pending:
				pending, due = true, time.After(wait)
			}
		}
	}
}
