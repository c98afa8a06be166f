package parallel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// The tcp transport: a raw stream connection per peer and direction (TCP,
// or a Unix socket when the transport listens on one), opened to the
// peer's data-plane address after the WELCOME. A frame is one vectored
// write of its header and the caller's payload (writev: one system call
// for a small message, no copy in user space); the peer's reader reads
// the header and then the payload straight into the posted destination,
// or into a cache-sized buffer it reduces from.

// tcpReadBufBytes is the reader's buffer: the unit a reduce works in.
// tcpReadAhead is how far past what it needs a read may fetch: enough for
// a few small frames per system call, little enough that a large copied
// payload is read straight into its destination, not through the buffer.
const (
	tcpReadBufBytes = 256 << 10
	tcpReadAhead    = 16 << 10
)

// tlsJoinBytes is the largest payload a TLS link copies next to its
// header, to send both as one record: a TLS record's most.
const tlsJoinBytes = 16<<10 - maxBulkHdr

// tcpLink is the sending end of a tcp link. Safe for concurrent use.
type tcpLink struct {
	oc   *outConn
	conn net.Conn
	sem  chan struct{} // serializes frames
	done chan struct{} // closed when the link fails

	hdr  [maxBulkHdr]byte // guarded by sem
	vec  [2][]byte        // guarded by sem
	bufs net.Buffers      // guarded by sem
	raw  *rawSock         // a plain socket's small writes (see rawSockMax); guarded by sem
	// joined, inside TLS, holds a small frame's header and payload so
	// that they go as one record and one system call (a TLS session has no
	// vectored write); guarded by sem.
	joined []byte

	mu  sync.Mutex
	err error
}

// dialTCPLink opens the bulk connection to addr and presents sec; with
// tlsConf, inside a TLS session that must verify addr's host.
func dialTCPLink(ctx context.Context, oc *outConn, addr string, sec []byte, keepalive time.Duration, tlsConf *tls.Config) (*tcpLink, error) {
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, address = "unix", path
	}
	d := net.Dialer{Timeout: bulkHandshake, KeepAlive: keepalive}
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	conn.SetDeadline(time.Now().Add(bulkHandshake))
	var ack [1]byte
	// The preamble stays in the clear so that the peer's listener can route
	// the connection; TLS wraps conn right after it, and the secret and
	// every frame then travel inside.
	_, err = conn.Write(tcpPreamble[:])
	if err == nil && tlsConf != nil {
		c := tlsConf.Clone()
		if host, _, herr := net.SplitHostPort(addr); herr == nil {
			c.ServerName = host
		}
		tc := tls.Client(conn, c)
		if err = tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
	}
	if err == nil {
		_, err = conn.Write(sec)
	}
	if err == nil {
		_, err = io.ReadFull(conn, ack[:])
	}
	if err == nil && ack[0] != bulkAck {
		err = fmt.Errorf("unexpected answer %q", ack[0])
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	conn.SetDeadline(time.Time{})
	capSameHostBuffers(conn, SameHostSocketBuffer())
	l := &tcpLink{oc: oc, conn: conn, sem: make(chan struct{}, 1), done: make(chan struct{})}
	if tlsConf != nil {
		l.joined = make([]byte, 0, maxBulkHdr+tlsJoinBytes)
	} else {
		l.raw = newRawSock(conn)
	}
	// The server never writes again; a read ending is the connection
	// breaking, which fails the link at once even when nothing is sent.
	go func() {
		_, err := conn.Read(ack[:])
		l.fail(oc.broke("tcp link", err))
	}()
	return l, nil
}

func (l *tcpLink) kind() string { return "tcp" }

// fail breaks the link for good and fails its connection, unless the
// connection is closing anyway (the peer closes our link once it has read
// our GOODBYE, which may be seen before the gRPC stream ends cleanly).
func (l *tcpLink) fail(err error) {
	if errors.Is(err, ErrClosed) {
		l.close(err)
		return
	}
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return
	}
	l.err = err
	close(l.done)
	l.mu.Unlock()
	l.conn.Close()
	l.oc.fail(err)
}

func (l *tcpLink) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// acquire takes the link's turn to write, waiting at most timeout.
func (l *tcpLink) acquire(ctx context.Context, timeout time.Duration, abort <-chan struct{}) error {
	return acquireTurn(ctx, l.sem, l.done, l.failure, timeout, abort)
}

