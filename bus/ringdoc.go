package bus

import (
	"cmp"
	"encoding/json"
	"fmt"
	"github.com/natsroute/natsroute/bus/internal/text"
	"math"
	"slices"

	"github.com/natsroute/natsroute/ring"
)

// Ring document constants (see subjects.md, "The ring document").
const (
	DocumentFormat     = 1          // a document in which no member sheds
	DocumentFormatShed = 2          // a document in which some member sheds (load-aware)
	DocumentHash       = "xxhash64" // the only hash this version knows
)

// RingDocument is the ring membership as published in the KV bucket.
type RingDocument struct {
	Format int        `json:"format" msgpack:"format"`
	Hash   string     `json:"hash" msgpack:"hash"`
	VNodes int        `json:"vnodes" msgpack:"vnodes"`
	Nodes  []RingNode `json:"nodes" msgpack:"nodes"`
}

// RingNode is one member of the ring document.
type RingNode struct {
	ID     string  `json:"id" msgpack:"id"`
	Weight float64 `json:"weight" msgpack:"weight"`
	Status string  `json:"status,omitempty" msgpack:"status,omitempty"` // "draining", or empty
	// Shed is the fraction of its keys the member hands to the next members
	// (format 2): in (0, 1] with at most 4 decimals, or 0 (absent).
	Shed float64 `json:"shed,omitempty" msgpack:"shed,omitempty"`
}

// NewRingDocument returns an empty document for vnodes points per unit weight.
func NewRingDocument(vnodes int) RingDocument {
	return RingDocument{Format: DocumentFormat, Hash: DocumentHash, VNodes: vnodes, Nodes: []RingNode{}}
}

// DecodeRingDocument decodes and validates a ring document. A document of
// an unknown format or hash is refused: routing on a ring built differently
// from the router's would send keys to the wrong nodes.
func DecodeRingDocument(data []byte) (RingDocument, error) {
	var w struct {
		RingDocument
		Nodes []struct {
			RingNode
			Shed *wireShed `json:"shed"`
		} `json:"nodes"`
	}
	if err := JSON.Unmarshal(data, &w); err != nil {
		return RingDocument{}, fmt.Errorf("%w: %w", ErrInvalidDocument, err)
	}
	d := w.RingDocument
	if w.Nodes != nil {
		d.Nodes = make([]RingNode, len(w.Nodes))
	}
	for i, n := range w.Nodes {
		d.Nodes[i] = n.RingNode
		if n.Shed != nil {
			// A shed field is a fraction in (0, 1]; "shed": 0 is refused
			// (a member that does not shed has no field).
			if !(n.Shed.v > 0 && n.Shed.v <= 1) {
				return RingDocument{}, fmt.Errorf("%w: node %q has shed %s, want a number in (0, 1] (a member that does not shed has no shed field)", ErrInvalidDocument, text.Clip(n.ID), n.Shed.raw)
			}
			d.Nodes[i].Shed = n.Shed.v
		}
	}
	return d, d.Validate()
}

// wireShed is a shed field as it was written: null and non-numbers are
// errors, and 0 stays distinguishable from an absent field.
type wireShed struct {
	v   float64
	raw string
}

func (s *wireShed) UnmarshalJSON(b []byte) error {
	s.raw = string(b)
	if string(b) == "null" {
		s.v = math.NaN()
		return nil
	}
	return json.Unmarshal(b, &s.v)
}

