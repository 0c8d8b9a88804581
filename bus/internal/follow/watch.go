package follow

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// WatchKeys follows keys of the bucket until ctx ends, passing every entry
// to apply (WatchBatches without the batches). It re-creates the watcher
// when it stops (the server restarted, the bucket was recreated) or when
// kicked. Before each watch it calls probe, with a short timeout: right
// after a reconnect JetStream may not answer yet, and creating a watch
// would wait out the JetStream context's whole default timeout.
func WatchKeys(ctx context.Context, bucket func() jetstream.KeyValue, keys []string,
	probe func(context.Context) error, apply func(jetstream.KeyValueEntry),
	kick <-chan struct{}, log *slog.Logger) {
	WatchBatches(ctx, bucket, keys, probe, Batch{Begin: func() {}, Apply: apply, Flush: func() {}}, kick, log)
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
