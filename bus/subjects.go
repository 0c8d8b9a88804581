package bus

import (
	"fmt"
	"strings"
)

// Subjects, names and defaults of the wire contract (see subjects.md).
const (
	SubjectRequest = "route.request" // request/reply: which node takes this key or request
	SubjectRing    = "route.ring"    // request/reply: the ring document and its revision
	SubjectNodes   = "route.nodes"   // request/reply: every known node and its health

	HealthPrefix     = "health."  // nodes publish health on HealthPrefix + node id
	SubjectHealthAll = "health.*" // what routers subscribe to

	DefaultBucket     = "natsroute" // JetStream KV bucket holding the ring
	RingKey           = "ring"      // the key of the ring document in the bucket
	DefaultQueueGroup = "natsroute" // queue group shared by router replicas

	ServiceName    = "natsroute" // NATS micro service name
	ServiceVersion = "0.1.0"     // NATS micro service version

	// Strategy names.
	StrategyConsistentHash = "ConsistentHash"
	StrategyResourceAware  = "ResourceAware"

	// Node statuses carried by health reports.
	StatusUp       = "up"
	StatusDraining = "draining"
	StatusLeaving  = "leaving"

	// MaxNodeIDLength is the longest node id, in characters.
	MaxNodeIDLength = 64
)

// HealthSubject returns the subject node publishes its health on.
func HealthSubject(node string) string { return HealthPrefix + node }

// ValidateNodeID checks that id is 1 to 64 characters of [A-Za-z0-9_-]: a
// single subject token without wildcards, dots or spaces.
func ValidateNodeID(id string) error {
	if id == "" || len(id) > MaxNodeIDLength {
		return fmt.Errorf("%w: node id %q must be 1 to %d characters of [A-Za-z0-9_-]", ErrInvalidNodeID, clip(id), MaxNodeIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: node id %q has %q; only [A-Za-z0-9_-] is allowed", ErrInvalidNodeID, clip(id), rune(c))
		}
	}
	return nil
}

// nodeFromSubject returns the node id of a health subject.
func nodeFromSubject(subject string) (string, bool) {
	return strings.CutPrefix(subject, HealthPrefix)
}

// clip shortens s for error messages.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return s
}