// Validate checks the format, hash, vnodes and every node. Format 1 has no
// shedding member; format 2 has at least one.
func (d RingDocument) Validate() error {
	if d.Format != DocumentFormat && d.Format != DocumentFormatShed {
		return fmt.Errorf("%w: format %d is not supported (this version reads formats %d and %d)", ErrInvalidDocument, d.Format, DocumentFormat, DocumentFormatShed)
	}
	if d.Hash != DocumentHash {
		return fmt.Errorf("%w: hash %q is not supported (this version uses %q)", ErrInvalidDocument, d.Hash, DocumentHash)
	}
	if d.VNodes < 1 || d.VNodes > ring.MaxVirtualNodes {
		return fmt.Errorf("%w: vnodes %d is not in [1, %d]", ErrInvalidDocument, d.VNodes, ring.MaxVirtualNodes)
	}
	for i, n := range d.Nodes {
		if err := ValidateNodeID(n.ID); err != nil {
			return fmt.Errorf("%w: node %d: %w", ErrInvalidDocument, i, err)
		}
		if math.IsNaN(n.Weight) || n.Weight <= 0 || n.Weight > ring.MaxWeight {
			return fmt.Errorf("%w: node %q has weight %v, want (0, %v]", ErrInvalidDocument, n.ID, n.Weight, ring.MaxWeight)
		}
		if n.Status != "" && n.Status != StatusDraining {
			return fmt.Errorf("%w: node %q has status %q (only %q is stored)", ErrInvalidDocument, n.ID, n.Status, StatusDraining)
		}
		if i > 0 && d.Nodes[i-1].ID >= n.ID {
			return fmt.Errorf("%w: nodes are not sorted by id with no duplicates at %q", ErrInvalidDocument, n.ID)
		}
		if n.Shed != 0 && !(n.Shed > 0 && n.Shed <= 1) { // NaN fails both
			return fmt.Errorf("%w: node %q has shed %v, want a fraction in (0, 1] (or no shed field)", ErrInvalidDocument, n.ID, n.Shed)
		}
	}
	switch shedding := d.Shedding(); {
	case d.Format == DocumentFormat && shedding:
		return fmt.Errorf("%w: format %d carries shed; a document with shed is format %d", ErrInvalidDocument, DocumentFormat, DocumentFormatShed)
	case d.Format == DocumentFormatShed && !shedding:
		return fmt.Errorf("%w: format %d without any shed; a document with no shed is format %d", ErrInvalidDocument, DocumentFormatShed, DocumentFormat)
	}
	return nil
}

// Shedding reports whether any member sheds.
func (d RingDocument) Shedding() bool {
	return slices.ContainsFunc(d.Nodes, func(n RingNode) bool { return n.Shed != 0 })
}

// WithFormat returns d with the format its members call for.
func (d RingDocument) WithFormat() RingDocument {
	d.Format = DocumentFormat
	if d.Shedding() {
		d.Format = DocumentFormatShed
	}
	return d
}

// QuantizeShed rounds a shed fraction to the 4 decimals a document carries,
// within [0, 1].
func QuantizeShed(f float64) float64 {
	if !(f > 0) {
		return 0
	}
	return math.Round(min(f, 1)*1e4) / 1e4
}

// Encode returns the document as JSON, nodes sorted by id.
func (d RingDocument) Encode() ([]byte, error) {
	d.Nodes = slices.Clone(d.Nodes)
	slices.SortFunc(d.Nodes, func(a, b RingNode) int { return cmp.Compare(a.ID, b.ID) })
	if d.Nodes == nil {
		d.Nodes = []RingNode{}
	}
	return json.Marshal(d)
}

// Members returns the ring members the document describes.
func (d RingDocument) Members() []ring.Member {
	ms := make([]ring.Member, len(d.Nodes))
	for i, n := range d.Nodes {
		ms[i] = ring.Member{ID: n.ID, Weight: n.Weight, Draining: n.Status == StatusDraining, Shed: n.Shed}
	}
	return ms
}

// Ring builds the ring the document describes.
func (d RingDocument) Ring() (*ring.Ring, error) {
	return ring.New(ring.Config{VirtualNodes: d.VNodes}, d.Members()...)
}

// Node returns the document's entry for id.
func (d RingDocument) Node(id string) (RingNode, bool) {
	i, ok := slices.BinarySearchFunc(d.Nodes, id, func(n RingNode, id string) int { return cmp.Compare(n.ID, id) })
	if !ok {
		return RingNode{}, false
	}
	return d.Nodes[i], true
}

// Equal reports whether two documents describe the same ring.
func (d RingDocument) Equal(o RingDocument) bool {
	return d.Format == o.Format && d.Hash == o.Hash && d.VNodes == o.VNodes && slices.Equal(d.Nodes, o.Nodes)
}
