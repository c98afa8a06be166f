//go:build !unix

package gemm

import "time"

// threadCPU is unknown on this platform: the tuner times by the wall clock.
func threadCPU() (time.Duration, bool) { return 0, false }
