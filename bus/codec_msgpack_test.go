package bus

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// The reference: the same structs without methods, which msgpack handles by
// reflection, as it handled Request, Reply and healthWire before they had
// hand-driven codecs.
type (
	requestRef    Request
	replyRef      Reply
	healthWireRef healthWire
)

// mp marshals v with msgpack (reflection on maps and plain values).
func mp(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// kv builds a msgpack map from alternating keys and values, in that order
// (a Go map would not keep it); a key may be a string, []byte or nil.
func kv(t testing.TB, pairs ...any) []byte {
	t.Helper()
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	if err := e.EncodeMapLen(len(pairs) / 2); err != nil {
		t.Fatal(err)
	}
	for _, v := range pairs {
		if err := e.Encode(v); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// arr builds a msgpack array of vs.
func arr(t testing.TB, vs ...any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(append([]any{}, vs...)) // not nil when empty
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// raw is a value already encoded, spliced as is by kv and arr.
type raw []byte

func (r raw) EncodeMsgpack(e *msgpack.Encoder) error {
	_, err := e.Writer().Write(r)
	return err
}

// decodeStream decodes one value from the start of data with a fresh
// Decoder, as msgpack.Unmarshal does but without scanMsgpack in front, and
// says how many bytes it read.
func decodeStream(data []byte, decode func(*msgpack.Decoder) error) (int, error) {
	r := bytes.NewReader(data)
	err := decode(msgpack.NewDecoder(r))
	return len(data) - r.Len(), err
}

// compareRequestDecoders checks that every way of decoding data into a
// Request agrees with reflection into requestRef, and returns the decoded
// request and whether it was accepted.
func compareRequestDecoders(t *testing.T, data []byte) (Request, bool) {
	t.Helper()
	// As the router decodes: scanMsgpack, then the decoder.
	var ref requestRef
	refErr := Msgpack.Unmarshal(data, &ref)
	var viaAny, direct Request
	anyErr := Msgpack.Unmarshal(data, &viaAny)
	directErr := Msgpack.UnmarshalRequest(data, &direct)
	for _, c := range []struct {
		name string
		got  Request
		err  error
	}{{"Unmarshal", viaAny, anyErr}, {"UnmarshalRequest", direct, directErr}} {
		if (c.err == nil) != (refErr == nil) {
			t.Fatalf("%x: %s: error %v, reflection %v", data, c.name, c.err, refErr)
		}
		if c.err == nil && !reflect.DeepEqual(c.got, Request(ref)) {
			t.Fatalf("%x: %s: %#v, reflection %#v", data, c.name, c.got, Request(ref))
		}
	}
	// As a stream, without the scan: the same value from the same bytes.
	var sref requestRef
	var shand, sdirect Request
	nRef, errRef := decodeStream(data, func(d *msgpack.Decoder) error { return d.Decode(&sref) })
	nHand, errHand := decodeStream(data, func(d *msgpack.Decoder) error { return d.Decode(&shand) })
	nDirect, errDirect := decodeStream(data, sdirect.DecodeMsgpack)
	for _, c := range []struct {
		name string
		got  Request
		n    int
		err  error
	}{{"Decoder.Decode", shand, nHand, errHand}, {"DecodeMsgpack", sdirect, nDirect, errDirect}} {
		if (c.err == nil) != (errRef == nil) {
			t.Fatalf("%x: stream %s: error %v, reflection %v", data, c.name, c.err, errRef)
		}
		if c.err == nil && (!reflect.DeepEqual(c.got, Request(sref)) || c.n != nRef) {
			t.Fatalf("%x: stream %s: %#v after %d bytes, reflection %#v after %d", data, c.name, c.got, c.n, Request(sref), nRef)
		}
	}
	// Through a reader that msgpack wraps in a bufio.Reader.
	var bref requestRef
	var bhand Request
	errRef = msgpack.NewDecoder(struct{ io.Reader }{bytes.NewReader(data)}).Decode(&bref)
	errHand = bhand.DecodeMsgpack(msgpack.NewDecoder(struct{ io.Reader }{bytes.NewReader(data)}))
	if (errHand == nil) != (errRef == nil) || errHand == nil && !reflect.DeepEqual(bhand, Request(bref)) {
		t.Fatalf("%x: via bufio: %#v, %v; reflection %#v, %v", data, bhand, errHand, Request(bref), errRef)
	}
	// Into a request that is not zero: reflection merges into it (a []string
	// keeps its array, nil leaves a field as it was), and so must DecodeMsgpack.
	pre := func() Request {
		return Request{Strategy: "s", Key: "k", Count: 9, Candidates: []string{"c1", "c2", "c3"}, Keys: []string{"k1"}, Explain: true, Pool: "p", Spread: 4}
	}
	pref, phand := requestRef(pre()), pre()
	_, errRef = decodeStream(data, func(d *msgpack.Decoder) error { return d.Decode(&pref) })
	_, errHand = decodeStream(data, phand.DecodeMsgpack)
	if (errHand == nil) != (errRef == nil) || errHand == nil && !reflect.DeepEqual(phand, Request(pref)) {
		t.Fatalf("%x: into a filled request: %#v, %v; reflection %#v, %v", data, phand, errHand, Request(pref), errRef)
	}
	return direct, directErr == nil
}

func TestMsgpackRequestMatchesReflection(t *testing.T) {
	long := strings.Repeat("k", 300)
	every := Request{Strategy: StrategyConsistentHash, Key: "user-42", Count: 3, Candidates: []string{"a", "b"}, Keys: []string{"x"}, Explain: true, Pool: "cache", Spread: 2}
	for _, c := range []struct {
		name string
		data []byte
		ok   bool // what reflection says, so that each case tests what it claims
	}{
		{"single key", kv(t, "key", "user-42"), true},
		{"every field", mp(t, &every), true},
		{"every field reversed", kv(t, "spread", 2, "pool", "cache", "explain", true, "keys", []string{"x"}, "candidates", []string{"a", "b"}, "count", 3, "key", "k", "strategy", "ResourceAware"), true},
		{"empty map", kv(t), true},
		{"nil", []byte{0xc0}, true},
		{"unknown fields", kv(t, "zzz", map[string]any{"a": []any{1, "b", nil}}, "key", "k", "tenant", "t", long, 1, "", 2), true},
		{"nil and bin keys", kv(t, nil, 1, []byte("key"), "k"), true},
		{"long key value", kv(t, "key", long), true},
		{"bin values", kv(t, "key", []byte("k"), "candidates", []any{[]byte("a"), "b"}), true},
		{"nil values", kv(t, "strategy", nil, "key", nil, "count", nil, "candidates", nil, "keys", nil, "explain", nil, "pool", nil, "spread", nil), true},
		{"nil string in a list", kv(t, "candidates", []any{nil, "a"}), true},
		{"empty lists", kv(t, "candidates", []string{}, "keys", []string{}), true},
		{"duplicate fields", kv(t, "key", "a", "key", "b", "candidates", []string{"x", "y"}, "candidates", []string{"z"}, "candidates", nil), true},
		{"int widths", kv(t, "count", int8(-3), "spread", uint64(1<<63+5)), true},
		{"int16 and uint32", kv(t, "count", int16(-300), "spread", uint32(1<<31)), true},
		{"as an array", arr(t, "ResourceAware", "k", 2, []string{"a"}, nil, true, "p", 1), true},
		{"as an empty array", arr(t), true},
		{"array of the wrong length", arr(t, "ResourceAware", "k"), false},
		{"float count", kv(t, "count", 1.0), false},
		{"string count", kv(t, "count", "1"), false},
		{"int key", kv(t, "key", 42), false},
		{"int explain", kv(t, "explain", 1), false},
		{"string explain", kv(t, "explain", "true"), false},
		{"map candidates", kv(t, "candidates", map[string]any{"a": 1}), false},
		{"int in candidates", kv(t, "candidates", []any{"a", 1}), false},
		{"string for candidates", kv(t, "candidates", "a"), false},
		{"int field name", kv(t, 1, "k"), false},
		{"a string", mp(t, "key"), false},
		{"an int", mp(t, 7), false},
		{"ext", mp(t, time.Unix(1700000000, 5)), false},
		{"ext before a map", append([]byte{0xd4, 0x01, 0x00}, kv(t, "key", "k")...), false},
		{"trailing byte", append(kv(t, "key", "k"), 0x01), false},
		{"truncated", kv(t, "key", "user-42")[:5], false},
		{"too deep", append(kv(t, "zzz", raw(bytes.Repeat([]byte{0x91}, maxDepth))), 0x01), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, ok := compareRequestDecoders(t, c.data)
			if ok != c.ok {
				t.Fatalf("%x: accepted %v, want %v", c.data, ok, c.ok)
			}
		})
	}
}

// compareHealthDecoders is compareRequestDecoders for healthWire.
func compareHealthDecoders(t *testing.T, data []byte) bool {
	t.Helper()
	var ref healthWireRef
	var viaAny healthWire
	refErr := Msgpack.Unmarshal(data, &ref)
	anyErr := Msgpack.Unmarshal(data, &viaAny)
	if (anyErr == nil) != (refErr == nil) {
		t.Fatalf("%x: error %v, reflection %v", data, anyErr, refErr)
	}
	if anyErr == nil && healthView(viaAny) != healthView(healthWire(ref)) {
		t.Fatalf("%x: %s, reflection %s", data, healthView(viaAny), healthView(healthWire(ref)))
	}
	var sref healthWireRef
	var shand healthWire
	nRef, errRef := decodeStream(data, func(d *msgpack.Decoder) error { return d.Decode(&sref) })
	nHand, errHand := decodeStream(data, shand.DecodeMsgpack)
	if (errHand == nil) != (errRef == nil) {
		t.Fatalf("%x: stream: error %v, reflection %v", data, errHand, errRef)
	}
	if errHand == nil && (healthView(shand) != healthView(healthWire(sref)) || nHand != nRef) {
		t.Fatalf("%x: stream: %s after %d bytes, reflection %s after %d", data, healthView(shand), nHand, healthView(healthWire(sref)), nRef)
	}
	var bref healthWireRef
	var bhand healthWire
	errRef = msgpack.NewDecoder(struct{ io.Reader }{bytes.NewReader(data)}).Decode(&bref)
	errHand = bhand.DecodeMsgpack(msgpack.NewDecoder(struct{ io.Reader }{bytes.NewReader(data)}))
	if (errHand == nil) != (errRef == nil) || errHand == nil && healthView(bhand) != healthView(healthWire(bref)) {
		t.Fatalf("%x: via bufio: %s, %v; reflection %s, %v", data, healthView(bhand), errHand, healthView(healthWire(bref)), errRef)
	}
	pre := func() healthWire {
		node, f, n, iv := "x", 7.0, int64(7), int64(700)
		return healthWire{Node: &node, CPUUsage: &f, MemoryUsage: &f, ActiveConnections: &n, AvgLatencyMS: &f, Weight: &f, Status: "up", Seq: 7, Pools: []string{"p1", "p2"}, IntervalMS: &iv, Probe: true}
	}
	pref, phand := healthWireRef(pre()), pre()
	_, errRef = decodeStream(data, func(d *msgpack.Decoder) error { return d.Decode(&pref) })
	_, errHand = decodeStream(data, phand.DecodeMsgpack)
	if (errHand == nil) != (errRef == nil) || errHand == nil && healthView(phand) != healthView(healthWire(pref)) {
		t.Fatalf("%x: into a filled report: %s, %v; reflection %s, %v", data, healthView(phand), errHand, healthView(healthWire(pref)), errRef)
	}
	return anyErr == nil
}

// healthView shows what w's pointers point to, and tells nil from empty
// slices; floats print by bits so that NaN equals itself.
func healthView(w healthWire) string {
	var b strings.Builder
	ptr := func(name string, p any) {
		switch p := p.(type) {
		case *string:
			if p != nil {
				fmt.Fprintf(&b, "%s=%q ", name, *p)
				return
			}
		case *float64:
			if p != nil {
				fmt.Fprintf(&b, "%s=%#x ", name, math.Float64bits(*p))
				return
			}
		case *int64:
			if p != nil {
				fmt.Fprintf(&b, "%s=%d ", name, *p)
				return
			}
		}
		fmt.Fprintf(&b, "%s=missing ", name)
	}
	ptr("node", w.Node)
	ptr("cpu", w.CPUUsage)
	ptr("mem", w.MemoryUsage)
	ptr("conns", w.ActiveConnections)
	ptr("latency", w.AvgLatencyMS)
	ptr("weight", w.Weight)
	ptr("interval", w.IntervalMS)
	fmt.Fprintf(&b, "status=%q seq=%d pools=%#v probe=%t", w.Status, w.Seq, w.Pools, w.Probe)
	if n := reflect.TypeFor[healthWire]().NumField(); n != 11 {
		panic(fmt.Sprintf("healthView shows 11 fields; healthWire has %d", n))
	}
	return b.String()
}

func TestMsgpackHealthMatchesReflection(t *testing.T) {
	full, err := EncodeHealth("n-1", Health{CPUUsage: 12.5, MemoryUsage: 40, ActiveConnections: 17, Weight: 2, Status: StatusDraining, Seq: 99, Pools: []string{"a", "b"}, Interval: time.Second, Probe: true}, Msgpack)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"a report", full, true},
		{"required only", kv(t, "cpu_usage", 1.5, "memory_usage", 2, "active_connections", 3, "avg_latency_ms", 4), true},
		{"zeros are present", kv(t, "cpu_usage", 0.0, "memory_usage", 0, "active_connections", 0, "avg_latency_ms", 0, "weight", 0.0), true},
		{"nil is missing", kv(t, "cpu_usage", nil, "node", nil, "weight", nil, "status", nil, "seq", nil, "pools", nil), true},
		{"present then nil", kv(t, "cpu_usage", 1.0, "cpu_usage", nil), true},
		{"nil then present", kv(t, "cpu_usage", nil, "cpu_usage", 1.0), true},
		{"float32 and ints as floats", kv(t, "cpu_usage", float32(1.5), "memory_usage", int8(-1), "avg_latency_ms", uint64(1<<60)), true},
		{"NaN", kv(t, "cpu_usage", math.NaN(), "memory_usage", math.Inf(-1)), true},
		{"negative seq", kv(t, "seq", -1), true},
		{"bin node and status", kv(t, "node", []byte("n"), "status", []byte("up")), true},
		{"empty pools", kv(t, "pools", []string{}), true},
		{"unknown fields", kv(t, "gpu_usage", 3.5, "cpu_usage", 1.0, "extra", []any{map[string]any{}}), true},
		{"nil", []byte{0xc0}, true},
		{"empty map", kv(t), true},
		{"as an array", arr(t, "n", 1.0, 2.0, 3, 4.0, nil, "up", 5, []string{"p"}, 1000, true), true},
		{"as an array of the old length", arr(t, "n", 1.0, 2.0, 3, 4.0, nil, "up", 5, []string{"p"}), false},
		{"interval and probe", kv(t, "interval_ms", 1000, "probe", true), true},
		{"nil interval and probe", kv(t, "interval_ms", nil, "probe", nil), true},
		{"float interval", kv(t, "interval_ms", 1000.0), false},
		{"int probe", kv(t, "probe", 1), false},
		{"as an empty array", arr(t), true},
		{"array of the wrong length", arr(t, "n", 1.0), false},
		{"string cpu", kv(t, "cpu_usage", "high"), false},
		{"float connections", kv(t, "active_connections", 1.5), false},
		{"bool weight", kv(t, "weight", true), false},
		{"float seq", kv(t, "seq", 1.0), false},
		{"int node", kv(t, "node", 1), false},
		{"int status", kv(t, "status", 1), false},
		{"int in pools", kv(t, "pools", []any{1}), false},
		{"truncated", full[:len(full)-1], false},
		{"trailing", append(bytes.Clone(full), 0xc0), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if ok := compareHealthDecoders(t, c.data); ok != c.ok {
				t.Fatalf("%x: accepted %v, want %v", c.data, ok, c.ok)
			}
		})
	}
}

