//go:build !linux

package parallel

import "net"

// SameHostSocketBuffer is 0 (autotuning) where the cache size is not read.
func SameHostSocketBuffer() int { return 0 }

// capSameHostBuffers does nothing on this platform.
func capSameHostBuffers(net.Conn, int) {}
