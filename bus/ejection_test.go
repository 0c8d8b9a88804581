package bus

import (
	"errors"
	"strings"
	"testing"
)

func TestEjectionKey(t *testing.T) {
	if got := EjectionKey("", "node-3"); got != "ejected.default.node-3" {
		t.Fatalf("key %q", got)
	}
	for _, c := range []struct {
		key, pool, node string
		ok              bool
	}{
		{"ejected.default.node-3", "default", "node-3", true},
		{"ejected.cache.a_1", "cache", "a_1", true},
		{"ejected.default", "", "", false},
		{"ejected.a.b.c", "", "", false},
		{"ring.default", "", "", false},
		{"ejected..n", "", "", false},
	} {
		pool, node, ok := EjectionFromKey(c.key)
		if ok != c.ok || pool != c.pool || node != c.node {
			t.Errorf("%q: %q %q %v", c.key, pool, node, ok)
		}
	}
}

func TestDecodeEjection(t *testing.T) {
	good := Ejection{Failures: 5, Callers: 2, Reason: "timeout", Seconds: 30, Repeat: 1, Router: "r"}
	data, err := EncodeEjection(good)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `{"failures":5,"callers":2,"reason":"timeout","seconds":30,"repeat":1,"router":"r"}` {
		t.Fatalf("encoded %s", data)
	}
	if got, err := DecodeEjection(data); err != nil || got != good {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []string{
		``, `[]`, `{"failures":5}`, `{"failures":0,"callers":1,"seconds":1,"repeat":1}`,
		`{"failures":2,"callers":3,"seconds":1,"repeat":1}`, `{"failures":5,"callers":2,"seconds":0,"repeat":1}`,
		`{"failures":5,"callers":2,"seconds":86401,"repeat":1}`, `{"failures":5,"callers":2,"seconds":1,"repeat":65}`,
		`{"failures":5,"callers":2,"seconds":"30","repeat":1}`,
		`{"failures":5,"callers":2,"seconds":1,"repeat":1,"reason":"` + strings.Repeat("x", 257) + `"}`,
		`{"failures":5,"callers":2,"seconds":1,"repeat":1,"reason":"` + strings.Repeat("x", 5000) + `"}`,
	} {
		if _, err := DecodeEjection([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%.60q: %v, want ErrMalformed", bad, err)
		}
	}
}

func FuzzDecodeEjection(f *testing.F) {
	f.Add([]byte(`{"failures":5,"callers":2,"reason":"timeout","seconds":30,"repeat":1,"router":"r"}`))
	f.Add([]byte(`{"failures":5,"callers":2,"seconds":1e-300,"repeat":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEjection(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if e.Validate() != nil {
			t.Fatalf("accepted %+v", e)
		}
		b, err := EncodeEjection(e)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := DecodeEjection(b); err != nil || again != e {
			t.Fatalf("round trip %+v: %+v, %v", e, again, err)
		}
	})
}