// send writes f: header and payload in one vectored write, from the
// caller's memory. It returns once the kernel has the bytes; a write the
// peer does not drain within timeout breaks the link.
func (l *tcpLink) send(ctx context.Context, f *wireFrame, timeout time.Duration, abort <-chan struct{}) error {
	if err := l.acquire(ctx, timeout, abort); err != nil {
		return err
	}
	defer func() { <-l.sem }()
	if err := l.failure(); err != nil {
		return err
	}
	pay := floatBytes(f.out)
	n := putBulkHeader(l.hdr[:], f, len(pay), 4)
	l.conn.SetWriteDeadline(time.Now().Add(timeout))
	var err error
	switch {
	case len(pay) == 0:
		_, err = l.conn.Write(l.hdr[:n])
	case l.joined != nil && len(pay) <= tlsJoinBytes:
		l.joined = append(append(l.joined[:0], l.hdr[:n]...), pay...)
		_, err = l.conn.Write(l.joined)
	case l.raw != nil && n+len(pay) <= rawSockMax:
		_, err = l.raw.writev(l.hdr[:n], pay)
	case l.raw != nil:
		_, err = l.raw.pollWritev(l.hdr[:n], pay, spinFor(l.oc.t.pollSpin.Load(), uint64(len(pay))), &l.oc.t.bells)
	default:
		l.vec[0], l.vec[1] = l.hdr[:n], pay
		l.bufs = l.vec[:]
		_, err = l.bufs.WriteTo(l.conn)
		l.vec[1] = nil
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("%w: tcp send blocked for %v", ErrPeerTimeout, timeout)
		} else {
			err = fmt.Errorf("%w: tcp send: %v", ErrPeerGone, err)
		}
		l.fail(err)
		return l.failure()
	}
	return nil
}

// closeSend writes the GOODBYE frame after every frame already sent and
// half-closes the connection.
func (l *tcpLink) closeSend(ctx context.Context) {
	if err := l.acquire(ctx, bulkHandshake, nil); err != nil {
		return
	}
	defer func() { <-l.sem }()
	if l.failure() != nil {
		return
	}
	n := putBulkHeader(l.hdr[:], &wireFrame{kind: loomv1.FrameKind_FRAME_KIND_GOODBYE}, 0, 4)
	l.conn.SetWriteDeadline(time.Now().Add(bulkHandshake))
	l.conn.Write(l.hdr[:n])
	if cw, ok := l.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// close breaks the link without failing its connection (which failed
// with err).
func (l *tcpLink) close(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
		close(l.done)
	}
	l.mu.Unlock()
	l.conn.Close()
}

