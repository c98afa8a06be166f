//go:build !linux

package parallel

import "net"

// sameHostWindow leaves autotuning on where the cache size is not read.
func sameHostWindow() int { return 0 }

// capSameHostBuffers does nothing on this platform.
func capSameHostBuffers(net.Conn, int) {}
