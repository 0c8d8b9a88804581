package bus

import (
	"errors"
	"strings"
	"testing"
)

func TestFeedback(t *testing.T) {
	for _, enc := range []Encoding{JSON, Msgpack} {
		f := Feedback{Node: "n-1", Pool: "cache", Caller: "svc a/1", Reason: "timeout after 2s"}
		b, err := EncodeFeedback(f, enc)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeFeedback(b, nil)
		if err != nil || got != f {
			t.Fatalf("%v: round trip %+v, %v", enc, got, err)
		}
	}
	if f, err := DecodeFeedback([]byte(`{"node":"a"}`), nil); err != nil || f.PoolOrDefault() != DefaultPool {
		t.Fatalf("node only: %+v, %v", f, err)
	}
	for name, body := range map[string]string{
		"empty":           ``,
		"not json":        `{"node":`,
		"no node":         `{"pool":"p"}`,
		"bad node":        `{"node":"a.b"}`,
		"bad pool":        `{"node":"a","pool":"x y"}`,
		"long reason":     `{"node":"a","reason":"` + strings.Repeat("r", MaxFeedbackText+1) + `"}`,
		"long caller":     `{"node":"a","caller":"` + strings.Repeat("c", MaxFeedbackText+1) + `"}`,
		"control caller":  `{"node":"a","caller":"a\u0007b"}`,
		"10 KB reason":    `{"node":"a","reason":"` + strings.Repeat("r", 10<<10) + `"}`,
		"int node":        `{"node":1}`,
		"trailing":        `{"node":"a"} x`,
		"msgpack garbage": "\xc1",
	} {
		if _, err := DecodeFeedback([]byte(body), nil); !errors.Is(err, ErrInvalidFeedback) {
			t.Errorf("%s: %v, want ErrInvalidFeedback", name, err)
		}
	}
}

func TestProbeSubject(t *testing.T) {
	if got := ProbeSubject("n-1"); got != "health.n-1.probe" {
		t.Fatalf("ProbeSubject = %q", got)
	}
	// health.* matches two tokens: the router's report subscription never
	// takes a probe (checked against a server in embedded_test too).
	if n := strings.Count(ProbeSubject("n"), "."); n != 2 {
		t.Fatalf("probe subject has %d dots", n)
	}
}

func FuzzDecodeFeedback(f *testing.F) {
	f.Add([]byte(`{"node":"n-1","pool":"p","caller":"c","reason":"r"}`))
	f.Add([]byte(`{"node":"n-1","caller":"\u0000"}`))
	m, _ := EncodeFeedback(Feedback{Node: "n", Reason: "x"}, Msgpack)
	f.Add(m)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb, err := DecodeFeedback(data, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalidFeedback) {
				t.Fatalf("error %v does not wrap ErrInvalidFeedback", err)
			}
			return
		}
		if fb.Validate() != nil || len(fb.Reason) > MaxFeedbackText || len(fb.Caller) > MaxFeedbackText {
			t.Fatalf("accepted %+v", fb)
		}
		for _, enc := range []Encoding{JSON, Msgpack} {
			b, err := EncodeFeedback(fb, enc)
			if err != nil {
				t.Fatal(err)
			}
			if back, err := DecodeFeedback(b, nil); err != nil || back != fb {
				t.Fatalf("%v round trip %+v -> %+v, %v", enc, fb, back, err)
			}
		}
	})
}
