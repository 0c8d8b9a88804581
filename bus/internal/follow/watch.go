package follow

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// WatchKeys follows keys of the bucket until ctx ends, passing every entry
// to apply. It re-creates the watcher when it stops (the server restarted,
// the bucket was recreated) or when kicked. Before each watch it calls
// probe, with a short timeout: right after a reconnect JetStream may not
// answer yet, and creating a watch would wait out the JetStream context's
// whole default timeout.
func WatchKeys(ctx context.Context, bucket func() jetstream.KeyValue, keys []string,
	probe func(context.Context) error, apply func(jetstream.KeyValueEntry),
	kick <-chan struct{}, log *slog.Logger) {
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
				follow(ctx, w, apply, kick)
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

// follow passes the watcher's entries to apply until it stops, ctx ends or
// kick fires.
func follow(ctx context.Context, w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry), kick <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				apply(e)
			}
		}
	}
}

// FollowReconnects kicks the watch after each reconnect (a restarted
// server has lost the watch's consumer) and calls hook, until ctx ends.
func FollowReconnects(ctx context.Context, nc *nats.Conn, kick chan<- struct{}, hook func()) {
	ch := nc.StatusChanged(nats.CONNECTED)
	defer nc.RemoveStatusListener(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			select {
			case kick <- struct{}{}:
			default:
			}
			if hook != nil {
				hook()
			}
		}
	}
}
