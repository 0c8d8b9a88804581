package router

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// TestInParallel: every index runs once, at most v3InFlight at a time, and
// an error comes back while the other writes still finish.
func TestInParallel(t *testing.T) {
	for _, n := range []int{0, 1, 2, v3InFlight, 2*v3InFlight + 7} {
		ran := make([]atomic.Int32, n)
		var now, peak atomic.Int32
		boom := errors.New("boom")
		err := inParallel(context.Background(), n, func(i int) error {
			c := now.Add(1)
			for p := peak.Load(); c > p && !peak.CompareAndSwap(p, c); p = peak.Load() {
			}
			defer now.Add(-1)
			ran[i].Add(1)
			if i == n/2 {
				return boom
			}
			return nil
		})
		if n > 0 && !errors.Is(err, boom) || n == 0 && err != nil {
			t.Fatalf("n=%d: err %v", n, err)
		}
		for i := range n {
			if got := ran[i].Load(); got != 1 {
				t.Fatalf("n=%d: index %d ran %d times", n, i, got)
			}
		}
		if p := peak.Load(); p > v3InFlight {
			t.Fatalf("n=%d: %d in flight, want at most %d", n, p, v3InFlight)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := inParallel(ctx, 100, func(int) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err %v", err)
	}
}
