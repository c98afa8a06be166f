package parallel

import (
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCapSameHostBuffers: a loopback TCP connection gets the window as its
// send and receive buffers (Linux reports them doubled); a Unix socket is
// left alone; the window comes from the L2 cache's size.
func TestCapSameHostBuffers(t *testing.T) {
	if w := SameHostSocketBuffer(); w < 0 || w%1024 != 0 {
		t.Fatalf("SameHostSocketBuffer() = %d, want half an L2 cache size (or 0 when unknown)", w)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer s.Close()
	if !isSameHostConn(c) || !isSameHostConn(s) {
		t.Fatal("a loopback connection is not seen as same-host")
	}
	const window = 768 << 10
	for _, conn := range []net.Conn{c, s} {
		capSameHostBuffers(conn, window)
		for _, opt := range []int{syscall.SO_SNDBUF, syscall.SO_RCVBUF} {
			if got := sockOpt(t, conn, opt); got != 2*window {
				t.Errorf("%v: socket option %d = %d, want %d (the window, doubled by Linux)", conn.LocalAddr(), opt, got, 2*window)
			}
		}
	}
	// No window: autotuning stays (the buffer is not the window's).
	before := sockOpt(t, c, syscall.SO_RCVBUF)
	capSameHostBuffers(c, 0)
	if got := sockOpt(t, c, syscall.SO_RCVBUF); got != before {
		t.Errorf("window 0 changed SO_RCVBUF %d → %d", before, got)
	}
}

func sockOpt(t *testing.T, conn net.Conn, opt int) int {
	t.Helper()
	rc, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	return v
}

// TestTCPLinksCapSameHostBuffers: both ends of a same-host tcp link carry
// the window (fails when either call site is dropped).
func TestTCPLinksCapSameHostBuffers(t *testing.T) {
	w := SameHostSocketBuffer()
	if w == 0 {
		t.Skip("no L2 cache size in sysfs")
	}
	c := newCluster(t, 2, TransportOptions{Mode: ModeTCP})
	gs := c.groups(t, GroupSpec{Name: "sockbuf", Ranks: seq(2), Generation: 1})
	ctx := testCtx(t, 10*time.Second)
	noErrors(t, "all-reduce", each(2, func(i int) error {
		return gs[i].AllReduce(ctx, make([]float32, 1<<16), Sum)
	}))
	var out, in int
	for _, tr := range c.ts {
		tr.mu.RLock()
		for _, oc := range tr.conns {
			if l, ok := oc.bulk.(*tcpLink); ok {
				out++
				if got := sockOpt(t, l.conn, syscall.SO_SNDBUF); got != 2*w {
					t.Errorf("outbound link SO_SNDBUF %d, want %d", got, 2*w)
				}
			}
		}
		for cl := range tr.inLinks {
			if conn, ok := cl.(*net.TCPConn); ok {
				in++
				if got := sockOpt(t, conn, syscall.SO_RCVBUF); got != 2*w {
					t.Errorf("inbound link SO_RCVBUF %d, want %d", got, 2*w)
				}
			}
		}
		tr.mu.RUnlock()
	}
	if out == 0 || in == 0 {
		t.Fatalf("found %d outbound and %d inbound tcp links, want both", out, in)
	}
}
