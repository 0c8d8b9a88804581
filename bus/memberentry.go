package bus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/natsroute/natsroute/bus/internal/text"
	"github.com/natsroute/natsroute/ring"
	"github.com/vmihailenco/msgpack/v5"
)

// Ring publication, one key per member (format 3; subjects.md, "Ring
// publication, one key per member (v3)"). A pool P uses this layout iff the
// key PoolKeyV3(P) = "pools.P" holds a value; each member N of P is the key
// MemberKey(P, N) = "members.P.N", present while N is on P's ring.
const (
	PoolFormat        = 3          // the format of a pools.<pool> value
	PoolsKeyPrefix    = "pools."   // PoolKeyV3(pool) = PoolsKeyPrefix + pool
	MembersKeyPrefix  = "members." // MemberKey(pool, node) = MembersKeyPrefix + pool + "." + node
	maxEntryBody      = 1024       // a pool or member value is a few dozen bytes; anything larger is refused unread
	shedDecimalsScale = 1e4        // a shed has at most 4 digits after the decimal point
)

// PoolKeyV3 returns the KV key that makes pool a one-key-per-member (v3)
// pool: "pools.<pool>". The default pool is "pools.default" (unlike the
// format-1/2 key, which is "ring" for it).
func PoolKeyV3(pool string) string { return PoolsKeyPrefix + pool }

// MemberKey returns the KV key of node's entry in pool: "members.<pool>.<node>".
func MemberKey(pool, node string) string { return MembersKeyPrefix + pool + "." + node }

// MembersFilter returns the KV watch filter of every member key of pool:
// "members.<pool>.*".
func MembersFilter(pool string) string { return MembersKeyPrefix + pool + ".*" }

// ParsePoolKeyV3 returns the pool a "pools.<pool>" key names; false if key
// is not one or the pool name is invalid.
func ParsePoolKeyV3(key string) (string, bool) {
	p, ok := strings.CutPrefix(key, PoolsKeyPrefix)
	if !ok || ValidatePoolName(p) != nil {
		return "", false
	}
	return p, true
}

// ParseMemberKey returns the pool and node a "members.<pool>.<node>" key
// names; false if key is not one or either name is invalid (pool names and
// node ids have no dots, so the split is unambiguous).
func ParseMemberKey(key string) (pool, node string, ok bool) {
	rest, ok := strings.CutPrefix(key, MembersKeyPrefix)
	if !ok {
		return "", "", false
	}
	pool, node, ok = strings.Cut(rest, ".")
	if !ok || ValidatePoolName(pool) != nil || ValidateNodeID(node) != nil {
		return "", "", false
	}
	return pool, node, true
}

// PoolEntry is the value of "pools.<pool>": {"format":3,"hash":"xxhash64","vnodes":150}.
// Every field is required.
type PoolEntry struct {
	Format int    `json:"format" msgpack:"format"` // PoolFormat
	Hash   string `json:"hash" msgpack:"hash"`     // DocumentHash
	VNodes int    `json:"vnodes" msgpack:"vnodes"` // points per unit weight, 1 to ring.MaxVirtualNodes
}

// NewPoolEntry returns the pool entry for vnodes points per unit weight.
func NewPoolEntry(vnodes int) PoolEntry {
	return PoolEntry{Format: PoolFormat, Hash: DocumentHash, VNodes: vnodes}
}

// Validate refuses a format other than 3, a hash other than xxhash64 and
// vnodes out of range: a ring built differently from the writers' would
// send keys to the wrong nodes. Errors wrap ErrInvalidEntry.
func (p PoolEntry) Validate() error {
	if p.Format != PoolFormat {
		return fmt.Errorf("%w: pool format %d is not supported (this version reads format %d under %q keys)", ErrInvalidEntry, p.Format, PoolFormat, PoolsKeyPrefix+"<pool>")
	}
	if p.Hash != DocumentHash {
		return fmt.Errorf("%w: pool hash %q is not supported (this version uses %q)", ErrInvalidEntry, text.Clip(p.Hash), DocumentHash)
	}
	if p.VNodes < 1 || p.VNodes > ring.MaxVirtualNodes {
		return fmt.Errorf("%w: pool vnodes %d is not in [1, %d]", ErrInvalidEntry, p.VNodes, ring.MaxVirtualNodes)
	}
	return nil
}

// Encode validates p and encodes it in enc (routers write JSON).
func (p PoolEntry) Encode(enc Encoding) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return enc.Marshal(&p)
}

// MemberEntry is the value of "members.<pool>.<node>": {"weight":1}, plus
// "status":"draining" and "shed":f exactly as in a format-2 document entry.
// It has no id: the key names the member.
type MemberEntry struct {
	Weight float64 `json:"weight" msgpack:"weight"`                     // required, (0, ring.MaxWeight]
	Status string  `json:"status,omitempty" msgpack:"status,omitempty"` // StatusDraining, or empty
	// Shed is the fraction of its keys the member hands to the next
	// members: (0, 1] with at most 4 decimals, or 0 (no field).
	Shed float64 `json:"shed,omitempty" msgpack:"shed,omitempty"`
}

