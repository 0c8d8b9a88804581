package bus

import (
	"fmt"
	"github.com/natsroute/natsroute/bus/internal/text"
	"regexp"
	"strings"
)

// Subjects, names and defaults of the wire contract (see subjects.md).
const (
	SubjectRequest = "route.request" // request/reply: which node takes this key or request
	SubjectRing    = "route.ring"    // request/reply: the ring document and its revision
	SubjectNodes   = "route.nodes"   // request/reply: every known node and its health

	HealthPrefix     = "health."  // nodes publish health on HealthPrefix + node id
	SubjectHealthAll = "health.*" // what routers subscribe to

	SubjectPools = "route.pools" // request/reply: the pools a router serves

	// SubjectFeedback takes callers' word that a node failed them (publish,
	// or request for an acknowledgement); every router replica sees it.
	SubjectFeedback = "route.feedback"
	// ProbeSuffix ends the subject a probing node answers probes on:
	// health.<node>.probe. health.* (two tokens) does not match it.
	ProbeSuffix = ".probe"

	DefaultBucket     = "natsroute" // JetStream KV bucket holding the ring
	RingKey           = "ring"      // the key of the default pool's ring document
	DefaultPool       = "default"   // the pool of reports and requests that name none
	MaxPoolsPerReport = 16          // most pools one health report may list
	DefaultQueueGroup = "natsroute" // queue group shared by router replicas

	ServiceName    = "natsroute" // NATS micro service name
	ServiceVersion = "0.3.0"     // NATS micro service version (0.2.0: pools, format 2; 0.3.0: one key per member)

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

// ProbeSubject returns the subject a probing node answers probes on.
func ProbeSubject(node string) string { return HealthPrefix + node + ProbeSuffix }

// ValidateNodeID checks that id is 1 to 64 characters of [A-Za-z0-9_-]: a
// single subject token without wildcards, dots or spaces.
func ValidateNodeID(id string) error {
	if err := validToken(id); err != "" {
		return fmt.Errorf("%w: node id %q %s", ErrInvalidNodeID, text.Clip(id), err)
	}
	return nil
}

// validToken says what is wrong with a node id or pool name, or "".
func validToken(s string) string {
	if s == "" || len(s) > MaxNodeIDLength {
		return fmt.Sprintf("must be 1 to %d characters of [A-Za-z0-9_-]", MaxNodeIDLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Sprintf("has %q; only [A-Za-z0-9_-] is allowed", rune(c))
		}
	}
	return ""
}

// ValidatePoolName checks a pool name: like a node id, 1 to 64 characters
// of [A-Za-z0-9_-].
func ValidatePoolName(name string) error {
	if err := validToken(name); err != "" {
		return fmt.Errorf("%w: pool name %q %s", ErrInvalidPool, text.Clip(name), err)
	}
	return nil
}

// PoolKey returns the KV key of a pool's ring document: "ring" for the
// default pool, "ring.<pool>" for the others.
func PoolKey(pool string) string {
	if pool == DefaultPool || pool == "" {
		return RingKey
	}
	return RingKey + "." + pool
}

// PoolFromKey returns the pool whose ring document a KV key holds.
func PoolFromKey(key string) (string, bool) {
	if key == RingKey {
		return DefaultPool, true
	}
	p, ok := strings.CutPrefix(key, RingKey+".")
	if !ok || ValidatePoolName(p) != nil {
		return "", false
	}
	return p, true
}

// validatePools checks a report's pool list: 1 to MaxPoolsPerReport
// distinct valid names.
func validatePools(pools []string) error {
	if len(pools) == 0 || len(pools) > MaxPoolsPerReport {
		return fmt.Errorf("%w: pools lists %d names; want 1 to %d (omit it for [%q])", ErrInvalidPool, len(pools), MaxPoolsPerReport, DefaultPool)
	}
	for i, p := range pools {
		if err := ValidatePoolName(p); err != nil {
			return err
		}
		for _, q := range pools[:i] {
			if p == q {
				return fmt.Errorf("%w: pool %q is listed twice", ErrInvalidPool, p)
			}
		}
	}
	return nil
}

// NodeFromSubject returns the node id of a health subject.
func NodeFromSubject(subject string) (string, bool) {
	return strings.CutPrefix(subject, HealthPrefix)
}

var bucketRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// ValidateBucketName checks a KV bucket name: letters, digits, '_' and '-'.
func ValidateBucketName(name string) error {
	if !bucketRE.MatchString(name) {
		return fmt.Errorf("bucket %q is not a valid bucket name: use letters, digits, '_' and '-'", name)
	}
	return nil
}
