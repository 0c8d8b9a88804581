package follow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nats.ErrNoResponders, true},
		{fmt.Errorf("kv get %q: %w", "ring", nats.ErrNoResponders), true},
		{nats.ErrTimeout, true},
		{context.DeadlineExceeded, true},
		{nats.ErrConnectionReconnecting, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{jetstream.ErrJetStreamNotEnabled, false},
		{jetstream.ErrJetStreamNotEnabledForAccount, false},
		{&jetstream.APIError{Code: 400, ErrorCode: 10003, Description: "bad request"}, false},
		{jetstream.ErrBucketNotFound, false},
		{fmt.Errorf("ring document at revision 3: %w", errors.New("bus: invalid ring document")), false},
		{nats.ErrConnectionClosed, false},
		{context.Canceled, false},
	} {
		if got := Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestRetryStartup(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Transient failures are waited out; each attempt has its own deadline.
	calls := 0
	err := RetryStartup(context.Background(), log, "step", Transient, func(ctx context.Context) error {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("an attempt without a deadline")
		}
		if calls < 3 {
			return nats.ErrNoResponders
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("after 2 Transient failures: %v after %d calls, want success on the 3rd", err, calls)
	}

	// A refusal returns at once, named by the step.
	calls = 0
	err = RetryStartup(context.Background(), log, "step", Transient, func(context.Context) error {
		calls++
		return jetstream.ErrJetStreamNotEnabled
	})
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) || calls != 1 || !strings.HasPrefix(err.Error(), "bus: step: ") {
		t.Fatalf("a refusal: %v after %d calls", err, calls)
	}

	// The caller's deadline ends the wait and the last error is kept.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = RetryStartup(ctx, log, "step", Transient, func(context.Context) error { return nats.ErrNoResponders })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), nats.ErrNoResponders.Error()) {
		t.Fatalf("at the deadline: %v", err)
	}
}