// Validate checks the weight, status and shed. Errors wrap ErrInvalidEntry.
func (m MemberEntry) Validate() error {
	if math.IsNaN(m.Weight) || m.Weight <= 0 || m.Weight > ring.MaxWeight {
		return fmt.Errorf("%w: member weight %v, want (0, %v]", ErrInvalidEntry, m.Weight, ring.MaxWeight)
	}
	if m.Status != "" && m.Status != StatusDraining {
		return fmt.Errorf("%w: member status %q (only %q is stored)", ErrInvalidEntry, text.Clip(m.Status), StatusDraining)
	}
	if m.Shed != 0 {
		if !(m.Shed > 0 && m.Shed <= 1) { // NaN fails
			return fmt.Errorf("%w: member shed %v, want a fraction in (0, 1] (or no shed field)", ErrInvalidEntry, m.Shed)
		}
		if math.Round(m.Shed*shedDecimalsScale)/shedDecimalsScale != m.Shed {
			return fmt.Errorf("%w: member shed %v has more than 4 decimals (see QuantizeShed)", ErrInvalidEntry, m.Shed)
		}
	}
	return nil
}

// Encode validates m and encodes it in enc (routers write JSON).
func (m MemberEntry) Encode(enc Encoding) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return enc.Marshal(&m)
}

// Node returns the format-1/2 document entry of member id.
func (m MemberEntry) Node(id string) RingNode {
	return RingNode{ID: id, Weight: m.Weight, Status: m.Status, Shed: m.Shed}
}

// Member returns the ring member id with this entry.
func (m MemberEntry) Member(id string) ring.Member {
	return ring.Member{ID: id, Weight: m.Weight, Draining: m.Status == StatusDraining, Shed: m.Shed}
}

// MemberEntryOf returns the member entry of a format-1/2 document entry
// (its id goes into the key).
func MemberEntryOf(n RingNode) MemberEntry {
	return MemberEntry{Weight: n.Weight, Status: n.Status, Shed: n.Shed}
}

// DecodePoolEntry decodes and validates a "pools.<pool>" value, JSON (first
// byte '{') or msgpack. Every field is required and must have its type (no
// null, no float for an integer); unknown fields are ignored, as in ring
// documents. Errors wrap ErrInvalidEntry.
func DecodePoolEntry(data []byte) (PoolEntry, error) {
	fs, err := decodeEntryFields(data, "pool")
	if err != nil {
		return PoolEntry{}, err
	}
	var p PoolEntry
	if p.Format, err = fs.int("format", true); err != nil {
		return PoolEntry{}, err
	}
	if p.Format != PoolFormat { // say so before complaining about other fields
		return PoolEntry{}, p.Validate()
	}
	if p.Hash, err = fs.string("hash", true); err != nil {
		return PoolEntry{}, err
	}
	if p.VNodes, err = fs.int("vnodes", true); err != nil {
		return PoolEntry{}, err
	}
	return p, p.Validate()
}

// DecodeMemberEntry decodes and validates a "members.<pool>.<node>" value,
// JSON (first byte '{') or msgpack: weight required; status and shed
// optional but, when present, a string and a number (null is refused, as
// is "shed": 0: a member that does not shed has no field). Unknown fields
// are ignored. Errors wrap ErrInvalidEntry.
func DecodeMemberEntry(data []byte) (MemberEntry, error) {
	fs, err := decodeEntryFields(data, "member")
	if err != nil {
		return MemberEntry{}, err
	}
	var m MemberEntry
	if m.Weight, err = fs.float("weight", true); err != nil {
		return MemberEntry{}, err
	}
	if m.Status, err = fs.string("status", false); err != nil {
		return MemberEntry{}, err
	}
	if _, ok := fs["status"]; ok && m.Status == "" {
		return MemberEntry{}, fmt.Errorf("%w: member status \"\" (omit the field for up)", ErrInvalidEntry)
	}
	if m.Shed, err = fs.float("shed", false); err != nil {
		return MemberEntry{}, err
	}
	if _, ok := fs["shed"]; ok && !(m.Shed > 0) {
		return MemberEntry{}, fmt.Errorf("%w: member shed %v, want a fraction in (0, 1] (a member that does not shed has no shed field)", ErrInvalidEntry, m.Shed)
	}
	return m, m.Validate()
}

// entryValue is one field of a pool or member value, as decoded from JSON
// or msgpack before its type is checked.
type entryValue struct {
	kind  entryKind
	i     int64 // kindInt
	f     float64
	s     string
	shown string // for error messages
}

type entryKind uint8

const (
	kindOther entryKind = iota // null, bool, container, bin...
	kindInt
	kindFloat
	kindString
)

