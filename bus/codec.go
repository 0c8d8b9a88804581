package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/natsroute/natsroute/bus/internal/text"
	"math"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/resourceaware"
)

// Encoding is the body encoding of a message: msgpack or JSON.
type Encoding uint8

const (
	Msgpack Encoding = iota // the default on the wire
	JSON                    // a body starting with '{', or Content-Type: application/json
)

func (e Encoding) String() string {
	if e == JSON {
		return "json"
	}
	return "msgpack"
}

// maxDepth bounds the nesting of containers in a decoded body.
const maxDepth = 32

// DetectEncoding tells a body's encoding as the contract says: JSON if the
// Content-Type header says application/json or the first byte is '{',
// otherwise msgpack. An empty body counts as JSON so that its error reply
// is readable.
func DetectEncoding(data []byte, h nats.Header) Encoding {
	if len(data) == 0 || data[0] == '{' {
		return JSON
	}
	if h != nil && strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		return JSON
	}
	return Msgpack
}

// Marshal encodes v in enc.
func (e Encoding) Marshal(v any) ([]byte, error) {
	if e == JSON {
		return json.Marshal(v)
	}
	return marshalMsgpack(v) // msgpack.Marshal, pooled
}

// Unmarshal decodes exactly one value from data into v. It rejects
// trailing bytes and containers nested deeper than 32 levels before
// decoding, so hostile input costs one linear scan.
func (e Encoding) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return errors.New("empty body")
	}
	if e == JSON {
		if err := checkJSONDepth(data); err != nil {
			return err
		}
		if err := json.Unmarshal(data, v); err != nil {
			return fmt.Errorf("invalid JSON: %w", err)
		}
		return nil
	}
	if err := scanMsgpack(data); err != nil {
		return fmt.Errorf("invalid msgpack: %w", err)
	}
	if err := unmarshalMsgpack(data, v); err != nil {
		return fmt.Errorf("invalid msgpack: %w", err)
	}
	return nil
}

