package bus

import (
	"context"
	"fmt"
)

// FailureOption qualifies a failure report (Client.ReportFailure).
type FailureOption func(*failureReport)

type failureReport struct {
	fb  Feedback
	ack bool
}

// InPool names the pool the node failed in (default: the client's pool).
func InPool(pool string) FailureOption {
	return func(f *failureReport) { f.fb.Pool = pool }
}

// WithReason says what went wrong (at most 256 bytes).
func WithReason(reason string) FailureOption {
	return func(f *failureReport) { f.fb.Reason = reason }
}

// AsCaller names the caller (default: the connection's name, or if it has
// none a name the Client made up at random). Routers eject a node only on
// failures from several distinct callers, so each caller process should
// have a name of its own.
func AsCaller(caller string) FailureOption {
	return func(f *failureReport) { f.fb.Caller = caller }
}

// WithAck waits for a router's acknowledgement ({} or an error) instead of
// only publishing.
func WithAck() FailureOption {
	return func(f *failureReport) { f.ack = true }
}

// ReportFailure tells routers that node failed this caller (route.feedback):
// each router probes the node at once, and one that is dead leaves the ring
// within a round trip. Without WithAck it publishes and returns (nil once
// the message is buffered); with it, it waits for the first router's answer
// and returns its error (*ServiceError, ErrNoRouter, ErrTimeout). A bad node
// id, pool, caller or reason is refused before anything is sent.
func (c *Client) ReportFailure(ctx context.Context, node string, opts ...FailureOption) error {
	f := failureReport{fb: Feedback{Node: node, Pool: c.pool, Caller: c.caller}}
	for _, o := range opts {
		o(&f)
	}
	if len(f.fb.Caller) > MaxFeedbackText {
		f.fb.Caller = f.fb.Caller[:MaxFeedbackText]
	}
	data, err := EncodeFeedback(f.fb, c.enc)
	if err != nil {
		return fmt.Errorf("bus: ReportFailure: %w", err)
	}
	if !f.ack {
		if err := c.nc.Publish(SubjectFeedback, data); err != nil {
			return fmt.Errorf("natsroute: publish %s: %w", SubjectFeedback, err)
		}
		return nil
	}
	_, err = c.request(ctx, SubjectFeedback, data)
	return err
}
