package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/mem"
)

// Load tracks an application's active connections (or requests) and an
// exponentially weighted moving average of its latency, for health reports.
// It is safe for concurrent use; the zero value is ready (alpha 0.2).
type Load struct {
	active atomic.Int64

	mu    sync.Mutex // guards ewma and seen
	ewma  float64    // nanoseconds
	seen  bool
	Alpha float64 // weight of each new sample, in (0, 1]; 0 means 0.2
}

// Begin counts one more active connection or request; call the returned
// function when it ends to count it off and record its latency.
func (l *Load) Begin() (end func()) {
	l.active.Add(1)
	start := time.Now()
	return func() {
		l.active.Add(-1)
		l.Observe(time.Since(start))
	}
}

// Observe records one latency sample.
func (l *Load) Observe(d time.Duration) {
	a := l.Alpha
	if a <= 0 || a > 1 {
		a = 0.2
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.seen {
		l.ewma, l.seen = float64(d), true
		return
	}
	l.ewma += a * (float64(d) - l.ewma)
}

// Active returns the number of connections or requests in progress.
func (l *Load) Active() int64 { return max(0, l.active.Load()) }

// AvgLatency returns the moving average latency (0 before any sample).
func (l *Load) AvgLatency() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.ewma)
}

// SystemHealth is a HealthSource that reads this machine's CPU and memory
// usage (CPU as the average since the previous report) and takes
// connections and latency from load (nil means none).
func SystemHealth(load *Load) HealthSource {
	return HealthFunc(func(ctx context.Context) (Health, error) {
		pct, err := cpu.PercentWithContext(ctx, 0, false)
		if err != nil {
			return Health{}, fmt.Errorf("cpu usage: %w", err)
		}
		if len(pct) == 0 {
			return Health{}, errors.New("cpu usage: no reading")
		}
		vm, err := mem.VirtualMemoryWithContext(ctx)
		if err != nil {
			return Health{}, fmt.Errorf("memory usage: %w", err)
		}
		h := Health{CPUUsage: clamp(pct[0]), MemoryUsage: clamp(vm.UsedPercent)}
		if load != nil {
			h.ActiveConnections, h.AvgLatency = load.Active(), min(load.AvgLatency(), MaxLatency)
		}
		return h, nil
	})
}

func clamp(p float64) float64 { return min(max(p, 0), 100) }
