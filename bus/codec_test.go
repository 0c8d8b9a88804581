package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestScanMsgpack(t *testing.T) {
	values := []any{
		map[string]any{"key": "user-42", "count": 3, "candidates": []string{"a", "b"}, "explain": true},
		map[string]any{"f32": float32(1.5), "f64": math.Pi, "neg": -100000, "big": uint64(1 << 60), "nil": nil, "bin": []byte{1, 2, 3}},
		[]any{int8(-1), int16(-300), int32(-70000), int64(-1 << 40), uint8(200), uint16(60000), uint32(1 << 20), strings.Repeat("x", 300), strings.Repeat("y", 70000)},
		map[string]any{"nested": map[string]any{"a": []any{map[string]any{"b": []any{}}}}},
		time.Unix(1700000000, 5), // ext type
	}
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := scanMsgpack(b); err != nil {
			t.Fatalf("valid %T rejected: %v", v, err)
		}
		for i := range len(b) {
			if err := scanMsgpack(b[:i]); err == nil {
				t.Fatalf("%T truncated to %d of %d bytes accepted", v, i, len(b))
			}
		}
		if err := scanMsgpack(append(b, 0x01)); err == nil || !strings.Contains(err.Error(), "trailing") {
			t.Fatalf("trailing byte: %v", err)
		}
	}
	deep := bytes.Repeat([]byte{0x91}, maxDepth+1) // [[[...]]]
	deep = append(deep, 0x01)
	if err := scanMsgpack(deep); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Fatalf("deep nesting: %v", err)
	}
	if err := scanMsgpack(deep[1:]); err != nil {
		t.Fatalf("%d levels rejected: %v", maxDepth, err)
	}
	if err := scanMsgpack([]byte{0xc1}); err == nil {
		t.Fatal("0xc1 accepted")
	}
	if err := scanMsgpack([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}); err == nil {
		t.Fatal("array of 2^32-1 elements in 5 bytes accepted")
	}
}

func TestCheckJSONDepth(t *testing.T) {
	ok := `{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"","b":[[1]]}`
	if err := checkJSONDepth([]byte(ok)); err != nil {
		t.Fatal(err)
	}
	deep := strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)
	if err := checkJSONDepth([]byte(`{"x":` + deep + `}`)); err == nil {
		t.Fatal("deep JSON accepted")
	}
}

func TestDetectEncoding(t *testing.T) {
	jsonHdr := map[string][]string{"Content-Type": {"application/json; charset=utf-8"}}
	for _, c := range []struct {
		data string
		hdr  map[string][]string
		want Encoding
	}{
		{`{"key":"a"}`, nil, JSON},
		{"", nil, JSON},
		{"\x81\xa3key\xa1a", nil, Msgpack},
		{` {"key":"a"}`, jsonHdr, JSON},
		{` {"key":"a"}`, nil, Msgpack},
	} {
		if got := DetectEncoding([]byte(c.data), c.hdr); got != c.want {
			t.Errorf("DetectEncoding(%q) = %v, want %v", c.data, got, c.want)
		}
	}
}

func TestHealthRoundTrip(t *testing.T) {
	h := Health{CPUUsage: 12.5, MemoryUsage: 40, ActiveConnections: 17, AvgLatency: 3500 * time.Microsecond, Weight: 2, Status: StatusDraining, Seq: 99, Interval: 1500 * time.Millisecond, Probe: true}
	for _, enc := range []Encoding{JSON, Msgpack} {
		b, err := EncodeHealth("node-1", h, enc)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeHealth("node-1", b, nil)
		if err != nil || !reflect.DeepEqual(got, h) {
			t.Fatalf("%v: round trip %+v, %v; want %+v", enc, got, err, h)
		}
		if _, err := DecodeHealth("node-2", b, nil); !errors.Is(err, ErrInvalidReport) || !strings.Contains(err.Error(), "subject names") {
			t.Fatalf("%v: id mismatch: %v", enc, err)
		}
	}
}

func TestRingDocument(t *testing.T) {
	d := RingDocument{Format: 1, Hash: "xxhash64", VNodes: 150, Nodes: []RingNode{{ID: "b", Weight: 2, Status: StatusDraining}, {ID: "a", Weight: 1}}}
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1},{"id":"b","weight":2,"status":"draining"}]}`
	if string(b) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", b, want)
	}
	got, err := DecodeRingDocument(b)
	if err != nil || len(got.Nodes) != 2 || got.Nodes[1] != (RingNode{ID: "b", Weight: 2, Status: StatusDraining}) {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	two := `{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":0.25},{"id":"b","weight":1}]}`
	got, err = DecodeRingDocument([]byte(two))
	if err != nil || got.Nodes[0].Shed != 0.25 || got.Nodes[1].Shed != 0 || got.Format != DocumentFormatShed {
		t.Fatalf("format 2: %+v, %v", got, err)
	}
	if b, err := got.Encode(); err != nil || string(b) != two {
		t.Fatalf("format 2 re-encoded as %s, %v", b, err)
	}
	for _, bad := range []string{
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[]}`,
		`{"format":3,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":0.5}]}`,
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1}]}`,             // format 2, nobody sheds
		`{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":0.5}]}`,  // format 1 with shed
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":0}]}`,    // "shed": 0
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":-0.1}]}`, // negative
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":1.5}]}`,  // > 1
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":null}]}`,
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":"0.5"}]}`,
		`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":NaN}]}`,
		`{"format":1,"hash":"md5","vnodes":150,"nodes":[]}`,
		`{"format":1,"hash":"xxhash64","vnodes":0,"nodes":[]}`,
		`{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a.b","weight":1}]}`,
		`{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":-1}]}`,
		`{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"status":"leaving"}]}`,
		`{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"b","weight":1},{"id":"a","weight":1}]}`,
		`{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1},{"id":"a","weight":1}]}`,
		`not json`,
	} {
		if _, err := DecodeRingDocument([]byte(bad)); !errors.Is(err, ErrInvalidDocument) {
			t.Errorf("%s: %v, want ErrInvalidDocument", bad, err)
		}
	}
}