// checkJSONDepth rejects JSON nested deeper than maxDepth.
func checkJSONDepth(b []byte) error {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case inString:
			if escaped {
				escaped = false
			} else if c == '\\' {
				escaped = true
			} else if c == '"' {
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			if depth++; depth > maxDepth {
				return fmt.Errorf("invalid JSON: nested deeper than %d levels", maxDepth)
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return nil
}

// scanMsgpack checks that b holds exactly one well-formed msgpack value with
// containers nested at most maxDepth deep.
func scanMsgpack(b []byte) error {
	var stack [maxDepth]uint64 // values still expected by each open container
	depth := 0
	need := uint64(1) // values still expected at the current level
	i := 0
	read := func(n int) (uint64, error) {
		if len(b)-i < n {
			return 0, errors.New("truncated")
		}
		var v uint64
		for _, c := range b[i : i+n] {
			v = v<<8 | uint64(c)
		}
		i += n
		return v, nil
	}
	for {
		for need == 0 {
			if depth == 0 {
				if i != len(b) {
					return fmt.Errorf("%d trailing bytes after the value", len(b)-i)
				}
				return nil
			}
			depth--
			need = stack[depth]
		}
		if i >= len(b) {
			return errors.New("truncated")
		}
		c := b[i]
		i++
		need--
		var skip, children uint64
		var err error
		switch {
		case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c <= 0x8f:
			children = 2 * uint64(c&0x0f)
		case c <= 0x9f:
			children = uint64(c & 0x0f)
		case c <= 0xbf:
			skip = uint64(c & 0x1f)
		case c == 0xc4, c == 0xd9:
			skip, err = read(1)
		case c == 0xc5, c == 0xda:
			skip, err = read(2)
		case c == 0xc6, c == 0xdb:
			skip, err = read(4)
		case c == 0xc7:
			skip, err = read(1)
			skip++
		case c == 0xc8:
			skip, err = read(2)
			skip++
		case c == 0xc9:
			skip, err = read(4)
			skip++
		case c == 0xca, c == 0xce, c == 0xd2:
			skip = 4
		case c == 0xcb, c == 0xcf, c == 0xd3:
			skip = 8
		case c == 0xcc, c == 0xd0:
			skip = 1
		case c == 0xcd, c == 0xd1:
			skip = 2
		case c >= 0xd4 && c <= 0xd8:
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			children, err = read(2)
		case c == 0xdd:
			children, err = read(4)
		case c == 0xde:
			children, err = read(2)
			children *= 2
		case c == 0xdf:
			children, err = read(4)
			children *= 2
		default: // 0xc1 is never used
			return fmt.Errorf("invalid type byte %#x at offset %d", c, i-1)
		}
		if err != nil {
			return err
		}
		if skip > uint64(len(b)-i) {
			return errors.New("truncated")
		}
		i += int(skip)
		if children > 0 {
			if children > uint64(len(b)-i) { // every value takes at least a byte
				return errors.New("truncated")
			}
			if depth == maxDepth {
				return fmt.Errorf("nested deeper than %d levels", maxDepth)
			}
			stack[depth] = need
			depth++
			need = children
		}
	}
}

// Request asks a router which node(s) should take a key or a request.
type Request struct {
	// Strategy is StrategyConsistentHash or StrategyResourceAware. Empty
	// means ConsistentHash when Key or Keys is set, else ResourceAware.
	Strategy string `json:"strategy,omitempty" msgpack:"strategy,omitempty"`
	// Key is the routing key (ConsistentHash).
	Key string `json:"key,omitempty" msgpack:"key,omitempty"`
	// Count is how many distinct nodes to return, primary first; 0 means 1.
	Count int `json:"count,omitempty" msgpack:"count,omitempty"`
	// Candidates restricts the choice to these nodes.
	Candidates []string `json:"candidates,omitempty" msgpack:"candidates,omitempty"`
	// Keys asks for one answer per key, in order (ConsistentHash only).
	Keys []string `json:"keys,omitempty" msgpack:"keys,omitempty"`
	// Explain asks for the reasons behind the answer.
	Explain bool `json:"explain,omitempty" msgpack:"explain,omitempty"`
	// Pool names the pool to route in; empty means DefaultPool.
	Pool string `json:"pool,omitempty" msgpack:"pool,omitempty"`
	// Spread, for a hot key (ConsistentHash), picks by health among the
	// key's first Spread owners; 0 means 1 (plain). Not with Count > 1 or
	// Keys.
	Spread int `json:"spread,omitempty" msgpack:"spread,omitempty"`
}

// Reply is a router's answer.
type Reply struct {
	Node        string       `json:"node,omitempty" msgpack:"node,omitempty"`
	Nodes       []string     `json:"nodes,omitempty" msgpack:"nodes,omitempty"`
	Strategy    string       `json:"strategy" msgpack:"strategy"`
	Revision    uint64       `json:"revision" msgpack:"revision"`
	Results     []Result     `json:"results,omitempty" msgpack:"results,omitempty"`
	Explanation *Explanation `json:"explain,omitempty" msgpack:"explain,omitempty"`
}

// Result is the answer for one key of a batch.
type Result struct {
	Key   string   `json:"key" msgpack:"key"`
	Node  string   `json:"node" msgpack:"node"`
	Nodes []string `json:"nodes,omitempty" msgpack:"nodes,omitempty"`
}

// Explanation tells why a router answered as it did.
type Explanation struct {
	// KeyHash is XXH64 of the key, in hex (ConsistentHash).
	KeyHash string `json:"key_hash,omitempty" msgpack:"key_hash,omitempty"`
	// Skipped are draining members the walk passed over (ConsistentHash).
	Skipped []string `json:"skipped,omitempty" msgpack:"skipped,omitempty"`
	// Nodes are the nodes considered, with score and exclusion (ResourceAware).
	Nodes []NodeScore `json:"nodes,omitempty" msgpack:"nodes,omitempty"`
	// Shed are the members the walk passed over because they shed this key
	// (ConsistentHash, ring document format 2), with their shed fraction.
	Shed []ShedNote `json:"shed,omitempty" msgpack:"shed,omitempty"`
	// Out are the pool's nodes that liveness keeps out of it, with why and
	// until when: "down: no responders to probe", "ejected: 5 failures
	// from 3 callers, back in 30 s".
	Out []OutNote `json:"out,omitempty" msgpack:"out,omitempty"`
}

// OutNote is a node kept out of its pool by liveness, and why.
type OutNote struct {
	ID  string `json:"id" msgpack:"id"`
	Why string `json:"why" msgpack:"why"`
}

// ShedNote is a member that shed a key, and the fraction of keys it sheds.
type ShedNote struct {
	ID       string  `json:"id" msgpack:"id"`
	Fraction float64 `json:"fraction" msgpack:"fraction"`
	// State says where the shed is going, as the answering router sees it:
	// "shed 30 %, rising", "shed 30 %, falling" or "shed 30 %, holding: fell
	// back 2× (the last 6 min ago), next try in 4 min".
	State string `json:"state,omitempty" msgpack:"state,omitempty"`
}

// NodeScore is one node as ResourceAware saw it.
type NodeScore struct {
	ID       string  `json:"id" msgpack:"id"`
	Score    float64 `json:"score" msgpack:"score"`
	Eligible bool    `json:"eligible" msgpack:"eligible"`
	Reason   string  `json:"reason,omitempty" msgpack:"reason,omitempty"` // why excluded, e.g. "recovering: cpu 87.0% > 85.0%"
	Note     string  `json:"note,omitempty" msgpack:"note,omitempty"`     // e.g. "slow start: 40% of its share"
}

// ErrMalformed is in the error of a report that is not a health report
// at all: undecodable, or missing a required field.
var ErrMalformed = errors.New("malformed body")

// MaxLatency bounds a report's avg_latency_ms (24 hours).
const MaxLatency = 24 * time.Hour

// Health is one health report of a node.
type Health struct {
	CPUUsage          float64       // percent, 0–100
	MemoryUsage       float64       // percent, 0–100
	ActiveConnections int64         // >= 0
	AvgLatency        time.Duration // >= 0, at most MaxLatency; on the wire in ms
	Weight            float64       // 0 means 1; else (0, 1000]
	Status            string        // "" (up), StatusUp, StatusDraining or StatusLeaving
	Seq               uint64        // sender's counter; 0 means none
	Pools             []string      // pools the node serves; nil means [DefaultPool]
	// Interval is how often the node reports (wire interval_ms, whole
	// milliseconds); 0 means not said, else MinInterval to MaxInterval. It
	// lets a router notice a missed report.
	Interval time.Duration
	// Probe says the node answers probes on ProbeSubject(node) (wire probe).
	Probe bool
}

// The range of a report's interval_ms.
const (
	MinInterval = 100 * time.Millisecond
	MaxInterval = time.Hour
)

// healthWire is Health as it travels; pointers tell missing from zero.
type healthWire struct {
	Node              *string  `json:"node,omitempty" msgpack:"node,omitempty"`
	CPUUsage          *float64 `json:"cpu_usage" msgpack:"cpu_usage"`
	MemoryUsage       *float64 `json:"memory_usage" msgpack:"memory_usage"`
	ActiveConnections *int64   `json:"active_connections" msgpack:"active_connections"`
	AvgLatencyMS      *float64 `json:"avg_latency_ms" msgpack:"avg_latency_ms"`
	Weight            *float64 `json:"weight,omitempty" msgpack:"weight,omitempty"`
	Status            string   `json:"status,omitempty" msgpack:"status,omitempty"`
	Seq               uint64   `json:"seq,omitempty" msgpack:"seq,omitempty"`
	Pools             []string `json:"pools,omitempty" msgpack:"pools,omitempty"`
	IntervalMS        *int64   `json:"interval_ms,omitempty" msgpack:"interval_ms,omitempty"`
	Probe             bool     `json:"probe,omitempty" msgpack:"probe,omitempty"`
}

// Report converts to the form ResourceAware takes (status leaving maps to up).
func (h Health) Report() resourceaware.Report {
	st := h.Status
	if st == StatusLeaving {
		st = ""
	}
	return resourceaware.Report{
		CPUUsage: h.CPUUsage, MemoryUsage: h.MemoryUsage,
		ActiveConnections: h.ActiveConnections, AvgLatency: h.AvgLatency,
		Weight: h.Weight, Status: st,
	}
}

// Validate returns an error wrapping ErrInvalidReport for out-of-range,
// NaN or infinite values and unknown statuses.
func (h Health) Validate() error {
	if h.AvgLatency > MaxLatency {
		return fmt.Errorf("%w: avg_latency_ms %v is above %v", ErrInvalidReport, h.AvgLatency.Milliseconds(), MaxLatency.Milliseconds())
	}
	if err := h.Report().Validate(); err != nil {
		msg := strings.TrimPrefix(err.Error(), resourceaware.ErrInvalidReport.Error()+": ")
		return fmt.Errorf("%w: %s", ErrInvalidReport, msg)
	}
	if h.Status != "" && h.Status != StatusUp && h.Status != StatusDraining && h.Status != StatusLeaving {
		return fmt.Errorf("%w: status %q is not up, draining or leaving", ErrInvalidReport, h.Status)
	}
	if h.Interval != 0 && (h.Interval < MinInterval || h.Interval > MaxInterval || h.Interval%time.Millisecond != 0) {
		return fmt.Errorf("%w: interval_ms %v is not a whole number in [%d, %d]", ErrInvalidReport, float64(h.Interval)/float64(time.Millisecond), MinInterval.Milliseconds(), MaxInterval.Milliseconds())
	}
	if h.Pools != nil {
		if err := validatePools(h.Pools); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidReport, err)
		}
	}
	return nil
}

