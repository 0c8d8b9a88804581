package router

import (
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus"
)

func TestEjectionLength(t *testing.T) {
	for _, c := range []struct {
		repeat int
		want   time.Duration
	}{{1, 30 * time.Second}, {2, time.Minute}, {3, 2 * time.Minute}, {4, 4 * time.Minute}, {5, 5 * time.Minute}, {64, 5 * time.Minute}} {
		if got := ejectionLength(c.repeat, 30*time.Second, 5*time.Minute); got != c.want {
			t.Errorf("ejection %d in a row lasts %v, want %v", c.repeat, got, c.want)
		}
	}
}

func TestEjectHistoryNext(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	if got := (ejectHistory{}).next(t0, 5*time.Minute); got != 1 {
		t.Fatalf("a first ejection is number %d", got)
	}
	h := ejectHistory{repeat: 3, ended: t0}
	if got := h.next(t0.Add(4*time.Minute), 5*time.Minute); got != 4 {
		t.Fatalf("4 min after the third: number %d, want 4", got)
	}
	if got := h.next(t0.Add(6*time.Minute), 5*time.Minute); got != 1 {
		t.Fatalf("6 min after the third (longest 5 min): number %d, want 1", got)
	}
	h = ejectHistory{repeat: 2} // the second is still on
	if got := h.next(t0, 5*time.Minute); got != 3 {
		t.Fatalf("during the second: number %d, want 3", got)
	}
}

func TestDescribeEjection(t *testing.T) {
	for _, c := range []struct {
		rec  bus.Ejection
		left time.Duration
		want string
	}{
		{bus.Ejection{Failures: 5, Callers: 3, Seconds: 30, Repeat: 1}, 30 * time.Second, "ejected: 5 failures from 3 callers, back in 30 s"},
		{bus.Ejection{Failures: 5, Callers: 1, Reason: "timeout", Seconds: 30, Repeat: 1}, 1500 * time.Millisecond, "ejected: 5 failures from 1 caller (last: timeout), back in 2 s"},
		{bus.Ejection{Failures: 7, Callers: 2, Seconds: 240, Repeat: 4}, 239 * time.Second, "ejected: 7 failures from 2 callers, ejection 4 in a row, back in 4 min"},
		{bus.Ejection{Failures: 5, Callers: 2, Seconds: 30, Repeat: 1}, 300 * time.Millisecond, "ejected: 5 failures from 2 callers, back in under a second"},
	} {
		if got := describeEjection(c.rec, c.left); got != c.want {
			t.Errorf("%+v, %v left: %q, want %q", c.rec, c.left, got, c.want)
		}
	}
}
