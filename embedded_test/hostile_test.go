package embedded_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/vmihailenco/msgpack/v5"
)

func mp(v any) []byte {
	b, err := msgpack.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func nested(depth int) any {
	var v any = "x"
	for range depth {
		v = []any{v}
	}
	return v
}

// TestHostileInput sends malformed and hostile requests and reports. Each
// request gets a 400 saying what is wrong (or a correct answer where the
// input is allowed); each report is rejected and counted by reason (or
// never reaches the router, where NATS itself refuses the subject); and
// after every case the router still answers a valid request correctly.
func TestHostileInput(t *testing.T) {
	// 8 MiB payloads, so that the 1 MiB key and the 100,000 candidates
	// reach the router and its own limits answer them.
	s := runServer(t, func(o *server.Options) { o.MaxPayload = 8 << 20 })
	nc := connect(t, s.ClientURL())
	r := startRouter(t, connect(t, s.ClientURL()), testConfig(t))
	for _, id := range []string{"a", "b", "c"} {
		health(t, nc, id, okHealth)
	}
	waitFor(t, 5*time.Second, "a,b,c", func() bool { return members(r) == "a,b,c" })
	local, _ := localRing(t, nc)
	wantOwner, _ := local.Get("user-42")
	valid := func(t *testing.T) {
		t.Helper()
		if got := jsonReply(t, nc, `{"key":"user-42"}`); got.Node != wantOwner {
			t.Fatalf("after the case, user-42 -> %q, want %q", got.Node, wantOwner)
		}
	}

	validMP := mp(&bus.Request{Key: "user-42", Count: 2})
	many := make([]string, 100_000)
	for i := range many {
		many[i] = fmt.Sprintf("n%d", i)
	}
	batch := make([]string, 1001)
	for i := range batch {
		batch[i] = "k"
	}
	requests := []struct {
		name string
		body []byte
		hdr  nats.Header
		says string // "" means the request is allowed and must be answered
	}{
		{"truncated msgpack", validMP[:len(validMP)-3], nil, "invalid msgpack"},
		{"garbage msgpack", []byte{0xc1, 0xff, 0x00, 0x13}, nil, "invalid msgpack"},
		{"msgpack: key is an int", mp(map[string]any{"key": 42}), nil, "invalid msgpack"},
		{"msgpack: count is NaN", mp(map[string]any{"key": "a", "count": math.NaN()}), nil, "invalid msgpack"},
		{"msgpack: count is 2^63", mp(map[string]any{"key": "a", "count": uint64(1 << 63)}), nil, "out of range"},
		{"msgpack: trailing bytes", append(mp(&bus.Request{Key: "a"}), 0x01), nil, "trailing"},
		{"msgpack: nested 100 deep", mp(map[string]any{"key": "a", "x": nested(100)}), nil, "nested deeper"},
		{"json: count is a string", []byte(`{"key":"a","count":"3"}`), nil, "invalid JSON"},
		{"json: count 1e30", []byte(`{"key":"a","count":1e30}`), nil, "invalid JSON"},
		{"json: trailing bytes", []byte(`{"key":"a"} x`), nil, "invalid JSON"},
		{"json: two objects", []byte(`{"key":"a"}{"key":"b"}`), nil, "invalid JSON"},
		{"json: nested 100 deep", []byte(`{"key":"a","x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`), nil, "nested deeper"},
		{"json: strategy is a number", []byte(`{"strategy":7}`), nil, "invalid JSON"},
		{"json: a string, by header", []byte(`"key"`), nats.Header{"Content-Type": {"application/json"}}, "invalid JSON"},
		{"empty body", nil, nil, "empty body"},
		{"1 MiB key", []byte(`{"key":"` + strings.Repeat("k", 1<<20) + `"}`), nil, "the limit is 1024"},
		{"100,000 candidates", mustJSON(map[string]any{"key": "a", "candidates": many}), nil, "100000 candidates; the limit is 1000"},
		{"count 0 means 1", []byte(`{"key":"user-42","count":0}`), nil, ""},
		{"count -1", []byte(`{"key":"a","count":-1}`), nil, "count -1 is out of range"},
		{"count 10^9", []byte(`{"key":"a","count":1000000000}`), nil, "count 1000000000 is out of range"},
		{"unknown strategy", []byte(`{"strategy":"Random","key":"a"}`), nil, `unknown strategy "Random"`},
		{"candidate with a dot", []byte(`{"key":"a","candidates":["a.b"]}`), nil, "candidates[0]"},
		{"candidate wildcard", []byte(`{"key":"a","candidates":["*"]}`), nil, "candidates[0]"},
		{"candidate with a space", []byte(`{"key":"a","candidates":["a","b c"]}`), nil, "candidates[1]"},
		{"candidate not ASCII", []byte(`{"key":"a","candidates":["nöde"]}`), nil, "candidates[0]"},
		{"candidate too long", []byte(`{"key":"a","candidates":["` + strings.Repeat("x", 65) + `"]}`), nil, "1 to 64"},
		{"1,001 keys", mustJSON(map[string]any{"keys": batch}), nil, "batch limit is 1000"},
		{"an empty key in a batch", []byte(`{"keys":["a",""]}`), nil, "keys[1]"},
		{"key and keys", []byte(`{"key":"a","keys":["b"]}`), nil, "not both"},
		{"ConsistentHash without a key", []byte(`{"strategy":"ConsistentHash"}`), nil, "needs a key"},
		{"a batch with ResourceAware", []byte(`{"strategy":"ResourceAware","keys":["a"]}`), nil, "needs strategy ConsistentHash"},
		{"unknown fields are ignored", []byte(`{"key":"user-42","tier":"gpu","future":{"x":1}}`), nil, ""},
		{"spread -1", []byte(`{"key":"a","spread":-1}`), nil, "spread -1 is out of range"},
		{"spread over max_count", []byte(`{"key":"a","spread":33}`), nil, "spread 33 is out of range: want 1 to 32"},
		{"spread is a string", []byte(`{"key":"a","spread":"2"}`), nil, "invalid JSON"},
		{"msgpack: spread is a float", mp(map[string]any{"key": "a", "spread": 2.5}), nil, "invalid msgpack"},
		{"spread with count", []byte(`{"key":"a","spread":2,"count":2}`), nil, "does not go with count > 1"},
		{"spread with keys", []byte(`{"keys":["a"],"spread":2}`), nil, "does not go with keys"},
		{"spread with ResourceAware", []byte(`{"strategy":"ResourceAware","key":"a","spread":2}`), nil, "spread needs ConsistentHash"},
		{"spread 0 means 1", []byte(`{"key":"user-42","spread":0}`), nil, ""},
		{"spread 1 is plain", []byte(`{"key":"user-42","spread":1}`), nil, ""},
	}
	for _, c := range requests {
		t.Run("request/"+c.name, func(t *testing.T) {
			m := req(t, nc, bus.SubjectRequest, c.body, c.hdr)
			code, msg := errorReply(t, m)
			if c.says == "" {
				if code != "" {
					t.Fatalf("error %s %s, want an answer", code, msg)
				}
			} else if code != "400" || !strings.Contains(msg, c.says) {
				t.Fatalf("code %q message %q; want 400 saying %q", code, clip(msg), c.says)
			}
			valid(t)
		})
	}

	healthMP := func(v map[string]any) []byte { return mp(v) }
	base := func(over map[string]any) map[string]any {
		m := map[string]any{"cpu_usage": 10, "memory_usage": 20, "active_connections": 5, "avg_latency_ms": 3}
		for k, v := range over {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	goodMP := healthMP(base(nil))
	reports := []struct {
		name, subject string
		body          []byte
		reason        string // the rejection counted; "" means NATS never delivers it
	}{
		{"truncated msgpack", "health.d", goodMP[:len(goodMP)-2], "malformed"},
		{"garbage", "health.d", []byte{0xde, 0xad, 0xbe, 0xef}, "malformed"},
		{"cpu is a string", "health.d", healthMP(base(map[string]any{"cpu_usage": "hot"})), "malformed"},
		{"missing memory_usage", "health.d", healthMP(base(map[string]any{"memory_usage": nil})), "malformed"},
		{"json trailing bytes", "health.d", []byte(`{"cpu_usage":1,"memory_usage":1,"active_connections":1,"avg_latency_ms":1} {}`), "malformed"},
		{"nested 100 deep", "health.d", healthMP(base(map[string]any{"x": nested(100)})), "malformed"},
		{"connections 1e30 in JSON", "health.d", []byte(`{"cpu_usage":1,"memory_usage":1,"active_connections":1e30,"avg_latency_ms":1}`), "malformed"},
		{"cpu NaN", "health.d", healthMP(base(map[string]any{"cpu_usage": math.NaN()})), "invalid_value"},
		{"memory +Inf", "health.d", healthMP(base(map[string]any{"memory_usage": math.Inf(1)})), "invalid_value"},
		{"cpu -Inf", "health.d", healthMP(base(map[string]any{"cpu_usage": math.Inf(-1)})), "invalid_value"},
		{"cpu 100.5", "health.d", healthMP(base(map[string]any{"cpu_usage": 100.5})), "invalid_value"},
		{"negative connections", "health.d", healthMP(base(map[string]any{"active_connections": -1})), "invalid_value"},
		{"latency 1e300 ms", "health.d", healthMP(base(map[string]any{"avg_latency_ms": 1e300})), "invalid_value"},
		{"weight 0", "health.d", healthMP(base(map[string]any{"weight": 0})), "invalid_value"},
		{"weight 1e9", "health.d", healthMP(base(map[string]any{"weight": 1e9})), "invalid_value"},
		{"unknown status", "health.d", healthMP(base(map[string]any{"status": "gone"})), "invalid_value"},
		{"body names another node", "health.d", healthMP(base(map[string]any{"node": "a"})), "invalid_value"},
		{"id not ASCII", "health.nöde", goodMP, "invalid_id"},
		{"id too long", "health." + strings.Repeat("x", 65), goodMP, "invalid_id"},
		{"id with a dot (two tokens: not on health.*)", "health.a.b", goodMP, ""},
		{"wildcard * (delivered literally)", "health.*", goodMP, "invalid_id"},
		{"wildcard > (delivered literally)", "health.>", goodMP, "invalid_id"},
	}
	for _, c := range reports {
		t.Run("report/"+c.name, func(t *testing.T) {
			before := r.Stats()
			if err := nc.Publish(c.subject, c.body); err != nil {
				t.Fatal(err)
			}
			// A valid report after it on the same connection: once that is
			// counted, the hostile one has been handled (NATS keeps order).
			health(t, nc, "a", okHealth)
			waitFor(t, 5*time.Second, "the sentinel report", func() bool { return r.Stats().ReportsAccepted > before.ReportsAccepted })
			after := r.Stats()
			for reason, n := range after.ReportsRejected {
				want := before.ReportsRejected[reason]
				if reason == c.reason {
					want++
				}
				if n != want {
					t.Errorf("rejected[%s] = %d, want %d", reason, n, want)
				}
			}
			if members(r) != "a,b,c" {
				t.Fatalf("members changed to %s", members(r))
			}
			valid(t)
		})
	}

	// nats.go refuses a subject with a space before it is sent.
	if err := nc.Publish("health.a b", goodMP); err == nil {
		t.Fatal(`publishing to "health.a b" succeeded`)
	}
	// A stale seq is refused.
	h := okHealth
	h.Seq = 100
	health(t, nc, "b", h)
	h.Seq = 50
	health(t, nc, "b", h)
	waitFor(t, 5*time.Second, "a stale seq to be refused", func() bool { return r.Stats().ReportsRejected["stale_seq"] == 1 })
	if members(r) != "a,b,c" || !nc.IsConnected() {
		t.Fatalf("after everything: members %s, connected %v", members(r), nc.IsConnected())
	}
	valid(t)
	t.Logf("%d request cases, %d report cases, 1 refused subject, 1 stale seq", len(requests), len(reports))
}

func mustJSON(v any) []byte {
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(v); err != nil {
		panic(err)
	}
	return bytes.TrimSpace(b.Bytes())
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