// EncodeHealth encodes a report (with node id) in enc, validating it first.
func EncodeHealth(node string, h Health, enc Encoding) ([]byte, error) {
	if err := ValidateNodeID(node); err != nil {
		return nil, err
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	ms := float64(h.AvgLatency) / float64(time.Millisecond)
	w := healthWire{
		Node: &node, CPUUsage: &h.CPUUsage, MemoryUsage: &h.MemoryUsage,
		ActiveConnections: &h.ActiveConnections, AvgLatencyMS: &ms,
		Status: h.Status, Seq: h.Seq, Pools: h.Pools, Probe: h.Probe,
	}
	if h.Weight != 0 {
		w.Weight = &h.Weight
	}
	if h.Interval != 0 {
		iv := h.Interval.Milliseconds()
		w.IntervalMS = &iv
	}
	return enc.Marshal(&w)
}

// DecodeHealth decodes and validates a report received on health.<node>.
// Every error wraps ErrInvalidReport or ErrInvalidNodeID.
func DecodeHealth(node string, data []byte, h nats.Header) (Health, error) {
	if err := ValidateNodeID(node); err != nil {
		return Health{}, err
	}
	var w healthWire
	if err := DetectEncoding(data, h).unmarshalHealth(data, &w); err != nil {
		return Health{}, fmt.Errorf("%w: %w: %w", ErrInvalidReport, ErrMalformed, err)
	}
	if w.Node != nil && *w.Node != node {
		return Health{}, fmt.Errorf("%w: body names node %q but the subject names %q", ErrInvalidReport, text.Clip(*w.Node), node)
	}
	var missing []string
	if w.CPUUsage == nil {
		missing = append(missing, "cpu_usage")
	}
	if w.MemoryUsage == nil {
		missing = append(missing, "memory_usage")
	}
	if w.ActiveConnections == nil {
		missing = append(missing, "active_connections")
	}
	if w.AvgLatencyMS == nil {
		missing = append(missing, "avg_latency_ms")
	}
	if len(missing) > 0 {
		return Health{}, fmt.Errorf("%w: %w: missing %s", ErrInvalidReport, ErrMalformed, strings.Join(missing, ", "))
	}
	ms := *w.AvgLatencyMS
	if !(ms >= 0 && ms <= float64(MaxLatency/time.Millisecond)) {
		return Health{}, fmt.Errorf("%w: avg_latency_ms %v is not in [0, %d]", ErrInvalidReport, ms, MaxLatency/time.Millisecond)
	}
	out := Health{
		CPUUsage: *w.CPUUsage, MemoryUsage: *w.MemoryUsage,
		ActiveConnections: *w.ActiveConnections,
		AvgLatency:        time.Duration(math.Round(ms * float64(time.Millisecond))),
		Status:            w.Status, Seq: w.Seq, Pools: w.Pools,
		Probe: w.Probe,
	}
	if w.IntervalMS != nil {
		iv := *w.IntervalMS
		if iv < MinInterval.Milliseconds() || iv > MaxInterval.Milliseconds() {
			return Health{}, fmt.Errorf("%w: interval_ms %d is not in [%d, %d]", ErrInvalidReport, iv, MinInterval.Milliseconds(), MaxInterval.Milliseconds())
		}
		out.Interval = time.Duration(iv) * time.Millisecond
	}
	if w.Weight != nil {
		if *w.Weight == 0 {
			return Health{}, fmt.Errorf("%w: weight 0; omit it for the default 1", ErrInvalidReport)
		}
		out.Weight = *w.Weight
	}
	return out, out.Validate()
}
