package bus

// Hand-driven msgpack for the values on the hot paths: the Request a router
// decodes and the Reply it encodes for every route.request, and the
// healthWire it decodes for every health report. They implement
// msgpack.CustomDecoder and msgpack.CustomEncoder with the library's
// low-level calls, so msgpack.Marshal, msgpack.Unmarshal and
// Encoding.Marshal/Unmarshal pick them up too; UnmarshalRequest and
// AppendReply skip the interface conversions that would move the caller's
// Request and Reply to the heap.
//
// The rule is exactness: a hand decoder yields what msgpack's reflection
// decoder yields for the same type, or refuses what it refuses, and a hand
// encoder writes the bytes msgpack.Marshal writes (FuzzMsgpack* check both).
// That includes the reflection decoder's leniencies: a string may come as str,
// bin or nil; an int or a float64 as any msgpack integer (an int refuses
// floats); nil gives the zero value (nil for a pointer, unchanged for a
// []string); unknown fields are skipped; and a struct may come as an array of
// exactly one value per field, in field order. Two Decoder and Encoder
// settings that natsroute never uses are not honoured: interned strings and
// dictionaries on the decoding side (field names are read as plain strings),
// and UseCompactInts, UseArrayEncodedStructs and SetOmitEmpty on the encoding
// side.
//
// Adding a field: add it to the struct with its msgpack tag, then one case to
// its decoder's switch and one line to its fields method. The field lists
// below come from the struct tags, and TestMsgpackFieldCases fails if a field
// has no case.

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Field names in struct order, as msgpack's reflection codec sees them.
var (
	requestFields    = msgpackFieldNames(reflect.TypeFor[Request]())
	healthWireFields = msgpackFieldNames(reflect.TypeFor[healthWire]())
)

// msgpackFieldNames lists the msgpack names of t's fields in order: the tag's
// name, else the Go name; unexported fields and "-" are left out. (None of
// the types here embeds a struct, which msgpack would inline.)
func msgpackFieldNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("msgpack"), ",")
		if !f.IsExported() || tag == "-" {
			continue
		}
		name := cmp.Or(tag, f.Name)
		if len(name) > maxFieldName {
			panic(fmt.Sprintf("bus: msgpack field %s.%s: name longer than %d bytes", t, f.Name, maxFieldName))
		}
		names = append(names, name)
	}
	return names
}

// maxFieldName bounds the field names above; a map key that is longer names
// no field, so it is read past without being kept.
const maxFieldName = 32

// errArrayStruct is msgpack's error for an array-encoded struct whose length
// is not the number of fields.
var errArrayStruct = errors.New("msgpack: number of fields in array-encoded struct has changed")

// maxPrealloc bounds the capacity reserved for a decoded []string from its
// declared length (the rest grows by append): the length is the sender's
// word, and the decoders may run without scanMsgpack in front.
const maxPrealloc = 1024

// structDecoder walks the fields of one msgpack struct the way the
// reflection decoder does: a map whose keys name fields (unknown ones are
// skipped), nil, or an array of exactly one value per field. Use:
//
//	s, err := decodeStruct(d, fields)
//	if s.zero { reset }
//	for s.next() { switch s.name { case "a": err = ...; default: err = s.noCase() } }
//	return s.err
type structDecoder struct {
	d     *msgpack.Decoder
	names []string // the struct's fields, in order
	n, i  int      // entries in the map or array, entries read
	array bool
	zero  bool   // nil or an empty array: the struct becomes its zero value
	name  string // the current field, one of names
	err   error
	buf   [maxFieldName]byte
}

// decodeStruct reads a struct's header. A code that is neither a map, an
// array nor nil is an error, as in msgpack (an ext header is not skipped
// either).
func decodeStruct(d *msgpack.Decoder, names []string) (structDecoder, error) {
	s := structDecoder{d: d, names: names}
	c, err := d.PeekCode()
	if err != nil {
		return s, err
	}
	switch {
	case c == msgpcode.Nil || msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		s.n, err = d.DecodeMapLen()
		s.zero = s.n < 0
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		s.array = true
		if s.n, err = d.DecodeArrayLen(); err == nil && s.n != 0 && s.n != len(names) {
			err = errArrayStruct
		}
		s.zero = s.n == 0
	default:
		err = fmt.Errorf("msgpack: unexpected code=%x decoding map length", c)
	}
	return s, err
}

