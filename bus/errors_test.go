package bus_test

import (
	"errors"
	"testing"

	"github.com/natsroute/natsroute/bus"
)

// TestServiceErrorText: the text says "natsroute: " once, whether or not
// the router's message starts with it (a router's does: it is the text of
// its own error).
func TestServiceErrorText(t *testing.T) {
	for _, c := range []struct {
		err      bus.ServiceError
		want     string
		sentinel error
	}{
		{bus.ServiceError{Code: 503, Message: "natsroute: no node available: the ring has no members"}, "natsroute: no node available: the ring has no members (503)", bus.ErrNoNodes},
		{bus.ServiceError{Code: 400, Message: `natsroute: bad request: unknown strategy "Random": use ConsistentHash or ResourceAware`}, `natsroute: bad request: unknown strategy "Random": use ConsistentHash or ResourceAware (400)`, bus.ErrBadRequest},
		{bus.ServiceError{Code: 500, Message: "internal error"}, "natsroute: internal error (500)", bus.ErrInternal},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.err, got, c.want)
		}
		if !errors.Is(&c.err, c.sentinel) {
			t.Errorf("%+v is not %v", c.err, c.sentinel)
		}
	}
}
