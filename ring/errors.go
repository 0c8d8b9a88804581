package ring

import "errors"

var (
	// ErrEmpty is returned by lookups on a ring with no members, or when no
	// candidate of a restricted lookup is usable.
	ErrEmpty = errors.New("ring: empty")

	// ErrInvalidMember is wrapped by errors about a member's id or weight.
	ErrInvalidMember = errors.New("ring: invalid member")

	// ErrInvalidCount is returned by GetN and friends for n < 1.
	ErrInvalidCount = errors.New("ring: count must be at least 1")
)