// acceptTCPLink serves a bulk connection the listener routed here: it
// checks the secret, acknowledges, and reads frames until the link ends.
func (t *Transport) acceptTCPLink(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(bulkHandshake))
	// The listener has read the preamble; the rest is inside TLS when the
	// transport has it.
	if t.opts.TLS != nil {
		tc := tls.Server(conn, t.opts.TLS)
		ctx, cancel := context.WithTimeout(context.Background(), bulkHandshake)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			t.log.Warn("refused a bulk connection", "remote", conn.RemoteAddr().String(), "err", fmt.Errorf("tls handshake: %w", err))
			conn.Close()
			return
		}
		conn = tc
	}
	o, err := t.redeemFrom(conn, loomv1.DataTransport_DATA_TRANSPORT_TCP)
	if err != nil {
		t.log.Warn("refused a bulk connection", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	if !t.trackLink(conn) {
		conn.Close()
		return
	}
	defer t.untrackLink(conn)
	if o.local { // its reader polls only while this host's cores allow
		capSameHostBuffers(conn, SameHostSocketBuffer())
		t.hostPeer(o.from, true)
		defer t.hostPeer(o.from, false)
	}
	// Bound before the acknowledgement: once the dialer has it, it may
	// send, say GOODBYE and end its stream, whose end must then wait for
	// this link's.
	l := newInLink(t, o, "tcp", conn)
	o.in.bind(l)
	if _, err := conn.Write([]byte{bulkAck}); err != nil {
		conn.Close()
		l.finish(err)
		return
	}
	conn.SetDeadline(time.Time{})
	r := &tcpReader{inLink: l, conn: conn, buf: make([]byte, tcpReadBufBytes), maxPay: t.opts.MaxFrameBytes,
		raw: newRawSock(conn), spin: &t.pollSpin}
	if r.raw != nil {
		bell := &sockBell{}
		r.raw.bell = bell
		t.bells.addSock(bell)
		defer t.bells.removeSock(bell)
	}
	err = r.run()
	conn.Close()
	l.finish(err)
}

// tcpReader is the receiving end of a tcp link. buf[r:w] holds bytes read
// ahead; buf index ≡ stream offset (mod 4), so payload bytes in buf are
// float32-aligned.
type tcpReader struct {
	*inLink
	conn   net.Conn
	buf    []byte
	r, w   int
	maxPay int
	// raw, where the connection is a plain socket, reads it with raw
	// system calls, polling for spin (the transport's polling time, ns)
	// before a read parks.
	raw  *rawSock
	spin *atomic.Int64
	// expect is how many bytes of the payload being read are still to
	// come (0 between frames): a read waiting on them polls longer (see
	// spinFor), as the sender is writing them now.
	expect int
}

// read reads into b, polling first where it may.
func (c *tcpReader) read(b []byte) (int, error) {
	if c.raw == nil {
		return c.conn.Read(b)
	}
	return c.raw.pollRead(b[:min(len(b), rawSockMax)], spinFor(c.spin.Load(), uint64(c.expect)), &c.t.bells)
}

// fill reads at least need bytes into buf[r:], and at most want (need ≤
// want, need ≤ len(buf) - r%4).
func (c *tcpReader) fill(need, want int) error {
	if c.w-c.r >= need {
		return nil
	}
	if c.r > 0 && c.r+need > len(c.buf) { // make room, keeping the alignment
		k := copy(c.buf[c.r%4:], c.buf[c.r:c.w])
		c.r %= 4
		c.w = c.r + k
	}
	end := min(len(c.buf), c.r+max(want, need))
	for c.w-c.r < need {
		n, err := c.read(c.buf[c.w:end])
		c.w += n
		if err != nil && c.w-c.r < need {
			return err
		}
	}
	return nil
}

// take consumes up to n buffered bytes.
func (c *tcpReader) take(n int) []byte {
	n = min(n, c.w-c.r)
	b := c.buf[c.r : c.r+n]
	c.r += n
	if c.r == c.w {
		c.r, c.w = c.r%4, c.r%4
	}
	return b
}

func (c *tcpReader) run() error {
	for {
		if err := c.fill(bulkHdrFixed, tcpReadAhead); err != nil {
			if errors.Is(err, io.EOF) && c.w == c.r && c.ended.Load() {
				return nil
			}
			return err
		}
		h, need, err := parseBulkHeader(c.buf[c.r:c.w], c.maxPay)
		if err == nil && need > c.w-c.r {
			if err = c.fill(need, tcpReadAhead); err == nil {
				h, _, err = parseBulkHeader(c.buf[c.r:c.w], c.maxPay)
			}
		}
		if err != nil {
			return err
		}
		switch h.kind {
		case loomv1.FrameKind_FRAME_KIND_GOODBYE:
			c.ended.Store(true)
			c.take(h.hdrLen)
			return nil
		case loomv1.FrameKind_FRAME_KIND_COLLECTIVE, loomv1.FrameKind_FRAME_KIND_P2P:
		default:
			return fmt.Errorf("%w: frame kind %v", errBulkProtocol, h.kind)
		}
		// The group name aliases buf, which the payload reads may
		// overwrite: routing and rejecting use it before that.
		box, reason := c.route(h.group, h.srcRank)
		if reason != "" {
			c.reject(&h, string(h.group), reason)
			c.take(h.hdrLen)
			if err := c.skip(h.payLen); err != nil {
				return err
			}
			continue
		}
		if box != nil {
			r := box.claim(h.kind, h.seq, h.tag, c)
			if r == nil {
				r = awaitPost(box, &h, c)
			}
			if r != nil {
				c.take(h.hdrLen)
				cerr := r.check(h.op, h.length, h.payLen)
				if cerr != nil {
					err = c.skip(h.payLen)
				} else {
					err = c.apply(r.dst, r.a)
				}
				if err != nil {
					box.finish(r, fmt.Errorf("%w: tcp link: %v", ErrPeerGone, err))
					return err
				}
				box.finish(r, cerr)
				continue
			}
		}
		f, b := c.t.eagerFrame(&h)
		var group string
		if box == nil {
			group = string(h.group)
		}
		c.take(h.hdrLen)
		if err := c.readFull(b); err != nil {
			f.release()
			return err
		}
		if box != nil {
			box.push(f)
		} else {
			c.unrouted(&h, group, f)
		}
	}
}

// readFull fills b from the buffer and then straight from the connection.
func (c *tcpReader) readFull(b []byte) error {
	k := copy(b, c.take(len(b)))
	if c.raw == nil {
		if k < len(b) {
			_, err := io.ReadFull(c.conn, b[k:])
			return err
		}
		return nil
	}
	defer func() { c.expect = 0 }()
	for k < len(b) {
		c.expect = len(b) - k
		n, err := c.read(b[k:])
		k += n
		if err != nil && k < len(b) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// skip discards n payload bytes.
func (c *tcpReader) skip(n int) error {
	for n > 0 {
		if c.w == c.r {
			if err := c.fill(1, n); err != nil {
				return err
			}
		}
		n -= len(c.take(n))
	}
	return nil
}

// apply moves the payload into dst: copies read straight into dst's
// memory; reductions go through buf, a chunk at a time.
func (c *tcpReader) apply(dst []float32, a apply) error {
	if len(dst) == 0 {
		return nil
	}
	if a == applyCopy {
		return c.readFull(floatBytes(dst))
	}
	di := 0
	defer func() { c.expect = 0 }()
	for di < len(dst) {
		if c.w-c.r < 4 {
			c.expect = 4 * (len(dst) - di)
			// Read the rest of the payload (as much as fits) and the
			// next header.
			if err := c.fill(4, 4*(len(dst)-di)+maxBulkHdr); err != nil {
				return err
			}
		}
		avail := min((c.w-c.r)/4, len(dst)-di)
		b := c.take(4 * avail)
		src := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), avail)
		applyFloats(a, dst[di:di+avail], src)
		di += avail
	}
	return nil
}
