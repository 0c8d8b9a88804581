package bus

import (
	"encoding/json"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// Scores travel rounded to 4 decimals, as shed fractions do in the ring
// document. A score is a product of float terms (health × weight × slow
// start), so its exact value reads as noise (0.8492999999999999) in explain
// and route.nodes, and no decision on the wire needs more than 4 decimals.
// The rounding is done by the encoders of the types that carry scores, so
// every reply, /status and the CLI's JSON show the same value; in-process
// callers (Router.Nodes) keep the exact one.

// scoreDecimals is how many decimals of a score go on the wire.
const scoreDecimals = 4

// roundScore rounds v to scoreDecimals decimals. NaN and infinities stay as
// they are, and so does a value too large to have a fraction left.
func roundScore(v float64) float64 {
	const scale = 1e4 // 10^scoreDecimals
	if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) >= 1<<52/scale {
		return v
	}
	return math.Round(v*scale) / scale
}

// nodeScoreWire is NodeScore without its encoders.
type nodeScoreWire NodeScore

// MarshalJSON encodes s with its score rounded to 4 decimals.
func (s NodeScore) MarshalJSON() ([]byte, error) {
	w := nodeScoreWire(s)
	w.Score = roundScore(w.Score)
	return json.Marshal(&w)
}

// EncodeMsgpack encodes s with its score rounded to 4 decimals.
func (s NodeScore) EncodeMsgpack(e *msgpack.Encoder) error {
	w := nodeScoreWire(s)
	w.Score = roundScore(w.Score)
	return e.Encode(&w)
}

// nodeStatusWire is NodeStatus without its encoders.
type nodeStatusWire NodeStatus

func (s NodeStatus) rounded() *nodeStatusWire {
	w := nodeStatusWire(s)
	w.Score = roundScore(w.Score)
	if w.SlowStart > 0 { // present while ramping: never rounded away
		w.SlowStart = max(roundScore(w.SlowStart), 1e-4)
	}
	return &w
}

// MarshalJSON encodes s with its score and slow-start share rounded to 4
// decimals.
func (s NodeStatus) MarshalJSON() ([]byte, error) { return json.Marshal(s.rounded()) }

// EncodeMsgpack encodes s with its score and slow-start share rounded to 4
// decimals.
func (s NodeStatus) EncodeMsgpack(e *msgpack.Encoder) error { return e.Encode(s.rounded()) }
