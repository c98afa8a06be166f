//go:build !linux

package parallel

// SameHostSocketBuffer is 0 (autotuning) where the cache size is not read.
func SameHostSocketBuffer() int { return 0 }
