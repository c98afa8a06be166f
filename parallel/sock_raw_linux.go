//go:build linux

package parallel

import (
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawSock does the non-blocking reads and writes of a plain socket (Go
// keeps every socket non-blocking) as raw system calls, outside the
// scheduler's system-call path, and parks in the network poller only when
// the socket is not ready. Through that path each call of a process that
// had gone idle woke sysmon (a futex wake of another thread: 16% of a
// 4-rank shm reader's CPU), which on a small host competes for the cores
// the ranks need; a non-blocking call never waits, so it needs none of it.
// Not safe for concurrent reads (or concurrent writes): one reader and
// one writer own it.
type rawSock struct {
	rc syscall.RawConn

	rb     []byte // the read's buffer
	rn     int
	rerr   syscall.Errno
	wait   bool // the read parks when nothing is there
	readFn func(fd uintptr) bool
	bell   *sockBell // set while the read parks, if not nil (see bellBoard)

	wn   int
	werr syscall.Errno

	iov      [2]unix.Iovec // writev's vectors: header and payload
	vec      [2][]byte
	writevFn func(fd uintptr) bool
	wfd      int32 // the socket, for a polling writer's ppoll
	tryFn    func(fd uintptr) bool
}

// rawSockMax bounds what one raw read or write moves. A raw call holds
// its P; one that ends within sysmon's 20 µs tick loses nothing by that
// (the scheduler's path would not have handed the P off before then
// either), and 64 KiB over loopback takes a few µs. A larger write goes
// through the scheduler's path, which lets another goroutine of this
// process run while the kernel copies.
const rawSockMax = 64 << 10

// newRawSock returns raw I/O for conn, or nil where conn is not a plain
// TCP or Unix socket (TLS: its records are read by crypto/tls).
func newRawSock(conn net.Conn) *rawSock {
	switch conn.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil
	}
	rc, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil
	}
	s := &rawSock{rc: rc}
	s.readFn = func(fd uintptr) bool {
		for {
			n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.rb))), uintptr(len(s.rb)))
			if e == unix.EINTR {
				continue
			}
			s.rn, s.rerr = int(n), e
			if e == unix.EAGAIN && s.wait {
				if s.bell != nil {
					s.bell.fd.Store(int32(fd))
					s.bell.parked.Store(1)
				}
				return false
			}
			return true
		}
	}
	s.tryFn = func(fd uintptr) bool {
		s.wfd = int32(fd)
		s.writevFn(fd)
		return true // never park: pollWritev polls for room
	}
	s.writevFn = func(fd uintptr) bool {
		for {
			k := 0
			for _, b := range s.vec {
				if len(b) > 0 {
					s.iov[k].Base = unsafe.SliceData(b)
					s.iov[k].SetLen(len(b))
					k++
				}
			}
			if k == 0 {
				s.werr = 0
				return true
			}
			n, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&s.iov[0])), uintptr(k))
			if e == unix.EINTR {
				continue
			}
			if e != 0 {
				s.werr = e
				return e != unix.EAGAIN
			}
			s.wn += int(n)
			for i := range s.vec { // drop what went
				d := min(int(n), len(s.vec[i]))
				s.vec[i] = s.vec[i][d:]
				n -= uintptr(d)
			}
		}
	}
	return s
}

// writev writes all of a and then all of b (one system call when the
// socket has room for both), parking in the network poller while it has
// none.
func (s *rawSock) writev(a, b []byte) (int, error) {
	s.vec[0], s.vec[1], s.wn, s.werr = a, b, 0, 0
	err := s.rc.Write(s.writevFn)
	s.vec[0], s.vec[1] = nil, nil
	s.iov[0].Base, s.iov[1].Base = nil, nil
	if err == nil && s.werr != 0 {
		err = s.werr
	}
	return s.wn, err
}