// compareEncoders checks that the hand encoders write what reflection
// writes for r and q.
func compareEncoders(t *testing.T, r *Reply, q *Request) {
	t.Helper()
	if r != nil {
		want := mp(t, (*replyRef)(r))
		for name, got := range map[string][]byte{
			"msgpack.Marshal(*Reply)": mp(t, r),
			"msgpack.Marshal(Reply)":  mp(t, *r),
			"Encoding.Marshal":        must(Msgpack.Marshal(r)),
			"AppendReply":             must(Msgpack.AppendReply([]byte("prefix"), r))[len("prefix"):],
		} {
			if !bytes.Equal(got, want) {
				t.Fatalf("%s(%#v)\n got %x\nwant %x", name, *r, got, want)
			}
		}
		got, err := JSON.AppendReply(nil, r)
		want, wantErr := JSON.Marshal(r)
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("JSON.AppendReply: %s, %v; want %s, %v", got, err, want, wantErr)
		}
	}
	if q != nil {
		want := mp(t, (*requestRef)(q))
		for name, got := range map[string][]byte{
			"msgpack.Marshal(*Request)": mp(t, q),
			"msgpack.Marshal(Request)":  mp(t, *q),
			"Encoding.Marshal":          must(Msgpack.Marshal(q)),
		} {
			if !bytes.Equal(got, want) {
				t.Fatalf("%s(%#v)\n got %x\nwant %x", name, *q, got, want)
			}
		}
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestMsgpackEncodeMatchesReflection(t *testing.T) {
	long := strings.Repeat("n", 70000) // str32
	for _, r := range []Reply{
		{},
		{Node: "a", Strategy: StrategyConsistentHash, Revision: 12},
		{Node: "a", Nodes: []string{"a", "b"}, Strategy: StrategyResourceAware, Revision: math.MaxUint64},
		{Nodes: []string{}, Results: []Result{}},
		{Strategy: StrategyConsistentHash, Revision: 1 << 40, Results: []Result{{Key: "k", Node: "a"}, {Key: "", Node: "b", Nodes: []string{"b", "c"}}, {Nodes: []string{}}}},
		{Node: strings.Repeat("x", 40), Strategy: strings.Repeat("y", 300), Nodes: make([]string, 20)},
		{Node: long},
		{Node: "a", Explanation: &Explanation{}},
		{Node: "a", Explanation: &Explanation{KeyHash: "00ff", Skipped: []string{"b"}, Nodes: []NodeScore{{ID: "a", Score: 0.5, Eligible: true}, {ID: "b", Reason: "cpu"}}, Shed: []ShedNote{{ID: "c", Fraction: 0.25}}}},
	} {
		compareEncoders(t, &r, nil)
	}
	for _, q := range []Request{
		{},
		{Key: "user-42"},
		{Strategy: StrategyConsistentHash, Key: "k", Count: 3, Candidates: []string{"a", "b"}, Keys: []string{"x"}, Explain: true, Pool: "p", Spread: 2},
		{Candidates: []string{}, Keys: []string{}},
		{Count: -1, Spread: math.MaxInt64},
		{Count: -200, Spread: 200},
		{Count: math.MinInt64, Spread: 70000},
		{Key: long, Keys: make([]string, 17)},
	} {
		compareEncoders(t, nil, &q)
	}
	var nilReply *Reply
	if got, want := must(Msgpack.Marshal(nilReply)), mp(t, (*replyRef)(nil)); !bytes.Equal(got, want) {
		t.Fatalf("nil *Reply: %x, want %x", got, want)
	}
}

// TestMsgpackFieldCases: every field of Request and healthWire has a case
// in its decoder, the field lists follow msgpack's own order, and a
// randomly filled value survives hand encoding and decoding as it survives
// reflection. A new field that is forgotten fails here.
func TestMsgpackFieldCases(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		names []string
		ref   any // a pointer to the reflection twin
	}{
		{requestFields, new(requestRef)},
		{healthWireFields, new(healthWireRef)},
	} {
		// msgpack writes fields in its order: read the keys back.
		fill(reflect.ValueOf(c.ref).Elem(), rng, true)
		var order []string
		d := msgpack.NewDecoder(bytes.NewReader(mp(t, c.ref)))
		n, err := d.DecodeMapLen()
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			k, _ := d.DecodeString()
			order = append(order, k)
			if err := d.Skip(); err != nil {
				t.Fatal(err)
			}
		}
		if !reflect.DeepEqual(order, c.names) {
			t.Fatalf("msgpack's field order %q, the decoder's list %q", order, c.names)
		}
		for _, name := range c.names {
			data := kv(t, name, nil)
			var err error
			switch c.ref.(type) {
			case *requestRef:
				err = Msgpack.UnmarshalRequest(data, new(Request))
			default:
				err = Msgpack.Unmarshal(data, new(healthWire))
			}
			if err != nil {
				t.Errorf("field %q: %v", name, err)
			}
		}
	}
	for range 200 {
		var q requestRef
		fill(reflect.ValueOf(&q).Elem(), rng, false)
		b := mp(t, &q)
		if _, ok := compareRequestDecoders(t, b); !ok { // empty lists come back nil (omitempty)
			t.Fatalf("%#v refused", q)
		}
		compareEncoders(t, nil, (*Request)(&q))
		var w healthWireRef
		fill(reflect.ValueOf(&w).Elem(), rng, false)
		if !compareHealthDecoders(t, mp(t, &w)) {
			t.Fatalf("%s refused", healthView(healthWire(w)))
		}
		var r replyRef
		fill(reflect.ValueOf(&r).Elem(), rng, false)
		compareEncoders(t, (*Reply)(&r), nil)
	}
}