type entryFields map[string]entryValue

// decodeEntryFields reads data as one JSON object or msgpack map of flat
// values, keeping the fields a pool or member entry knows.
func decodeEntryFields(data []byte, what string) (entryFields, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty %s value", ErrInvalidEntry, what)
	}
	if len(data) > maxEntryBody {
		return nil, fmt.Errorf("%w: %s value is %d bytes; at most %d", ErrInvalidEntry, what, len(data), maxEntryBody)
	}
	known := func(k string) bool {
		switch k {
		case "format", "hash", "vnodes", "weight", "status", "shed":
			return true
		}
		return false
	}
	fs := entryFields{}
	if DetectEncoding(data, nil) == JSON {
		var raw map[string]json.RawMessage
		if err := JSON.Unmarshal(data, &raw); err != nil {
			return nil, fmt.Errorf("%w: %s value: %w", ErrInvalidEntry, what, err)
		}
		if raw == nil {
			return nil, fmt.Errorf("%w: %s value is null, want an object", ErrInvalidEntry, what)
		}
		for k, r := range raw {
			if known(k) {
				fs[k] = jsonEntryValue(r)
			}
		}
		return fs, nil
	}
	if err := scanMsgpack(data); err != nil {
		return nil, fmt.Errorf("%w: %s value: invalid msgpack: %w", ErrInvalidEntry, what, err)
	}
	d := msgpack.NewDecoder(bytes.NewReader(data))
	n, err := d.DecodeMapLen()
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%w: %s value is not a msgpack map (nor a JSON object)", ErrInvalidEntry, what)
	}
	for range n {
		k, err := d.DecodeString()
		if err != nil {
			return nil, fmt.Errorf("%w: %s value: invalid msgpack key: %w", ErrInvalidEntry, what, err)
		}
		if !known(k) {
			if err := d.Skip(); err != nil {
				return nil, fmt.Errorf("%w: %s value: invalid msgpack: %w", ErrInvalidEntry, what, err)
			}
			continue
		}
		v, err := d.DecodeInterfaceLoose()
		if err != nil {
			return nil, fmt.Errorf("%w: %s value: invalid msgpack field %q: %w", ErrInvalidEntry, what, k, err)
		}
		fs[k] = msgpackEntryValue(v)
	}
	return fs, nil
}

func jsonEntryValue(r json.RawMessage) entryValue {
	v := entryValue{shown: text.Clip(string(r))}
	switch {
	case len(r) > 0 && r[0] == '"':
		if json.Unmarshal(r, &v.s) == nil {
			v.kind = kindString
		}
	case len(r) > 0 && (r[0] == '-' || '0' <= r[0] && r[0] <= '9'):
		if json.Unmarshal(r, &v.i) == nil {
			v.kind, v.f = kindInt, float64(v.i)
		} else if json.Unmarshal(r, &v.f) == nil {
			v.kind = kindFloat
		}
	}
	return v
}

func msgpackEntryValue(x any) entryValue {
	v := entryValue{shown: text.Clip(fmt.Sprintf("%v", x))}
	switch x := x.(type) {
	case int64:
		v.kind, v.i, v.f = kindInt, x, float64(x)
	case uint64:
		if x <= math.MaxInt64 {
			v.kind, v.i, v.f = kindInt, int64(x), float64(x)
		} else {
			v.kind, v.f = kindFloat, float64(x)
		}
	case float64:
		v.kind, v.f = kindFloat, x
	case string:
		v.kind, v.s = kindString, x
	case nil:
		v.shown = "null"
	}
	return v
}

func (fs entryFields) missing(name string, required bool) (entryValue, bool, error) {
	v, ok := fs[name]
	if !ok && required {
		return v, false, fmt.Errorf("%w: missing %s", ErrInvalidEntry, name)
	}
	return v, ok, nil
}

func (fs entryFields) int(name string, required bool) (int, error) {
	v, ok, err := fs.missing(name, required)
	if !ok {
		return 0, err
	}
	if v.kind != kindInt || v.i < math.MinInt32 || v.i > math.MaxInt32 {
		return 0, fmt.Errorf("%w: %s is %s, want an integer", ErrInvalidEntry, name, v.shown)
	}
	return int(v.i), nil
}

func (fs entryFields) float(name string, required bool) (float64, error) {
	v, ok, err := fs.missing(name, required)
	if !ok {
		return 0, err
	}
	if v.kind != kindInt && v.kind != kindFloat {
		return 0, fmt.Errorf("%w: %s is %s, want a number", ErrInvalidEntry, name, v.shown)
	}
	return v.f, nil
}

func (fs entryFields) string(name string, required bool) (string, error) {
	v, ok, err := fs.missing(name, required)
	if !ok {
		return "", err
	}
	if v.kind != kindString {
		return "", fmt.Errorf("%w: %s is %s, want a string", ErrInvalidEntry, name, v.shown)
	}
	return v.s, nil
}
