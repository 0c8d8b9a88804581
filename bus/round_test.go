package bus

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestRoundScore(t *testing.T) {
	for _, c := range []struct{ in, want float64 }{
		{0.8492999999999999, 0.8493}, {0.30000000000000004, 0.3}, {1.23456, 1.2346}, {2.5, 2.5},
		{0, 0}, {-0.00004, 0}, {0.00005, 0.0001}, {999.99999, 1000}, {1e300, 1e300},
	} {
		if got := roundScore(c.in); got != c.want {
			t.Errorf("roundScore(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if got := roundScore(v); !(got == v || math.IsNaN(v) && math.IsNaN(got)) {
			t.Errorf("roundScore(%v) = %v", v, got)
		}
	}
}

// TestScoresRoundedOnTheWire: explain's and route.nodes' scores are
// written with at most 4 decimals in both encodings; the rest of each value
// is untouched.
func TestScoresRoundedOnTheWire(t *testing.T) {
	noisy := 0.8492999999999999
	reply := Reply{Strategy: StrategyResourceAware, Node: "a", Explanation: &Explanation{Nodes: []NodeScore{
		{ID: "a", Score: noisy, Eligible: true, Note: "slow start: 40% of its share"},
		{ID: "b", Score: 0.1 + 0.2, Reason: "cpu"},
	}}}
	nodes := NodesState{Revision: 3, Total: 2, Nodes: []NodeStatus{
		{ID: "a", Member: true, Status: StatusUp, Weight: 2, Score: 2 * noisy, Eligible: true, CPUUsage: 12.345678, SlowStart: 0.1 + 0.2},
		{ID: "b", Score: 0.1 + 0.2, SlowStart: 0.000001},
	}}
	for _, enc := range []Encoding{JSON, Msgpack} {
		t.Run(enc.String(), func(t *testing.T) {
			data, err := enc.AppendReply(nil, &reply)
			if err != nil {
				t.Fatal(err)
			}
			var r Reply
			if err := enc.Unmarshal(data, &r); err != nil {
				t.Fatal(err)
			}
			if e := r.Explanation; e == nil || len(e.Nodes) != 2 || e.Nodes[0].Score != 0.8493 || e.Nodes[1].Score != 0.3 || e.Nodes[0].Note != reply.Explanation.Nodes[0].Note || e.Nodes[1].Reason != "cpu" {
				t.Fatalf("explain: %+v", r.Explanation)
			}
			if enc == JSON && !bytes.Contains(data, []byte(`"score":0.8493,`)) {
				t.Fatalf("JSON explain: %s", data)
			}
			data, err = enc.Marshal(&nodes)
			if err != nil {
				t.Fatal(err)
			}
			var st NodesState
			if err := enc.Unmarshal(data, &st); err != nil {
				t.Fatal(err)
			}
			a, b := st.Nodes[0], st.Nodes[1]
			if a.Score != 1.6986 || a.SlowStart != 0.3 || a.CPUUsage != 12.345678 || a.Weight != 2 || !a.Member || b.Score != 0.3 || b.SlowStart != 0.0001 || st.Total != 2 {
				t.Fatalf("route.nodes: %+v", st)
			}
			if enc == JSON && strings.Contains(string(data), "0000000") {
				t.Fatalf("JSON route.nodes: %s", data)
			}
		})
	}
	// Encoding a decoded reply again (the CLI's --json) changes nothing.
	data, _ := json.Marshal(reply)
	var r Reply
	_ = json.Unmarshal(data, &r)
	if again, _ := json.Marshal(r); !bytes.Equal(again, data) {
		t.Fatalf("re-encoded: %s, want %s", again, data)
	}
}