func FuzzDecodeHealth(f *testing.F) {
	f.Add("node-1", []byte(`{"cpu_usage":10,"memory_usage":20,"active_connections":5,"avg_latency_ms":3}`))
	f.Add("node-1", []byte(`{"cpu_usage":10,"memory_usage":20,"active_connections":5,"avg_latency_ms":3,"weight":2,"status":"draining","seq":7,"node":"node-1"}`))
	m, _ := EncodeHealth("n", Health{CPUUsage: 1, Weight: 3, Seq: 1}, Msgpack)
	f.Add("n", m)
	m, _ = EncodeHealth("n", Health{CPUUsage: 1, Interval: time.Second, Probe: true}, Msgpack)
	f.Add("n", m)
	f.Add("n", []byte(`{"cpu_usage":1,"memory_usage":2,"active_connections":3,"avg_latency_ms":4,"interval_ms":99,"probe":true}`))
	f.Fuzz(func(t *testing.T, node string, data []byte) {
		h, err := DecodeHealth(node, data, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalidReport) && !errors.Is(err, ErrInvalidNodeID) {
				t.Fatalf("error %v is neither an invalid report nor an invalid id", err)
			}
			return
		}
		if err := h.Validate(); err != nil || ValidateNodeID(node) != nil {
			t.Fatalf("accepted an invalid report %+v: %v", h, err)
		}
		b, err := EncodeHealth(node, h, Msgpack)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeHealth(node, b, nil)
		if err != nil || !reflect.DeepEqual(back, h) {
			t.Fatalf("round trip %+v -> %+v, %v", h, back, err)
		}
	})
}

func FuzzDecodeRingDocument(f *testing.F) {
	f.Add([]byte(`{"format":1,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1},{"id":"b","weight":2,"status":"draining"}]}`))
	f.Add([]byte(`{"format":1,"hash":"xxhash64","vnodes":3,"nodes":[]}`))
	f.Add([]byte(`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":0.25},{"id":"b","weight":2,"status":"draining"}]}`))
	f.Add([]byte(`{"format":2,"hash":"xxhash64","vnodes":150,"nodes":[{"id":"a","weight":1,"shed":0}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := DecodeRingDocument(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidDocument) {
				t.Fatalf("error %v is not ErrInvalidDocument", err)
			}
			return
		}
		if _, err := d.Ring(); err != nil {
			t.Fatalf("valid document %+v does not build a ring: %v", d, err)
		}
		b, err := d.Encode()
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeRingDocument(b)
		if err != nil || !back.Equal(d) {
			t.Fatalf("round trip changed the document: %v", err)
		}
		var raw map[string]any
		if json.Unmarshal(b, &raw) != nil {
			t.Fatal("encoded document is not JSON")
		}
	})
}

func TestHealthInterval(t *testing.T) {
	base := `"cpu_usage":1,"memory_usage":2,"active_connections":3,"avg_latency_ms":4`
	for body, want := range map[string]time.Duration{
		`{` + base + `}`:                                    0,
		`{` + base + `,"interval_ms":100}`:                  100 * time.Millisecond,
		`{` + base + `,"interval_ms":3600000,"probe":true}`: time.Hour,
	} {
		h, err := DecodeHealth("n", []byte(body), nil)
		if err != nil || h.Interval != want {
			t.Errorf("%s: %v, %v; want %v", body, h.Interval, err, want)
		}
	}
	for _, bad := range []string{`0`, `99`, `3600001`, `-5`, `1.5`, `"1000"`, `true`} {
		body := `{` + base + `,"interval_ms":` + bad + `}`
		if _, err := DecodeHealth("n", []byte(body), nil); !errors.Is(err, ErrInvalidReport) {
			t.Errorf("interval_ms %s: %v, want ErrInvalidReport", bad, err)
		}
	}
	if _, err := EncodeHealth("n", Health{Interval: 50 * time.Millisecond}, JSON); !errors.Is(err, ErrInvalidReport) {
		t.Errorf("encode 50ms: %v", err)
	}
	if _, err := EncodeHealth("n", Health{Interval: 1500 * time.Microsecond * 1000}, JSON); err != nil {
		t.Errorf("encode 1.5s: %v", err)
	}
}
