package bus

import (
	"cmp"
	"fmt"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus/internal/text"
)

// Feedback is a caller's word that a node failed it, sent on
// SubjectFeedback. A router probes the node at once; see subjects.md.
type Feedback struct {
	// Node is the node that failed (required; a node id).
	Node string `json:"node" msgpack:"node"`
	// Pool is the pool the caller used; empty means DefaultPool.
	Pool string `json:"pool,omitempty" msgpack:"pool,omitempty"`
	// Caller names the caller (e.g. its connection name): at most
	// MaxFeedbackText bytes of printable text.
	Caller string `json:"caller,omitempty" msgpack:"caller,omitempty"`
	// Reason says what went wrong: at most MaxFeedbackText bytes.
	Reason string `json:"reason,omitempty" msgpack:"reason,omitempty"`
}

// MaxFeedbackText bounds Feedback's Caller and Reason, in bytes.
const MaxFeedbackText = 256

// Validate returns an error wrapping ErrInvalidFeedback for a bad node id,
// pool name, caller or reason.
func (f Feedback) Validate() error {
	if err := ValidateNodeID(f.Node); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidFeedback, err)
	}
	if f.Pool != "" {
		if err := ValidatePoolName(f.Pool); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidFeedback, err)
		}
	}
	if len(f.Caller) > MaxFeedbackText {
		return fmt.Errorf("%w: caller is %d bytes; at most %d", ErrInvalidFeedback, len(f.Caller), MaxFeedbackText)
	}
	if !utf8.ValidString(f.Caller) {
		return fmt.Errorf("%w: caller %q is not UTF-8", ErrInvalidFeedback, text.Clip(f.Caller))
	}
	for _, c := range f.Caller {
		if !unicode.IsPrint(c) {
			return fmt.Errorf("%w: caller %q has a non-printable character", ErrInvalidFeedback, text.Clip(f.Caller))
		}
	}
	if len(f.Reason) > MaxFeedbackText {
		return fmt.Errorf("%w: reason is %d bytes; at most %d", ErrInvalidFeedback, len(f.Reason), MaxFeedbackText)
	}
	if !utf8.ValidString(f.Reason) {
		return fmt.Errorf("%w: reason is not UTF-8", ErrInvalidFeedback)
	}
	return nil
}

// PoolOrDefault is the feedback's pool, DefaultPool when it names none.
func (f Feedback) PoolOrDefault() string { return cmp.Or(f.Pool, DefaultPool) }

// maxFeedbackBody bounds a feedback body before it is decoded: the four
// fields at their limits, with room for JSON escapes.
const maxFeedbackBody = 4096

// DecodeFeedback decodes and validates a route.feedback body (JSON or
// msgpack, as DetectEncoding says). Every error wraps ErrInvalidFeedback.
func DecodeFeedback(data []byte, h nats.Header) (Feedback, error) {
	if len(data) > maxFeedbackBody {
		return Feedback{}, fmt.Errorf("%w: body is %d bytes; at most %d", ErrInvalidFeedback, len(data), maxFeedbackBody)
	}
	var f Feedback
	if err := DetectEncoding(data, h).Unmarshal(data, &f); err != nil {
		return Feedback{}, fmt.Errorf("%w: %w", ErrInvalidFeedback, err)
	}
	return f, f.Validate()
}

// EncodeFeedback validates f and encodes it in enc.
func EncodeFeedback(f Feedback, enc Encoding) ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return enc.Marshal(&f)
}
