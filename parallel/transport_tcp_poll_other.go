//go:build !linux

package parallel

import (
	"net"
	"time"
)

// sockPoller polls a socket before blocking on Linux; elsewhere reads
// block at once.
type sockPoller struct{}

func newSockPoller(net.Conn) *sockPoller { return nil }

func (p *sockPoller) pollRead(conn net.Conn, b []byte, _ time.Duration) (int, error) {
	return conn.Read(b)
}