// fill sets v to random values (every field when full), nil or empty
// slices and pointers included.
func fill(v reflect.Value, rng *rand.Rand, full bool) {
	switch v.Kind() {
	case reflect.String:
		if full || rng.IntN(3) > 0 {
			v.SetString(strings.Repeat(string(rune('a'+rng.IntN(26))), 1+rng.IntN(40)))
		}
	case reflect.Bool:
		v.SetBool(full || rng.IntN(2) == 0)
	case reflect.Int, reflect.Int64:
		if full || rng.IntN(3) > 0 {
			v.SetInt(int64(rng.Uint64()) >> rng.IntN(64))
		}
		if full && v.Int() == 0 {
			v.SetInt(1)
		}
	case reflect.Uint64:
		v.SetUint(rng.Uint64() >> rng.IntN(64))
		if full && v.Uint() == 0 {
			v.SetUint(1)
		}
	case reflect.Float64:
		v.SetFloat(rng.NormFloat64() * 100)
	case reflect.Pointer:
		if full || rng.IntN(3) > 0 {
			v.Set(reflect.New(v.Type().Elem()))
			fill(v.Elem(), rng, full)
		}
	case reflect.Slice:
		n := rng.IntN(4)
		if full {
			n++
		}
		if n > 0 || rng.IntN(2) == 0 {
			v.Set(reflect.MakeSlice(v.Type(), n, n))
		}
		for i := range n {
			fill(v.Index(i), rng, full)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), rng, full)
			}
		}
	default:
		panic("fill: add a case for " + v.Type().String())
	}
}

