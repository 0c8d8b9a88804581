package bus

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// EjectedPrefix starts the KV keys of ejections: "ejected.<pool>.<node>".
const EjectedPrefix = "ejected."

// MaxEjectionSeconds bounds how long one ejection lasts, whatever the settings.
const MaxEjectionSeconds = 24 * 3600

// Ejection is the KV value under EjectionKey(pool, node) while a router has
// ejected the node from the pool because callers said it failed them while
// it still answered probes (a gray failure). The key carries a per-key TTL
// of Seconds, so the ejection ends by itself even if no router is left;
// deleting the key ends it early. See subjects.md.
type Ejection struct {
	// Failures and Callers are what tripped it: this many failures from
	// this many distinct callers within the window.
	Failures int `json:"failures"`
	Callers  int `json:"callers"`
	// Reason is the last caller's reason, if it gave one.
	Reason string `json:"reason,omitempty"`
	// Seconds is how long the ejection lasts from the key's creation.
	Seconds float64 `json:"seconds"`
	// Repeat counts the node's ejections in a row (1 for the first); each
	// lasts twice the one before, up to the router's maximum.
	Repeat int `json:"repeat"`
	// Router names the router that wrote it.
	Router string `json:"router,omitempty"`
}

// EjectionKey returns the KV key of node's ejection from pool.
func EjectionKey(pool, node string) string {
	return EjectedPrefix + cmp.Or(pool, DefaultPool) + "." + node
}

// EjectionFromKey returns the pool and node an ejection key names.
func EjectionFromKey(key string) (pool, node string, ok bool) {
	rest, found := strings.CutPrefix(key, EjectedPrefix)
	if !found {
		return "", "", false
	}
	pool, node, found = strings.Cut(rest, ".")
	if !found || ValidatePoolName(pool) != nil || ValidateNodeID(node) != nil {
		return "", "", false
	}
	return pool, node, true
}

// EncodeEjection returns e as JSON (what `nats kv get` shows).
func EncodeEjection(e Ejection) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(e)
}

// DecodeEjection decodes and validates an ejection value.
func DecodeEjection(data []byte) (Ejection, error) {
	var e Ejection
	if len(data) > 4096 {
		return e, fmt.Errorf("%w: ejection is %d bytes; at most 4096", ErrMalformed, len(data))
	}
	if err := json.Unmarshal(data, &e); err != nil {
		return Ejection{}, fmt.Errorf("%w: ejection: %w", ErrMalformed, err)
	}
	if err := e.Validate(); err != nil {
		return Ejection{}, err
	}
	return e, nil
}

// Validate checks an ejection's fields.
func (e Ejection) Validate() error {
	switch {
	case e.Failures < 1 || e.Failures > 1_000_000:
		return fmt.Errorf("%w: ejection failures %d, want 1 to 1000000", ErrMalformed, e.Failures)
	case e.Callers < 1 || e.Callers > e.Failures:
		return fmt.Errorf("%w: ejection callers %d, want 1 to failures (%d)", ErrMalformed, e.Callers, e.Failures)
	case math.IsNaN(e.Seconds) || e.Seconds <= 0 || e.Seconds > MaxEjectionSeconds:
		return fmt.Errorf("%w: ejection seconds %v, want above 0 and at most %d", ErrMalformed, e.Seconds, MaxEjectionSeconds)
	case e.Repeat < 1 || e.Repeat > 64:
		return fmt.Errorf("%w: ejection repeat %d, want 1 to 64", ErrMalformed, e.Repeat)
	case len(e.Reason) > MaxFeedbackText || !utf8.ValidString(e.Reason):
		return fmt.Errorf("%w: ejection reason: at most %d bytes of UTF-8", ErrMalformed, MaxFeedbackText)
	case len(e.Router) > MaxFeedbackText || !utf8.ValidString(e.Router):
		return fmt.Errorf("%w: ejection router: at most %d bytes of UTF-8", ErrMalformed, MaxFeedbackText)
	}
	return nil
}
