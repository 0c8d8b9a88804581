package router

import (
	"runtime/debug"
	"testing"
)

// TestTuneGC: the router's GC target is DefaultGCPercent unless GOGC is
// set, which wins.
func TestTuneGC(t *testing.T) {
	was := debug.SetGCPercent(100)
	defer debug.SetGCPercent(was)
	t.Setenv("GOGC", "")
	TuneGC()
	if got := debug.SetGCPercent(100); got != DefaultGCPercent {
		t.Fatalf("GOGC unset: GC target %d, want %d", got, DefaultGCPercent)
	}
	t.Setenv("GOGC", "100")
	TuneGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC=100: GC target %d, want it left at 100", got)
	}
}
