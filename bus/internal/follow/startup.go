package follow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JSAttempt bounds one JetStream call made while starting.
const JSAttempt = 2 * time.Second

// RetryStartup calls op, each time with a deadline of JSAttempt, until it
// succeeds, fails with an error retry does not accept, or ctx ends; what
// names the step in the error. Right
// after a cluster forms or a replicated bucket is created, JetStream answers
// for a moment with timeouts and "no responders" (no leader yet; the new
// stream's direct-get responders not subscribed yet): start-up waits those
// out instead of failing. The first failure is logged.
func RetryStartup(ctx context.Context, log *slog.Logger, what string, retry func(error) bool, op func(context.Context) error) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, JSAttempt)
		err := op(attempt)
		cancel()
		if err == nil {
			return nil
		}
		if !retry(err) {
			return fmt.Errorf("bus: %s: %w", what, err)
		}
		if last == nil {
			log.Warn("JetStream not answering yet; retrying until the start-up deadline", "step", what, "err", err)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("bus: %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Transient reports whether err is one JetStream gives while it is still
// forming or failing over, as opposed to a refusal that will not change by
// itself (JetStream not enabled, a bad document, a closed connection).
func Transient(err error) bool {
	var jsErr jetstream.JetStreamError
	if errors.As(err, &jsErr) && jsErr.APIError() != nil {
		api := jsErr.APIError()
		return api.Code == 503 &&
			api.ErrorCode != jetstream.JSErrCodeJetStreamNotEnabled &&
			api.ErrorCode != jetstream.JSErrCodeJetStreamNotEnabledForAccount
	}
	return errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

// OpenBucket binds to the bucket, creating it if it does not exist. It
// retries every error until ctx ends: JetStream may not have a leader yet.
func OpenBucket(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, log *slog.Logger) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := RetryStartup(ctx, log, fmt.Sprintf("open bucket %q", bucket), func(error) bool { return true }, func(ctx context.Context) error {
		var err error
		kv, _, err = BindBucket(ctx, js, bucket, replicas)
		return err
	})
	return kv, err
}

// BindBucket binds to the bucket, creating it if it does not exist; created
// says whether this call created it.
func BindBucket(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (kv jetstream.KeyValue, created bool, err error) {
	kv, err = js.KeyValue(ctx, bucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, false, err
	}
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "natsroute ring membership",
		History:     1,
		Replicas:    replicas,
		// Per-key TTLs: ejections (DESIGN.md, Liveness) end by themselves.
		LimitMarkerTTL: MarkerTTL,
	})
	if errors.Is(err, jetstream.ErrBucketExists) { // another router was first
		kv, err = js.KeyValue(ctx, bucket)
		return kv, false, err
	}
	return kv, err == nil, err
}

// MarkerTTL is how long the bucket keeps the marker a key leaves when its
// per-key TTL runs out.
const MarkerTTL = time.Minute

// AllowKeyTTL turns on per-key TTLs in a bucket created without them (by
// an earlier release): it updates the bucket's stream, changing nothing
// else. It needs permission to update the stream; without it, the caller
// must do without per-key TTLs.
func AllowKeyTTL(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (updated bool, err error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return false, err
	}
	kst, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return false, fmt.Errorf("bucket %q: no stream status", kv.Bucket())
	}
	cfg := kst.StreamInfo().Config
	if cfg.AllowMsgTTL {
		return false, nil
	}
	cfg.AllowMsgTTL = true
	if cfg.SubjectDeleteMarkerTTL == 0 {
		cfg.SubjectDeleteMarkerTTL = MarkerTTL
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return false, fmt.Errorf("bucket %q: allow per-key TTLs: %w", kv.Bucket(), err)
	}
	return true, nil
}
