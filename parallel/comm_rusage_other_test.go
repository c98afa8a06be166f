//go:build !linux

package parallel

// cpuNanos is not measured off Linux.
func cpuNanos() int64 { return 0 }
