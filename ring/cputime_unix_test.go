//go:build unix

package ring

import "syscall"

// cpuTime returns the CPU time this process has used (user + system, every
// thread, so GC work counts too), in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
