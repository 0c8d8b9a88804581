//go:build !race && unix

// Not under -race: the race detector makes sync.Pool drop items at random,
// which would fail TestCodecAllocs and mislead the benchmarks. Unix for
// getrusage.

package bus

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// unmarshalReflection is Encoding.Unmarshal's msgpack path as it was before
// the hand-driven decoders: scanMsgpack, then a pooled msgpack.Decoder on a
// new bytes.Reader. Given a requestRef or a healthWireRef, msgpack decodes by
// reflection.
func unmarshalReflection(data []byte, v any) error {
	if err := scanMsgpack(data); err != nil {
		return fmt.Errorf("invalid msgpack: %w", err)
	}
	dec := msgpack.GetDecoder()
	defer msgpack.PutDecoder(dec)
	dec.Reset(bytes.NewReader(data))
	return dec.Decode(v)
}

// validateLikeRouter does what Router.validate does to a request that
// passes (limits, defaults, the choice of strategy), with the default
// limits. It is a copy so that this benchmark measures the codec, whatever
// the router's validation grows into.
func validateLikeRouter(q *Request) (string, error) {
	lim := benchLimits
	if q.Key != "" && q.Keys != nil {
		return "", badRequest("set key or keys, not both")
	}
	if len(q.Key) > lim.MaxKeyBytes || q.Count < 0 || q.Count > lim.MaxCount ||
		len(q.Candidates) > lim.MaxCandidates || len(q.Keys) > lim.MaxBatch {
		return "", badRequest("over a limit")
	}
	q.Count = max(q.Count, 1)
	for _, c := range q.Candidates {
		if err := ValidateNodeID(c); err != nil {
			return "", badRequest("%v", err)
		}
	}
	if q.Pool != "" {
		if err := ValidatePoolName(q.Pool); err != nil {
			return "", badRequest("%v", err)
		}
	}
	if q.Spread < 0 || q.Spread > lim.MaxCount || q.Spread > 1 && (q.Count > 1 || q.Keys != nil || q.Key == "") {
		return "", badRequest("bad spread")
	}
	switch {
	case q.Strategy == "" && (q.Key != "" || q.Keys != nil), q.Strategy == StrategyConsistentHash:
		return StrategyConsistentHash, nil
	case q.Strategy == "", q.Strategy == StrategyResourceAware:
		return StrategyResourceAware, nil
	}
	return "", badRequest("unknown strategy")
}

// benchLimits are the router's default limits (router.DefaultConfig).
// badRequest is the router's 400.
func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

var benchLimits = struct{ MaxKeyBytes, MaxCandidates, MaxBatch, MaxCount int }{1024, 1000, 1000, 32}

// codecRound is what a router does around its strategy for one request:
// decode, validate, encode the reply. Each variant returns the reply's bytes.
var codecRound = []struct {
	name  string
	round func(data []byte) ([]byte, error)
}{
	// Before this change: reflection both ways, the Request and the Reply
	// moved to the heap by the interfaces.
	{"reflection", func(data []byte) ([]byte, error) {
		var q requestRef
		if err := unmarshalReflection(data, &q); err != nil {
			return nil, err
		}
		s, err := validateLikeRouter((*Request)(&q))
		if err != nil {
			return nil, err
		}
		reply := replyRef{Node: "node-042", Strategy: s, Revision: 123456}
		return msgpack.Marshal(&reply)
	}},
	// Encoding.Unmarshal and Encoding.Marshal, as router.go calls them
	// today: hand codecs behind the interfaces, pooled decoder and encoder.
	{"interface", func(data []byte) ([]byte, error) {
		var q Request
		if err := Msgpack.Unmarshal(data, &q); err != nil {
			return nil, err
		}
		s, err := validateLikeRouter(&q)
		if err != nil {
			return nil, err
		}
		reply := Reply{Node: "node-042", Strategy: s, Revision: 123456}
		return Msgpack.Marshal(&reply)
	}},
	// UnmarshalRequest and AppendReply: nothing moves to the heap but the
	// key and the reply's bytes.
	{"hand", func(data []byte) ([]byte, error) {
		var q Request
		if err := Msgpack.UnmarshalRequest(data, &q); err != nil {
			return nil, err
		}
		s, err := validateLikeRouter(&q)
		if err != nil {
			return nil, err
		}
		reply := Reply{Node: "node-042", Strategy: s, Revision: 123456}
		return Msgpack.AppendReply(nil, &reply)
	}},
}

// BenchmarkCodec measures decode + validate + encode for a single-key
// msgpack request, {"key": "user-42"}, each way in one run.
func BenchmarkCodec(b *testing.B) {
	data, err := msgpack.Marshal(&Request{Key: "user-42"})
	if err != nil {
		b.Fatal(err)
	}
	var want []byte
	for _, c := range codecRound {
		out, err := c.round(data)
		if err != nil || want != nil && !bytes.Equal(out, want) {
			b.Fatalf("%s: %x, %v; want %x", c.name, out, err, want)
		}
		want = out
		b.Run("path="+c.name, func(b *testing.B) {
			loop(b, func() error { _, err := c.round(data); return err })
		})
	}
}

// BenchmarkDecodeHealth measures a health report's decoding as the router's
// ingest does it: the msgpack decode alone by reflection and by hand, then
// DecodeHealth whole (decode by hand, checks, Validate).
func BenchmarkDecodeHealth(b *testing.B) {
	data, err := EncodeHealth("node-042", Health{CPUUsage: 42.5, MemoryUsage: 61, ActiveConnections: 1234, AvgLatency: 3_500_000, Seq: 1 << 62}, Msgpack)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("path=reflection", func(b *testing.B) {
		loop(b, func() error {
			var w healthWireRef
			return unmarshalReflection(data, &w)
		})
	})
	b.Run("path=hand", func(b *testing.B) {
		loop(b, func() error {
			var w healthWire
			return Msgpack.Unmarshal(data, &w)
		})
	})
	b.Run("path=hand+checks", func(b *testing.B) {
		loop(b, func() error {
			_, err := DecodeHealth("node-042", data, nil)
			return err
		})
	})
}

// loop runs f for b.Loop and reports, next to ns/op, the process's CPU time
// per call (user and system, GC included). On the 2-core machine shared by
// several engineers (load average 9 to 12), ns/op of the same code spread by
// up to ±100% around its median within one -count 6, cpu-ns/op by ±20-30%:
// compare cpu-ns/op, against the baseline of the same run.
func loop(b *testing.B, f func() error) {
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		if err := f(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestCodecAllocs holds the hand path to its budget: decoding, validating
// and answering a single-key request allocates the key and the reply.
func TestCodecAllocs(t *testing.T) {
	data, err := msgpack.Marshal(&Request{Key: "user-42"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range codecRound {
		if c.name != "hand" {
			continue
		}
		if n := testing.AllocsPerRun(1000, func() {
			if _, err := c.round(data); err != nil {
				t.Fatal(err)
			}
		}); n > 2 {
			t.Fatalf("%s: %v allocations per request, want at most 2", c.name, n)
		}
	}
}
