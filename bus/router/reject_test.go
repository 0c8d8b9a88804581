package router

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/natsroute/natsroute/bus"
	"github.com/vmihailenco/msgpack/v5"
)

// TestDecodeHealthRejects: every invalid report is refused with the reason
// it is counted under.
func TestDecodeHealthRejects(t *testing.T) {
	nan, _ := msgpack.Marshal(map[string]any{"cpu_usage": math.NaN(), "memory_usage": 1, "active_connections": 1, "avg_latency_ms": 1})
	inf, _ := msgpack.Marshal(map[string]any{"cpu_usage": 1, "memory_usage": math.Inf(1), "active_connections": 1, "avg_latency_ms": 1})
	for _, c := range []struct {
		node, body string
		reason     rejection
		says       string
	}{
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":1}`, rejectMalformed, "missing avg_latency_ms"},
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":1,"avg_latency_ms":1} x`, rejectMalformed, "invalid JSON"},
		{"a", `{"cpu_usage":"high","memory_usage":1,"active_connections":1,"avg_latency_ms":1}`, rejectMalformed, "invalid JSON"},
		{"a", `{"cpu_usage":101,"memory_usage":1,"active_connections":1,"avg_latency_ms":1}`, rejectInvalidValue, "cpu_usage 101"},
		{"a", `{"cpu_usage":1,"memory_usage":-1,"active_connections":1,"avg_latency_ms":1}`, rejectInvalidValue, "memory_usage -1"},
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":-5,"avg_latency_ms":1}`, rejectInvalidValue, "active_connections -5"},
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":1e30,"avg_latency_ms":1}`, rejectMalformed, "invalid JSON"},
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":1,"avg_latency_ms":1e300}`, rejectInvalidValue, "avg_latency_ms"},
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":1,"avg_latency_ms":1,"weight":0}`, rejectInvalidValue, "weight 0"},
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":1,"avg_latency_ms":1,"weight":5000}`, rejectInvalidValue, "weight 5000"},
		{"a", `{"cpu_usage":1,"memory_usage":1,"active_connections":1,"avg_latency_ms":1,"status":"gone"}`, rejectInvalidValue, "status"},
		{"a.b", `{}`, rejectInvalidID, "only [A-Za-z0-9_-]"},
		{"", `{}`, rejectInvalidID, "1 to 64"},
		{"a", string(nan), rejectInvalidValue, "NaN"},
		{"a", string(inf), rejectInvalidValue, "+Inf"},
		{"a", "", rejectMalformed, "empty body"},
		{"a", "\xde\xff", rejectMalformed, "truncated"},
	} {
		_, err := bus.DecodeHealth(c.node, []byte(c.body), nil)
		if !errors.Is(err, bus.ErrInvalidReport) && !errors.Is(err, bus.ErrInvalidNodeID) {
			t.Errorf("%q: %v, want an invalid report", c.body, err)
			continue
		}
		if got := rejectReason(err); got != c.reason || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q: reason %s, error %q; want %s mentioning %q", c.body, reasonNames[got], err, reasonNames[c.reason], c.says)
		}
	}
}