// pollWritev writes all of a and then all of b as writev does, but when
// the socket has no room it polls for up to spin in all (see spinWait; it
// rings d's bells) before it parks in the network poller. A parked writer
// waits for Go's poller, which a process whose other goroutines poll
// runs late (see bellBoard); polling, it writes as soon as its peer has
// read enough.
func (s *rawSock) pollWritev(a, b []byte, spin time.Duration, d *bellBoard) (int, error) {
	s.vec[0], s.vec[1], s.wn = a, b, 0
	defer func() {
		s.vec[0], s.vec[1] = nil, nil
		s.iov[0].Base, s.iov[1].Base = nil, nil
	}()
	start := time.Now()
	for {
		s.werr = 0
		if err := s.rc.Write(s.tryFn); err != nil {
			return s.wn, err
		}
		switch {
		case s.werr == 0:
			return s.wn, nil
		case s.werr != unix.EAGAIN:
			return s.wn, s.werr
		}
		// The whole poll is bounded by spin, also should ppoll say
		// "room" where the write finds none.
		if left := spin - time.Since(start); left <= 0 || !spinWait(d, left, s.writable) {
			s.werr = 0
			err := s.rc.Write(s.writevFn)
			if err == nil && s.werr != 0 {
				err = s.werr
			}
			return s.wn, err
		}
	}
}

// writable reports whether the socket has room to write (one ppoll that
// does not wait).
func (s *rawSock) writable() bool {
	fds := [1]unix.PollFd{{Fd: s.wfd, Events: unix.POLLOUT}}
	var ts unix.Timespec
	k, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	return e != 0 || k > 0 // an error: let the write say what it is
}

// doRead reads into b once it can (wait) or at once; ok false: nothing
// was there (only without wait).
func (s *rawSock) doRead(b []byte, wait bool) (n int, err error, ok bool) {
	s.rb, s.wait = b, wait
	err = s.rc.Read(s.readFn)
	s.rb = nil
	if s.bell != nil {
		s.bell.parked.Store(0)
	}
	switch {
	case err != nil: // closed, or a deadline
		return 0, err, true
	case s.rerr == unix.EAGAIN:
		return 0, nil, false
	case s.rerr != 0:
		return 0, s.rerr, true
	case s.rn == 0 && len(b) > 0:
		return 0, io.EOF, true
	}
	return s.rn, nil, true
}

// tryRead reads what is there into b: (n, nil, true) when it read, (0,
// io.EOF, true) at the end, (0, err, true) when the socket failed, and
// (0, nil, false) when nothing is there yet.
func (s *rawSock) tryRead(b []byte) (int, error, bool) { return s.doRead(b, false) }

// read reads into b, parking in the network poller until something is
// there.
func (s *rawSock) read(b []byte) (int, error) {
	n, err, _ := s.doRead(b, true)
	return n, err
}

// write writes all of b, parking in the network poller while the socket
// has no room.
func (s *rawSock) write(b []byte) (int, error) { return s.writev(b, nil) }

// pollRead polls for up to spin (see spinWait; it rings d's bells) and
// then parks until something is there.
func (s *rawSock) pollRead(b []byte, spin time.Duration, d *bellBoard) (int, error) {
	if spin > 0 {
		var n int
		var err error
		if spinWait(d, spin, func() bool {
			var done bool
			n, err, done = s.tryRead(b)
			return done
		}) {
			return n, err
		}
	}
	return s.read(b)
}

// sockReady reports whether a socket whose reader is parked in the
// network poller has something to read (one ppoll without waiting for
// all of them): the caller, a polling loop, should then let the poller
// run (see bellBoard). A socket closed meanwhile at worst makes it say
// so once too often.
func (d *bellBoard) sockReady() bool {
	if d == nil || d.nsocks.Load() == 0 {
		return false
	}
	var fds [16]unix.PollFd
	n := 0
	d.mu.RLock()
	for _, b := range d.socks {
		if n < len(fds) && b.parked.Load() == 1 {
			fds[n] = unix.PollFd{Fd: b.fd.Load(), Events: unix.POLLIN}
			n++
		}
	}
	d.mu.RUnlock()
	if n == 0 {
		return false
	}
	var ts unix.Timespec
	k, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(n), uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	return e == 0 && k > 0
}
