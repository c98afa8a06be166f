package parallel

import "net"

// isSameHostConn reports whether conn joins two addresses of this host (a
// loopback address, or the same address at both ends).
func isSameHostConn(conn net.Conn) bool {
	l, lok := conn.LocalAddr().(*net.TCPAddr)
	r, rok := conn.RemoteAddr().(*net.TCPAddr)
	return lok && rok && (r.IP.IsLoopback() || r.IP.Equal(l.IP))
}

// capSameHostBuffers sets conn's send and receive buffers (SO_SNDBUF,
// SO_RCVBUF) to window bytes when conn is a same-host TCP connection and
// window > 0 (see SameHostSocketBuffer); it is a hint, and a refusal leaves
// autotuning on.
func capSameHostBuffers(conn net.Conn, window int) {
	tc, ok := conn.(*net.TCPConn)
	if !ok || window <= 0 || !isSameHostConn(conn) {
		return
	}
	_ = tc.SetReadBuffer(window)
	_ = tc.SetWriteBuffer(window)
}
