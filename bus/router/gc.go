package router

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the garbage collector's target that TuneGC sets.
const DefaultGCPercent = 50

// TuneGC sets the garbage collector's target to DefaultGCPercent, unless
// the environment sets GOGC; the router binary calls it at start. A
// router's heap is mostly its rings, which live long, while its garbage
// comes in bursts of ring copies: at Go's default of 100 the heap may grow
// to twice the live one before a collection, and after a burst at 10,000
// members the process held 88 MB for a 29.5 MB live heap (BenchmarkScale).
// At 50 it held 71 MB. The cost is more collections of that long-lived heap
// while rings change (see README, Scale, for what it measured).
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
