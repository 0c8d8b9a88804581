package resourceaware

import "errors"

var (
	// ErrNoNodes is returned when there is no node to choose from.
	ErrNoNodes = errors.New("resourceaware: no nodes")

	// ErrInvalidReport is wrapped by every error about a health report or a
	// node id.
	ErrInvalidReport = errors.New("resourceaware: invalid report")

	// ErrInvalidCount is returned by SelectN for n < 1.
	ErrInvalidCount = errors.New("resourceaware: count must be at least 1")
)