// next moves to the next known field, skipping unknown ones; it returns
// false at the end or on an error (in s.err).
func (s *structDecoder) next() bool {
	for s.err == nil && s.i < s.n {
		s.i++
		if s.array {
			s.name = s.names[s.i-1]
			return true
		}
		var name []byte
		if name, s.err = readFieldName(s.d, &s.buf); s.err != nil {
			return false
		}
		for _, f := range s.names {
			if f == string(name) {
				s.name = f
				return true
			}
		}
		s.err = s.d.Skip()
	}
	return false
}

// noCase is the error for a listed field that its decoder's switch forgot.
func (s *structDecoder) noCase() error {
	return fmt.Errorf("bus: msgpack decoder has no case for field %q", s.name)
}

// readFieldName reads a map key as the reflection decoder does (str, bin or
// nil, which is "") into buf, without allocating. A key longer than buf names
// no field: it is read past and returned as "".
func readFieldName(d *msgpack.Decoder, buf *[maxFieldName]byte) ([]byte, error) {
	n, err := d.DecodeBytesLen()
	if err != nil || n <= 0 {
		return nil, err
	}
	r := d.Buffered() // the Decoder's own reader, an io.ByteScanner (see msgpack's Decoder.ResetReader)
	if n > len(buf) {
		if m, err := io.CopyN(io.Discard, r, int64(n)); m < int64(n) {
			return nil, cmp.Or(err, io.ErrUnexpectedEOF)
		}
		return nil, nil
	}
	switch r := r.(type) {
	case *bytes.Reader: // msgpack.Unmarshal's and ours: one copy, and buf stays on the stack
		if m, _ := r.Read(buf[:n]); m < n {
			return nil, io.ErrUnexpectedEOF
		}
	case io.ByteReader: // a bufio.Reader; passing buf to an io.Reader would move it to the heap
		for i := range n {
			if buf[i], err = r.ReadByte(); err != nil {
				return nil, err
			}
		}
	default:
		return nil, errors.New("msgpack: the Decoder's reader has no ReadByte")
	}
	return buf[:n], nil
}

// decodeStrings decodes a []string field as the reflection decoder does: nil
// leaves it as it was; otherwise it becomes non-nil, reusing its array.
func decodeStrings(d *msgpack.Decoder, p *[]string) error {
	n, err := d.DecodeArrayLen()
	if err != nil || n < 0 {
		return err
	}
	s := (*p)[:0]
	if s == nil {
		s = make([]string, 0, min(n, maxPrealloc))
	}
	for range n {
		v, err := d.DecodeString()
		if err != nil {
			return err
		}
		s = append(s, v)
	}
	*p = s
	return nil
}

// decodePtr decodes a pointer field as the reflection decoder does: nil
// makes it nil; anything else is decoded into what it points to, which is
// slot when it was nil.
func decodePtr[T any](d *msgpack.Decoder, p **T, slot *T, decode func(*msgpack.Decoder) (T, error)) error {
	if c, err := d.PeekCode(); err == nil && c == msgpcode.Nil {
		*p = nil
		return d.DecodeNil()
	}
	if *p == nil {
		*p = slot
	}
	v, err := decode(d)
	if err == nil {
		**p = v
	}
	return err
}

// DecodeMsgpack decodes q as msgpack's reflection decoder would.
func (q *Request) DecodeMsgpack(d *msgpack.Decoder) error {
	s, err := decodeStruct(d, requestFields)
	if err != nil {
		return err
	}
	if s.zero {
		*q = Request{}
	}
	for s.next() {
		switch s.name {
		case "strategy":
			q.Strategy, err = d.DecodeString()
		case "key":
			q.Key, err = d.DecodeString()
		case "count":
			q.Count, err = d.DecodeInt()
		case "candidates":
			err = decodeStrings(d, &q.Candidates)
		case "keys":
			err = decodeStrings(d, &q.Keys)
		case "explain":
			q.Explain, err = d.DecodeBool()
		case "pool":
			q.Pool, err = d.DecodeString()
		case "spread":
			q.Spread, err = d.DecodeInt()
		default:
			err = s.noCase()
		}
		if err != nil {
			return err
		}
	}
	return s.err
}

// healthValues holds what a decoded healthWire's pointers point to, so that a
// report costs one allocation for them rather than one per field.
type healthValues struct {
	node                      string
	cpu, mem, latency, weight float64
	conns, interval           int64
}

