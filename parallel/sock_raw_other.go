//go:build !linux

package parallel

import (
	"net"
	"time"
)

// rawSock does a socket's I/O as raw system calls on Linux; elsewhere
// there is none (newRawSock returns nil) and callers use the net.Conn.
type rawSock struct{ bell *sockBell }

const rawSockMax = 64 << 10

func newRawSock(net.Conn) *rawSock { return nil }

// pollRead and writev are never called: there is no rawSock here.
func (s *rawSock) pollRead([]byte, time.Duration, *bellBoard) (int, error) {
	panic("parallel: no raw socket I/O on this system")
}

func (s *rawSock) writev(_, _ []byte) (int, error) {
	panic("parallel: no raw socket I/O on this system")
}

func (s *rawSock) pollWritev(_, _ []byte, _ time.Duration, _ *bellBoard) (int, error) {
	panic("parallel: no raw socket I/O on this system")
}

// sockReady is false: there are no raw sockets here.
func (*bellBoard) sockReady() bool { return false }