// seedRequests are FuzzMsgpackRequestDifferential's corpus.
func seedRequests(t testing.TB) [][]byte {
	return [][]byte{
		kv(t, "key", "user-42"),
		mp(t, &Request{Strategy: StrategyConsistentHash, Key: "k", Count: 3, Candidates: []string{"a", "b"}, Keys: []string{"x"}, Explain: true, Pool: "p", Spread: 2}),
		kv(t, "candidates", []string{}, "keys", nil, "zzz", []any{1, map[string]any{"a": nil}}),
		kv(t, "count", 1.5, "key", []byte("k")),
		arr(t, "ResourceAware", "k", 2, []string{"a"}, nil, true, "p", 1),
		{0xc0},
		{0x90},
	}
}

func FuzzMsgpackRequestDifferential(f *testing.F) {
	for _, s := range seedRequests(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		q, ok := compareRequestDecoders(t, data)
		if ok {
			compareEncoders(t, nil, &q)
		}
	})
}

func FuzzMsgpackHealthDifferential(f *testing.F) {
	full, _ := EncodeHealth("n-1", Health{CPUUsage: 12.5, MemoryUsage: 40, ActiveConnections: 17, Weight: 2, Status: StatusDraining, Seq: 99, Pools: []string{"a"}}, Msgpack)
	f.Add(full)
	f.Add(kv(f, "cpu_usage", nil, "cpu_usage", 1, "active_connections", 1.5))
	f.Add(arr(f, "n", 1.0, 2.0, 3, 4.0, nil, "up", 5, []string{"p"}, 1000, true))
	f.Add(kv(f, "interval_ms", uint16(500), "probe", true, "probe", nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		compareHealthDecoders(t, data)
	})
}