// DecodeMsgpack decodes w as msgpack's reflection decoder would.
func (w *healthWire) DecodeMsgpack(d *msgpack.Decoder) error {
	s, err := decodeStruct(d, healthWireFields)
	if err != nil {
		return err
	}
	if s.zero {
		*w = healthWire{}
	}
	var v *healthValues
	if s.n > 0 {
		v = new(healthValues)
	}
	for s.next() {
		switch s.name {
		case "node":
			err = decodePtr(d, &w.Node, &v.node, (*msgpack.Decoder).DecodeString)
		case "cpu_usage":
			err = decodePtr(d, &w.CPUUsage, &v.cpu, (*msgpack.Decoder).DecodeFloat64)
		case "memory_usage":
			err = decodePtr(d, &w.MemoryUsage, &v.mem, (*msgpack.Decoder).DecodeFloat64)
		case "active_connections":
			err = decodePtr(d, &w.ActiveConnections, &v.conns, (*msgpack.Decoder).DecodeInt64)
		case "avg_latency_ms":
			err = decodePtr(d, &w.AvgLatencyMS, &v.latency, (*msgpack.Decoder).DecodeFloat64)
		case "weight":
			err = decodePtr(d, &w.Weight, &v.weight, (*msgpack.Decoder).DecodeFloat64)
		case "status":
			w.Status, err = d.DecodeString()
		case "seq":
			w.Seq, err = d.DecodeUint64()
		case "pools":
			err = decodeStrings(d, &w.Pools)
		case "interval_ms":
			err = decodePtr(d, &w.IntervalMS, &v.interval, (*msgpack.Decoder).DecodeInt64)
		case "probe":
			w.Probe, err = d.DecodeBool()
		default:
			err = s.noCase()
		}
		if err != nil {
			return err
		}
	}
	return s.err
}

// Pooled decoders and encoders over byte slices: msgpack.Unmarshal and
// msgpack.Marshal allocate a reader, a buffer and its growth on every call.

type msgpackReader struct {
	r bytes.Reader
	d *msgpack.Decoder
}

var msgpackReaders = sync.Pool{New: func() any {
	m := new(msgpackReader)
	m.d = msgpack.NewDecoder(&m.r) // a bytes.Reader is an io.ByteScanner: no bufio in between
	return m
}}

func getMsgpackReader(data []byte) *msgpackReader {
	m := msgpackReaders.Get().(*msgpackReader)
	m.r.Reset(data)
	return m
}

func (m *msgpackReader) put() {
	m.r.Reset(nil)
	msgpackReaders.Put(m)
}

// unmarshalMsgpack decodes one value from data, which scanMsgpack has
// checked, with a pooled decoder.
func unmarshalMsgpack(data []byte, v any) error {
	m := getMsgpackReader(data)
	defer m.put()
	// The hand decoders directly, without Decode's reflection on v, which
	// would reach them too.
	switch v := v.(type) {
	case *Request:
		if v != nil {
			return v.DecodeMsgpack(m.d)
		}
	case *healthWire:
		if v != nil {
			return v.DecodeMsgpack(m.d)
		}
	}
	return m.d.Decode(v)
}

// UnmarshalRequest is Unmarshal for a Request. Unlike Unmarshal it does not
// take an interface, so q can stay on the caller's stack: decoding a request
// with one key costs one allocation, the key's string.
func (e Encoding) UnmarshalRequest(data []byte, q *Request) error {
	if e == JSON || len(data) == 0 {
		c := *q // only this copy goes to the heap
		err := e.Unmarshal(data, &c)
		*q = c
		return err
	}
	if err := scanMsgpack(data); err != nil {
		return fmt.Errorf("invalid msgpack: %w", err)
	}
	m := getMsgpackReader(data)
	err := q.DecodeMsgpack(m.d)
	m.put()
	if err != nil {
		return fmt.Errorf("invalid msgpack: %w", err)
	}
	return nil
}

// unmarshalHealth is Unmarshal for a health report, typed like
// UnmarshalRequest so that w can stay on the caller's stack.
func (e Encoding) unmarshalHealth(data []byte, w *healthWire) error {
	if e == JSON || len(data) == 0 {
		c := *w
		err := e.Unmarshal(data, &c)
		*w = c
		return err
	}
	if err := scanMsgpack(data); err != nil {
		return fmt.Errorf("invalid msgpack: %w", err)
	}
	m := getMsgpackReader(data)
	err := w.DecodeMsgpack(m.d)
	m.put()
	if err != nil {
		return fmt.Errorf("invalid msgpack: %w", err)
	}
	return nil
}
