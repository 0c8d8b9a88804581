package bus

import (
	"errors"
	"strings"
	"testing"

	"github.com/natsroute/natsroute/ring"
	"github.com/vmihailenco/msgpack/v5"
)

func mustMsgpack(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeMemberEntry(t *testing.T) {
	ok := []struct {
		name string
		data []byte
		want MemberEntry
	}{
		{"json plain", []byte(`{"weight":1}`), MemberEntry{Weight: 1}},
		{"json all", []byte(`{"weight":2.5,"status":"draining","shed":0.25}`), MemberEntry{Weight: 2.5, Status: StatusDraining, Shed: 0.25}},
		{"json shed 4 decimals", []byte(`{"weight":1,"shed":0.1234}`), MemberEntry{Weight: 1, Shed: 0.1234}},
		{"json shed 1", []byte(`{"weight":1,"shed":1}`), MemberEntry{Weight: 1, Shed: 1}},
		{"json unknown field ignored", []byte(`{"weight":1,"later":[1,2]}`), MemberEntry{Weight: 1}},
		{"msgpack plain", mustMsgpack(t, map[string]any{"weight": 1}), MemberEntry{Weight: 1}},
		{"msgpack float", mustMsgpack(t, map[string]any{"weight": 0.5, "status": "draining", "shed": 0.75}), MemberEntry{Weight: 0.5, Status: StatusDraining, Shed: 0.75}},
		{"msgpack float32", mustMsgpack(t, map[string]any{"weight": float32(2)}), MemberEntry{Weight: 2}},
		{"msgpack uint", mustMsgpack(t, map[string]any{"weight": uint8(3)}), MemberEntry{Weight: 3}},
	}
	for _, c := range ok {
		t.Run(c.name, func(t *testing.T) {
			got, err := DecodeMemberEntry(c.data)
			if err != nil || got != c.want {
				t.Fatalf("DecodeMemberEntry = %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
	bad := []struct {
		name, wantText string
		data           []byte
	}{
		{"empty", "empty", nil},
		{"null is not JSON by the first byte", "invalid msgpack", []byte(`null`)},
		{"json array", "", []byte(`[1]`)},
		{"no weight", "missing weight", []byte(`{}`)},
		{"weight null", "want a number", []byte(`{"weight":null}`)},
		{"weight string", "want a number", []byte(`{"weight":"1"}`)},
		{"weight 0", "weight 0", []byte(`{"weight":0}`)},
		{"weight negative", "weight -1", []byte(`{"weight":-1}`)},
		{"weight too big", "weight 1001", []byte(`{"weight":1001}`)},
		{"status up", `status "up"`, []byte(`{"weight":1,"status":"up"}`)},
		{"status empty", `status ""`, []byte(`{"weight":1,"status":""}`)},
		{"status null", "want a string", []byte(`{"weight":1,"status":null}`)},
		{"shed 0", "shed 0", []byte(`{"weight":1,"shed":0}`)},
		{"shed null", "want a number", []byte(`{"weight":1,"shed":null}`)},
		{"shed over 1", "shed 1.5", []byte(`{"weight":1,"shed":1.5}`)},
		{"shed 5 decimals", "more than 4 decimals", []byte(`{"weight":1,"shed":0.12345}`)},
		{"id is not in the value", "", []byte(`{"weight":1,"id":"a"`)},
		{"trailing", "", []byte(`{"weight":1}{}`)},
		{"msgpack nil", "not a msgpack map", []byte{0xc0}},
		{"msgpack shed nil", "want a number", mustMsgpack(t, map[string]any{"weight": 1, "shed": nil})},
		{"msgpack weight bin", "want a number", mustMsgpack(t, map[string]any{"weight": []byte("1")})},
		{"msgpack trailing", "invalid msgpack", append(mustMsgpack(t, map[string]any{"weight": 1}), 0x01)},
		{"too long", "at most", []byte(`{"weight":1,"x":"` + strings.Repeat("x", 2000) + `"}`)},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			got, err := DecodeMemberEntry(c.data)
			if !errors.Is(err, ErrInvalidEntry) {
				t.Fatalf("DecodeMemberEntry = %+v, %v; want ErrInvalidEntry", got, err)
			}
			if !strings.Contains(err.Error(), c.wantText) {
				t.Fatalf("error %q does not say %q", err, c.wantText)
			}
		})
	}
}

func TestDecodePoolEntry(t *testing.T) {
	for _, data := range [][]byte{
		[]byte(`{"format":3,"hash":"xxhash64","vnodes":150}`),
		mustMsgpack(t, map[string]any{"format": 3, "hash": "xxhash64", "vnodes": 150}),
	} {
		got, err := DecodePoolEntry(data)
		if err != nil || got != NewPoolEntry(150) {
			t.Fatalf("DecodePoolEntry(%q) = %+v, %v", data, got, err)
		}
	}
	bad := []struct{ data, wantText string }{
		{`{"format":4,"hash":"xxhash64","vnodes":150}`, "format 4 is not supported"},
		{`{"format":4}`, "format 4 is not supported"},
		{`{"format":1,"hash":"xxhash64","vnodes":150}`, "format 1 is not supported"},
		{`{"format":3.0,"hash":"xxhash64","vnodes":150}`, "want an integer"},
		{`{"hash":"xxhash64","vnodes":150}`, "missing format"},
		{`{"format":3,"hash":"md5","vnodes":150}`, `hash "md5"`},
		{`{"format":3,"vnodes":150}`, "missing hash"},
		{`{"format":3,"hash":"xxhash64"}`, "missing vnodes"},
		{`{"format":3,"hash":"xxhash64","vnodes":0}`, "vnodes 0"},
		{`{"format":3,"hash":"xxhash64","vnodes":10001}`, "vnodes 10001"},
		{`{"format":3,"hash":"xxhash64","vnodes":null}`, "want an integer"},
		{`{"format":3,"hash":"xxhash64","vnodes":1e2}`, "want an integer"},
	}
	for _, c := range bad {
		got, err := DecodePoolEntry([]byte(c.data))
		if !errors.Is(err, ErrInvalidEntry) || !strings.Contains(err.Error(), c.wantText) {
			t.Errorf("DecodePoolEntry(%s) = %+v, %v; want ErrInvalidEntry saying %q", c.data, got, err, c.wantText)
		}
	}
}

func TestEntryEncode(t *testing.T) {
	for _, c := range []struct {
		m    MemberEntry
		json string
	}{
		{MemberEntry{Weight: 1}, `{"weight":1}`},
		{MemberEntry{Weight: 2, Status: StatusDraining}, `{"weight":2,"status":"draining"}`},
		{MemberEntry{Weight: 1, Shed: 0.25}, `{"weight":1,"shed":0.25}`},
	} {
		b, err := c.m.Encode(JSON)
		if err != nil || string(b) != c.json {
			t.Errorf("Encode(%+v) = %s, %v; want %s", c.m, b, err, c.json)
		}
		for _, enc := range []Encoding{JSON, Msgpack} {
			b, err := c.m.Encode(enc)
			if err != nil {
				t.Fatal(err)
			}
			if back, err := DecodeMemberEntry(b); err != nil || back != c.m {
				t.Errorf("%v round trip of %+v = %+v, %v", enc, c.m, back, err)
			}
		}
	}
	if _, err := (MemberEntry{Weight: 1, Shed: 0.12345}).Encode(JSON); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("Encode of a shed with 5 decimals = %v, want ErrInvalidEntry", err)
	}
	b, err := NewPoolEntry(150).Encode(JSON)
	if err != nil || string(b) != `{"format":3,"hash":"xxhash64","vnodes":150}` {
		t.Errorf("pool entry = %s, %v", b, err)
	}
	if _, err := (PoolEntry{Format: 3, Hash: DocumentHash}).Encode(JSON); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("Encode of vnodes 0 = %v, want ErrInvalidEntry", err)
	}
}

func TestV3Keys(t *testing.T) {
	if got := PoolKeyV3("default"); got != "pools.default" {
		t.Errorf("PoolKeyV3 = %q", got)
	}
	if got := MemberKey("default", "node-1"); got != "members.default.node-1" {
		t.Errorf("MemberKey = %q", got)
	}
	if got := MembersFilter("cache"); got != "members.cache.*" {
		t.Errorf("MembersFilter = %q", got)
	}
	if p, ok := ParsePoolKeyV3("pools.cache"); !ok || p != "cache" {
		t.Errorf("ParsePoolKeyV3 = %q, %v", p, ok)
	}
	for _, k := range []string{"pools.", "pools", "pools.a.b", "pools.a=b", "ring.a", "members.a.b"} {
		if p, ok := ParsePoolKeyV3(k); ok {
			t.Errorf("ParsePoolKeyV3(%q) = %q, true", k, p)
		}
	}
	if p, n, ok := ParseMemberKey("members.default.node_1-x"); !ok || p != "default" || n != "node_1-x" {
		t.Errorf("ParseMemberKey = %q, %q, %v", p, n, ok)
	}
	for _, k := range []string{"members.default", "members.default.", "members..a", "members.a.b.c", "members.a.b=c",
		"members.a." + strings.Repeat("x", 65), "pools.a", "member.a.b", "ring"} {
		if p, n, ok := ParseMemberKey(k); ok {
			t.Errorf("ParseMemberKey(%q) = %q, %q, true", k, p, n)
		}
	}
}

func FuzzDecodeMemberEntry(f *testing.F) {
	f.Add([]byte(`{"weight":1}`))
	f.Add([]byte(`{"weight":2,"status":"draining","shed":0.25}`))
	f.Add([]byte(`{"weight":1,"shed":0}`))
	f.Add([]byte(`{"weight":1,"shed":0.12345}`))
	f.Add(mustMsgpack(f, map[string]any{"weight": 1.5, "shed": 1}))
	f.Add(mustMsgpack(f, map[string]any{"weight": 1, "status": nil}))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMemberEntry(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidEntry) {
				t.Fatalf("error %v is not ErrInvalidEntry", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("decoded %+v does not validate: %v", m, err)
		}
		if _, err := ring.New(ring.Config{}, m.Member("a")); err != nil {
			t.Fatalf("decoded %+v is not a ring member: %v", m, err)
		}
		for _, enc := range []Encoding{JSON, Msgpack} {
			b, err := m.Encode(enc)
			if err != nil {
				t.Fatal(err)
			}
			if back, err := DecodeMemberEntry(b); err != nil || back != m {
				t.Fatalf("%v round trip changed %+v into %+v (%v)", enc, m, back, err)
			}
		}
	})
}

func FuzzDecodePoolEntry(f *testing.F) {
	f.Add([]byte(`{"format":3,"hash":"xxhash64","vnodes":150}`))
	f.Add([]byte(`{"format":4,"hash":"xxhash64","vnodes":150}`))
	f.Add([]byte(`{"format":3,"hash":"xxhash64","vnodes":1.5}`))
	f.Add(mustMsgpack(f, map[string]any{"format": 3, "hash": "xxhash64", "vnodes": 10}))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodePoolEntry(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidEntry) {
				t.Fatalf("error %v is not ErrInvalidEntry", err)
			}
			return
		}
		if _, err := ring.New(ring.Config{VirtualNodes: p.VNodes}); err != nil {
			t.Fatalf("decoded %+v does not configure a ring: %v", p, err)
		}
		for _, enc := range []Encoding{JSON, Msgpack} {
			b, err := p.Encode(enc)
			if err != nil {
				t.Fatal(err)
			}
			if back, err := DecodePoolEntry(b); err != nil || back != p {
				t.Fatalf("%v round trip changed %+v into %+v (%v)", enc, p, back, err)
			}
		}
	})
}
