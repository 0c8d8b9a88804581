package router

import (
	"errors"
	"fmt"

	"github.com/natsroute/natsroute/bus"
)

var (
	errStaleSeq = errors.New("seq is older than the last one seen")
	// errDocTooLarge: the ring document would exceed the server's max_payload.
	errDocTooLarge  = errors.New("ring document exceeds max_payload")
	errTooManyPools = errors.New("too many pools")
	errKeyConflict  = errors.New("another writer changed the key first")
)

// badRequest is a 400 with a message.
func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", bus.ErrBadRequest, fmt.Sprintf(format, args...))
}

// notInvalid retries everything but a document that was refused.
func notInvalid(err error) bool { return !errors.Is(err, bus.ErrInvalidDocument) }
