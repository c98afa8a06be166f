//go:build unix

package gemm

import "golang.org/x/sys/unix"

// threadCPU is the calling OS thread's CPU time in seconds (0 if unknown).
func threadCPU() float64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)*1e-9
}