// FuzzMsgpackReplyEncode: a reply built from the input (any msgpack that
// reflection decodes as a Reply, or the plain arguments) encodes to the
// bytes reflection writes.
func FuzzMsgpackReplyEncode(f *testing.F) {
	f.Add(mp(f, &Reply{Node: "a", Nodes: []string{"a", "b"}, Strategy: StrategyConsistentHash, Revision: 7, Results: []Result{{Key: "k", Node: "a", Nodes: []string{}}}}), "node-1", uint64(12), uint8(0))
	f.Add(mp(f, &Reply{Explanation: &Explanation{KeyHash: "ff", Nodes: []NodeScore{{ID: "a", Score: math.NaN()}}}}), strings.Repeat("n", 40), uint64(1<<63), uint8(0xff))
	f.Fuzz(func(t *testing.T, data []byte, node string, rev uint64, shape uint8) {
		var r replyRef
		if msgpack.Unmarshal(data, &r) == nil {
			compareEncoders(t, (*Reply)(&r), nil)
		}
		b := Reply{Node: node, Strategy: node, Revision: rev}
		if shape&1 != 0 {
			b.Nodes = []string{node, node[:len(node)/2]}
		}
		if shape&2 != 0 {
			b.Nodes = []string{}
		}
		if shape&4 != 0 {
			b.Results = []Result{{Key: node, Node: node}, {Nodes: b.Nodes}}
		}
		if shape&8 != 0 {
			b.Explanation = &Explanation{KeyHash: node, Skipped: b.Nodes}
		}
		compareEncoders(t, &b, nil)
	})
}

