package router

import (
	"errors"
	"testing"

	"github.com/natsroute/natsroute/bus"
	"github.com/vmihailenco/msgpack/v5"
)

// FuzzDecodeRequest: whatever decodes is either refused as a bad request
// or accepted within the limits, and survives a round trip.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"key":"user-42"}`, `{"keys":["a","b"],"count":2}`, `{"strategy":"ResourceAware","candidates":["a"]}`, `{"key":1}`, `[`} {
		f.Add([]byte(s))
	}
	m, _ := msgpack.Marshal(&bus.Request{Key: "k", Count: 3, Candidates: []string{"x"}, Explain: true})
	f.Add(m)
	r := &Router{cfg: DefaultConfig().withDefaults()}
	r.ch, r.ra = consistentHash{r}, resourceAware{r: r}
	f.Fuzz(func(t *testing.T, data []byte) {
		enc := bus.DetectEncoding(data, nil)
		var q bus.Request
		if err := enc.Unmarshal(data, &q); err != nil {
			return
		}
		s, err := r.validate(&q)
		if err != nil {
			if !errors.Is(err, bus.ErrBadRequest) {
				t.Fatalf("validate: %v is not a bad request", err)
			}
			return
		}
		if q.Count < 1 || q.Count > r.cfg.Limits.MaxCount || len(q.Key) > r.cfg.Limits.MaxKeyBytes || len(q.Candidates) > r.cfg.Limits.MaxCandidates {
			t.Fatalf("accepted out of limits: %+v", q)
		}
		if s.Name() == bus.StrategyConsistentHash && q.Key == "" && q.Keys == nil {
			t.Fatal("ConsistentHash accepted without a key")
		}
		// What was accepted survives a round trip in both encodings.
		for _, e := range []bus.Encoding{bus.JSON, bus.Msgpack} {
			b, err := e.Marshal(&q)
			if err != nil {
				t.Fatal(err)
			}
			var back bus.Request
			if err := e.Unmarshal(b, &back); err != nil {
				t.Fatalf("%v round trip: %v", e, err)
			}
		}
	})
}
