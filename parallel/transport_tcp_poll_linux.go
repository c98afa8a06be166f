//go:build linux

package parallel

import (
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sockPoller reads a plain socket without blocking (the descriptor is
// non-blocking, as Go keeps every socket), so that a reader can poll it
// for a while before it parks in the network poller: a parked reader pays
// the kernel's wake-up of its thread, on a VM a halted vCPU's (tens of
// µs), which is most of a small frame's time. Not safe for concurrent
// use: one reader owns it.
type sockPoller struct {
	raw  syscall.RawConn
	b    []byte // the read's buffer, for tryRead
	n    int
	err  error
	read func(fd uintptr) bool
}

// newSockPoller returns a poller for conn, or nil where conn is not a
// plain TCP or Unix socket (TLS: its records are read by crypto/tls).
func newSockPoller(conn net.Conn) *sockPoller {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	switch conn.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &sockPoller{raw: raw}
	p.read = func(fd uintptr) bool {
		for {
			p.n, p.err = unix.Read(int(fd), p.b)
			if p.err != unix.EINTR {
				return true
			}
		}
	}
	return p
}

// tryRead reads what is there into b: (n, nil, true) when it read, (0,
// io.EOF, true) at the end, (0, err, true) when the socket failed, and
// (0, nil, false) when nothing is there yet.
func (p *sockPoller) tryRead(b []byte) (int, error, bool) {
	p.b = b
	err := p.raw.Read(p.read)
	p.b = nil
	if err != nil { // closed
		return 0, err, true
	}
	switch {
	case p.err == unix.EAGAIN:
		return 0, nil, false
	case p.err != nil:
		return 0, p.err, true
	case p.n == 0:
		return 0, io.EOF, true
	}
	return p.n, nil, true
}

// pollRead polls for up to spin (see spinWait) and then falls back to
// conn's blocking read.
func (p *sockPoller) pollRead(conn net.Conn, b []byte, spin time.Duration) (int, error) {
	if spin <= 0 {
		return conn.Read(b)
	}
	var n int
	var err error
	if spinWait(spin, func() bool {
		var done bool
		n, err, done = p.tryRead(b)
		return done
	}) {
		return n, err
	}
	return conn.Read(b)
}