// TestMsgpackRefusalsKeepTheirErrors: the hand decoders' errors keep the
// wrapping the router and the stats count on.
func TestMsgpackRefusalsKeepTheirErrors(t *testing.T) {
	_, err := DecodeHealth("a", kv(t, "cpu_usage", "high", "memory_usage", 1, "active_connections", 1, "avg_latency_ms", 1), nil)
	if !errors.Is(err, ErrInvalidReport) || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "invalid msgpack") {
		t.Fatalf("string cpu_usage: %v", err)
	}
	if err := Msgpack.UnmarshalRequest(kv(t, "count", 1.5), new(Request)); err == nil || !strings.HasPrefix(err.Error(), "invalid msgpack: ") {
		t.Fatalf("float count: %v", err)
	}
	if err := Msgpack.UnmarshalRequest(nil, new(Request)); err == nil || err.Error() != "empty body" {
		t.Fatalf("empty body: %v", err)
	}
	var q Request
	if err := JSON.UnmarshalRequest([]byte(`{"key":"k","count":2}`), &q); err != nil || q.Key != "k" || q.Count != 2 {
		t.Fatalf("JSON: %+v, %v", q, err)
	}
}

// TestResultFastPathBytes: the bytes appended for a result without nodes
// are msgpack.Marshal's, at every string length class.
func TestResultFastPathBytes(t *testing.T) {
	for _, n := range []int{0, 1, 31, 32, 255, 256, 65535, 65536, 70000} {
		key := strings.Repeat("k", n)
		r := Reply{Strategy: StrategyConsistentHash, Revision: 3, Results: []Result{{Key: key, Node: "node-1"}, {Key: "x", Node: key}}}
		want, err := msgpack.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Msgpack.AppendReply(nil, &r)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("length %d: AppendReply differs from msgpack.Marshal (%v)", n, err)
		}
	}
}
