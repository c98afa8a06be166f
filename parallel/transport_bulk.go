package parallel

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/mem"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Bulk links. gRPC is how two workers find each other and agree on a
// transport: the dialer's HELLO names its job, generation, wanted
// transport and host boot id; the server's WELCOME names the transport
// chosen and a random secret. For tcp the dialer then opens a second
// connection to the same address (the listener tells the two apart by
// their first bytes) and presents the secret; for shm it connects to the
// server's Unix socket and passes a shared-memory ring with the secret.
// COLLECTIVE and P2P frames then travel on that link, one way (dialer →
// server), in the binary layout below; REJECT, ABORT and GOODBYE stay on
// the gRPC stream, whose keepalive and end still say whether the peer is
// there. A link carries one job generation (the stream's), so a frame's
// job and generation are the link's.
//
// A secret is minted per stream (so per peer, job and generation), is good
// for one bulk connection, and expires with its stream: a stray connection
// cannot inject frames. Mutual TLS (issue 17) wraps the bulk connection
// after its 8-byte preamble, which stays in the clear so that the listener
// can route it.

// TransportMode chooses how tensor payloads travel to peers.
type TransportMode int

const (
	// ModeAuto uses shared memory with peers on this host (the same boot
	// id) and a raw TCP connection with the others. The default.
	ModeAuto TransportMode = iota
	// ModeGRPC keeps payloads on the gRPC Peer stream: the fallback.
	ModeGRPC
	// ModeTCP uses a raw connection per peer and direction.
	ModeTCP
	// ModeShm uses a shared-memory ring per peer and direction; every
	// peer must be on this host.
	ModeShm
)

// String returns "auto", "grpc", "tcp" or "shm".
func (m TransportMode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeGRPC:
		return "grpc"
	case ModeTCP:
		return "tcp"
	case ModeShm:
		return "shm"
	}
	return fmt.Sprintf("TransportMode(%d)", int(m))
}

// ParseTransportMode parses "auto", "grpc", "tcp" or "shm".
func ParseTransportMode(s string) (TransportMode, error) {
	for _, m := range []TransportMode{ModeAuto, ModeGRPC, ModeTCP, ModeShm} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("transport %q: want auto, tcp, shm or grpc", s)
}

func (m TransportMode) proto() loomv1.DataTransport {
	switch m {
	case ModeGRPC:
		return loomv1.DataTransport_DATA_TRANSPORT_GRPC
	case ModeTCP:
		return loomv1.DataTransport_DATA_TRANSPORT_TCP
	case ModeShm:
		return loomv1.DataTransport_DATA_TRANSPORT_SHM
	}
	return loomv1.DataTransport_DATA_TRANSPORT_AUTO
}

// transportName is how logs and LinkInfo name a chosen transport.
func transportName(d loomv1.DataTransport) string {
	switch d {
	case loomv1.DataTransport_DATA_TRANSPORT_TCP:
		return "tcp"
	case loomv1.DataTransport_DATA_TRANSPORT_SHM:
		return "shm"
	}
	return "grpc"
}

// chooseTransport settles the transport of one direction from what the
// dialer asked for and the server's own mode. An explicit mode on one side
// wins over auto; two different explicit modes, or shm across hosts, are
// an error that names the fix.
func chooseTransport(asked loomv1.DataTransport, askedHost string, mine TransportMode, myHost string, shmOK bool) (loomv1.DataTransport, string, error) {
	const (
		auto = loomv1.DataTransport_DATA_TRANSPORT_AUTO
		grpc = loomv1.DataTransport_DATA_TRANSPORT_GRPC
		tcp  = loomv1.DataTransport_DATA_TRANSPORT_TCP
		shm  = loomv1.DataTransport_DATA_TRANSPORT_SHM
	)
	if asked == loomv1.DataTransport_DATA_TRANSPORT_UNSPECIFIED {
		return grpc, "the peer predates bulk links", nil
	}
	if asked < auto || asked > shm {
		return 0, "", fmt.Errorf("unknown transport %v", asked)
	}
	own := mine.proto()
	want := asked
	switch {
	case asked == auto:
		want = own
	case own != auto && own != asked:
		return 0, "", fmt.Errorf("the dialer wants transport %s but this worker runs --transport %s: give every worker of the job the same transport (or auto)", transportName(asked), mine)
	}
	sameHost := askedHost != "" && askedHost == myHost
	switch want {
	case grpc:
		return grpc, "asked for", nil
	case tcp:
		return tcp, "asked for", nil
	case shm:
		if !sameHost {
			return 0, "", fmt.Errorf("transport shm needs both workers on one host, but their boot ids differ (%q, %q): use --transport auto or tcp", askedHost, myHost)
		}
		if !shmOK {
			return 0, "", errors.New("transport shm is not available on this worker (Linux only): use --transport auto or tcp")
		}
		return shm, "asked for", nil
	}
	// Both auto.
	switch {
	case sameHost && shmOK:
		return shm, "same host", nil
	case sameHost:
		return tcp, "same host, but shared memory is not available here", nil
	}
	return tcp, "different hosts", nil
}

// hostID returns the kernel's boot id: processes that see the same one
// share a kernel, so shared memory between them works.
func hostID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// LinkInfo describes how payloads travel to one peer.
type LinkInfo struct {
	Peer       string // the peer's address
	Job        string
	Generation uint64
	Transport  string // "shm", "tcp" or "grpc"
	Reason     string // why this transport: "same host", "different hosts", "asked for", a fallback's cause
}

// Shared-memory defaults, chosen by measurement (see the package doc).
const (
	DefaultShmRingBytes = 1 << 20
	DefaultPollSpin     = 50 * time.Microsecond
)

// A wait that expects a by-reference payload to be read (the sender's
// acknowledgement, or the receiver's next frame after one, which its
// peer sends once it has read as much) polls longer than PollSpin: by
// shmSpinPerMiB for each MiB, up to shmSpinMax. Sleeping costs a wake-up
// of the idle core, which on a VM (a halted vCPU) took ~50–150 µs each;
// 2 ranks on 2 vCPUs, PollSpin 50 µs for every wait vs 1 ms: 4 MiB
// all-reduce p50 1,500–1,600 µs vs 856–1,160.
//
// This held also when oversubscribed waits slept at once (before the
// bells, see bellBoard): it waits on a copy in progress, on a core now,
// whose length the bytes say; a sleep would add a wake-up, which
// oversubscribed waits for a core (0.2 ms on average, perf sched). 4
// ranks on 2 cores, 5 alternating rounds, medians of p50: 256 KiB 635 →
// 474 µs, 1 MiB 1,365 → 684, 16 MiB 31.9 → 25.5 ms. Only PollSpin < 0
// (never) turns it off.
const (
	shmSpinPerMiB = 500 * time.Microsecond
	shmSpinMax    = 5 * time.Millisecond
)

// spinFor is how long to poll for something that waits on bytes of
// by-reference payload (or, on a tcp link, of a large frame in flight:
// the rest of a payload being read, a frame waiting for room), when the
// transport polls for base (pollSpin):
// base itself when no bytes are awaited or base is
// negative (PollSpin < 0: never poll).
func spinFor(base int64, bytes uint64) time.Duration {
	if base < 0 || bytes == 0 {
		return time.Duration(base)
	}
	d := shmSpinMax
	if bytes < uint64(shmSpinMax/shmSpinPerMiB)<<20 {
		d = time.Duration(bytes) * shmSpinPerMiB >> 20
	}
	return max(time.Duration(base), d)
}

// acquireTurn takes a token of a bulk link's sem, waiting at most timeout
// and no longer than ctx, abort or the link's failure (done closes, and
// failure says why).
func acquireTurn(ctx context.Context, sem chan struct{}, done <-chan struct{}, failure func() error, timeout time.Duration, abort <-chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case sem <- struct{}{}:
		return nil
	case <-done:
		return failure()
	case <-abort:
		return errAborted
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w: waiting to send for %v", ErrPeerTimeout, timeout)
	}
}

// ackWaiter is a link that may return from a lazy send before its peer
// has read the payload (see wireFrame.lazy).
type ackWaiter interface {
	// settle waits until the peer has read the payload of the link's
	// want-th such frame; after an error the payload may still be read
	// and release must follow.
	settle(ctx context.Context, want uint64, timeout time.Duration, abort <-chan struct{}) error
	// release waits up to grace for that, then breaks the link so that
	// the peer drops what it reads: the payload is not referenced after
	// release returns.
	release(want uint64, grace time.Duration)
}

// ackGrace bounds how long a failed operation waits for its peers to read
// what its lazy sends left them before it breaks those links: a peer that
// is alive reads it at once, and breaking its link first would hide the
// failure's cause (the peer would see this link end before the ABORT
// naming the culprit arrives).
const ackGrace = 250 * time.Millisecond

// Bulk connection preambles: the first 8 bytes a dialer writes.
var (
	tcpPreamble = [8]byte{'L', 'O', 'O', 'M', 'B', 'L', 'K', '1'}
	shmPreamble = [8]byte{'L', 'O', 'O', 'M', 'S', 'H', 'M', '1'}
)

const (
	secretBytes    = 32
	bulkAck        = 'K'
	bulkHandshake  = 10 * time.Second // bound on every step of opening a bulk link
	maxBulkHdr     = 512
	bulkHdrFixed   = 40
	bulkHdrMaxName = 255
)

type secret [secretBytes]byte

func newSecret() (secret, error) {
	var s secret
	_, err := rand.Read(s[:])
	return s, err
}

// bulkOffer is a WELCOME's secret waiting for its bulk connection.
type bulkOffer struct {
	from string // the dialer's advertised address
	job  string
	gen  uint64
	in   *inStream
	kind loomv1.DataTransport
	// local: the dialer's HELLO named this host's boot id, so its process
	// competes for this host's cores (see Transport.pollSpinFor).
	local bool
}

// offer registers a secret for the dialer of in.
func (t *Transport) offer(o *bulkOffer) (secret, error) {
	s, err := newSecret()
	if err != nil {
		return s, fmt.Errorf("minting a link secret: %w", err)
	}
	t.mu.Lock()
	t.offers[s] = o
	t.mu.Unlock()
	return s, nil
}

// redeem takes the offer of s, once.
func (t *Transport) redeem(s secret) *bulkOffer {
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.offers[s]
	delete(t.offers, s)
	return o
}

// forget drops every unredeemed offer of in.
func (t *Transport) forget(in *inStream) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s, o := range t.offers {
		if o.in == in {
			delete(t.offers, s)
		}
	}
}

// bulkHeader is a frame header on a bulk link. Layout, little-endian:
//
//	0  u8  kind         1 u8 op        2 u8 len(group)   3 u8 flags
//	4  u32 tag          8 i32 src_rank 12 u32 header length (padded)
//	16 u64 seq          24 u64 length (elements of the call's buffer)
//	32 u64 payload bytes
//	40 group name, then zero padding to the header length
//
// followed by the payload. The header length is a multiple of the link's
// alignment (4 on tcp, 64 on shm), so payloads stay float32-aligned.
type bulkHeader struct {
	kind    loomv1.FrameKind
	op      loomv1.CollectiveOp
	flags   byte // transport-specific (shm: the payload is by reference)
	tag     uint32
	srcRank int32
	hdrLen  int
	seq     uint64
	length  uint64
	payLen  int
	group   []byte // aliases the read buffer
}

// putBulkHeader writes f's header, padded to a multiple of align, into b
// (which must hold maxBulkHdr bytes) and returns its length.
func putBulkHeader(b []byte, f *wireFrame, payLen, align int) int {
	n := (bulkHdrFixed + len(f.group) + align - 1) / align * align
	b = b[:n]
	b[0], b[1], b[2], b[3] = byte(f.kind), byte(f.op), byte(len(f.group)), 0
	binary.LittleEndian.PutUint32(b[4:], f.tag)
	binary.LittleEndian.PutUint32(b[8:], uint32(f.srcRank))
	binary.LittleEndian.PutUint32(b[12:], uint32(n))
	binary.LittleEndian.PutUint64(b[16:], f.seq)
	binary.LittleEndian.PutUint64(b[24:], f.length)
	binary.LittleEndian.PutUint64(b[32:], uint64(payLen))
	clear(b[bulkHdrFixed+copy(b[bulkHdrFixed:], f.group):])
	return n
}

var errBulkProtocol = errors.New("bulk link protocol error")

// parseBulkHeader decodes the header at the start of b. need > len(b)
// means more bytes are needed (need is then at least bulkHdrFixed).
func parseBulkHeader(b []byte, maxPayload int) (h bulkHeader, need int, err error) {
	if len(b) < bulkHdrFixed {
		return h, bulkHdrFixed, nil
	}
	h.hdrLen = int(binary.LittleEndian.Uint32(b[12:]))
	gl := int(b[2])
	if h.hdrLen < bulkHdrFixed+gl || h.hdrLen > maxBulkHdr || h.hdrLen%4 != 0 {
		return h, 0, fmt.Errorf("%w: header length %d for a group name of %d bytes", errBulkProtocol, h.hdrLen, gl)
	}
	if len(b) < h.hdrLen {
		return h, h.hdrLen, nil
	}
	h.kind = loomv1.FrameKind(b[0])
	h.op = loomv1.CollectiveOp(b[1])
	h.flags = b[3]
	h.tag = binary.LittleEndian.Uint32(b[4:])
	h.srcRank = int32(binary.LittleEndian.Uint32(b[8:]))
	h.seq = binary.LittleEndian.Uint64(b[16:])
	h.length = binary.LittleEndian.Uint64(b[24:])
	pl := binary.LittleEndian.Uint64(b[32:])
	if pl > uint64(maxPayload) || pl%4 != 0 {
		return h, 0, fmt.Errorf("%w: payload of %d bytes (at most %d, a multiple of 4)", errBulkProtocol, pl, maxPayload)
	}
	h.payLen = int(pl)
	h.group = b[bulkHdrFixed : bulkHdrFixed+gl]
	return h, h.hdrLen, nil
}

// inLink is the receiving end of a bulk link: it routes each frame to its
// group's mailbox. Only the link's reader goroutine uses it.
type inLink struct {
	t         *Transport
	offer     *bulkOffer
	kind      string
	cache     []routeEntry // groups seen on this link
	ended     atomic.Bool  // the sender's GOODBYE arrived: a clean end
	done      chan struct{}
	abortOnce sync.Once
	closer    io.Closer // breaks the link (abort)
}

type routeEntry struct {
	name string
	g    *Group
}

func newInLink(t *Transport, o *bulkOffer, kind string, c io.Closer) *inLink {
	return &inLink{t: t, offer: o, kind: kind, done: make(chan struct{}), closer: c}
}

// abort breaks the link so that its reader stops (linkAborter).
func (l *inLink) abort(err error) {
	l.abortOnce.Do(func() {
		l.t.log.Warn("breaking a bulk link", "peer", l.offer.from, "transport", l.kind, "err", err)
		l.closer.Close()
	})
}

// route finds the mailbox of a frame from src for group name. It returns
// a nil box and no reason when the group is not (or no longer) known by
// name here: the caller then hands the whole frame to Transport.deliver,
// which holds it for a group still to be created or rejects it.
func (l *inLink) route(name []byte, src int32) (*mailbox, string) {
	g, closed := l.cached(name)
	if closed {
		return nil, ""
	}
	if g == nil {
		key := groupKey{l.offer.job, l.offer.gen, string(name)}
		l.t.mu.RLock()
		g = l.t.groups[key]
		l.t.mu.RUnlock()
		if g == nil || g.closed.Load() {
			return nil, ""
		}
		l.cache = append(l.cache, routeEntry{key.name, g})
	}
	return l.routeTo(g, src)
}

// routeCached is route for a group this link has routed to before, and
// otherwise (nil, "", false): it never waits for the transport's lock.
func (l *inLink) routeCached(name []byte, src int32) (*mailbox, string, bool) {
	g, closed := l.cached(name)
	if g == nil || closed {
		return nil, "", false
	}
	box, reason := l.routeTo(g, src)
	return box, reason, true
}

// cached returns the group named name from the link's cache, if there,
// and whether it was there but has closed (it is dropped then).
func (l *inLink) cached(name []byte) (*Group, bool) {
	for i := range l.cache {
		if e := &l.cache[i]; e.name == string(name) {
			if e.g.closed.Load() {
				l.cache = append(l.cache[:i], l.cache[i+1:]...)
				return nil, true
			}
			return e.g, false
		}
	}
	return nil, false
}

// routeTo is route's check of a frame from src for g.
func (l *inLink) routeTo(g *Group, src int32) (*mailbox, string) {
	if g.superseded.Load() {
		return nil, fmt.Sprintf("job %q generation %d is superseded here", g.spec.Job, g.spec.Generation)
	}
	i, ok := g.index[int(src)]
	if !ok || i == g.me {
		return nil, fmt.Sprintf("rank %d is not a peer in group %q", src, g.spec.Name)
	}
	if g.addrs[i] != l.offer.from {
		return nil, fmt.Sprintf("a frame for rank %d (%s) came from %s", src, g.addrs[i], l.offer.from)
	}
	return g.boxes[i], ""
}

// reject tells the sender, on its gRPC stream, that a frame was refused.
func (l *inLink) reject(h *bulkHeader, group, reason string) {
	l.t.log.Warn("rejected frame", "from", l.offer.from, "job", l.offer.job, "generation", l.offer.gen, "group", group, "reason", reason)
	l.offer.in.send(&wireFrame{kind: loomv1.FrameKind_FRAME_KIND_REJECT, job: l.offer.job, generation: l.offer.gen,
		group: group, seq: h.seq, tag: h.tag, detail: reason})
}

// unrouted hands a frame whose group is not known here to the transport
// (held for the group, or rejected).
func (l *inLink) unrouted(h *bulkHeader, group string, f *wireFrame) {
	f.job, f.generation, f.group = l.offer.job, l.offer.gen, group
	if reason := l.t.deliver(f); reason != "" {
		f.release()
		l.reject(h, group, reason)
	}
}

// handFrame gives a received frame to box, its group's mailbox, or to
// the transport when the group was not routed here (box nil: unrouted;
// only then is the group's name made a string). It reads h.group after
// the payload, so it suits readers whose header bytes stay put (shm's);
// tcp's reader copies the name before reading the payload over it.
func (l *inLink) handFrame(box *mailbox, h *bulkHeader, f *wireFrame) {
	if box != nil {
		box.push(f)
		return
	}
	l.unrouted(h, string(h.group), f)
}

// finish records how the link's reader stopped (err is nil when it read
// the sender's GOODBYE) and tells the transport about a failure.
func (l *inLink) finish(err error) {
	if err == nil && !l.ended.Load() {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && !l.ended.Load() {
		l.t.peerLost(l.offer.from, fmt.Errorf("%w: %s link ended: %v", ErrPeerGone, l.kind, err))
	}
	close(l.done)
}

// eagerFrame makes the frame for h whose payload goes to a pooled buffer
// (no receive was posted for it yet); the caller fills the returned bytes.
// Frame and buffer go back to their pools when the frame is released.
func (t *Transport) eagerFrame(h *bulkHeader) (*wireFrame, []byte) {
	f, _ := t.frames.Get().(*wireFrame)
	if f == nil {
		f = new(wireFrame)
	}
	*f = wireFrame{kind: h.kind, seq: h.seq, tag: h.tag, srcRank: h.srcRank, op: h.op, length: h.length, inLen: h.payLen, pool: &t.frames}
	if h.payLen == 0 {
		return f, nil
	}
	b, pool := t.eager.get(h.payLen)
	if pool != nil {
		f.inArr[0] = mem.NewBuffer(b, pool)
	} else {
		f.inArr[0] = mem.SliceBuffer(*b)
	}
	f.in = f.inArr[:1]
	return f, (*b)[:h.payLen]
}

// muxListener serves gRPC and raw bulk connections on one port: a bulk
// connection starts with tcpPreamble, anything else (HTTP/2's preface, a
// TLS hello) is gRPC's.
type muxListener struct {
	base net.Listener
	grpc chan net.Conn
	bulk func(net.Conn)
	done chan struct{}
	once sync.Once
}

func newMuxListener(base net.Listener, bulk func(net.Conn)) *muxListener {
	m := &muxListener{base: base, grpc: make(chan net.Conn), bulk: bulk, done: make(chan struct{})}
	go m.loop()
	return m
}

func (m *muxListener) loop() {
	for {
		c, err := m.base.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.Close()
			return
		}
		go m.sniff(c)
	}
}

func (m *muxListener) sniff(c net.Conn) {
	var pre [8]byte
	c.SetReadDeadline(time.Now().Add(bulkHandshake))
	if _, err := io.ReadFull(c, pre[:]); err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	if pre == tcpPreamble {
		m.bulk(c)
		return
	}
	select {
	case m.grpc <- &prefixConn{Conn: c, prefix: pre[:]}:
	case <-m.done:
		c.Close()
	}
}

// Accept returns the next gRPC connection.
func (m *muxListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.grpc:
		return c, nil
	case <-m.done:
		return nil, &net.OpError{Op: "accept", Net: m.base.Addr().Network(), Addr: m.base.Addr(), Err: net.ErrClosed}
	}
}

// Close closes the listener.
func (m *muxListener) Close() error {
	m.once.Do(func() {
		close(m.done)
		m.base.Close()
	})
	return nil
}

// Addr is the base listener's address.
func (m *muxListener) Addr() net.Addr { return m.base.Addr() }

// prefixConn gives back the bytes the listener read to route it.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// readPreamble reads a bulk connection's secret (after its preamble) and
// redeems it.
func (t *Transport) redeemFrom(r io.Reader, kind loomv1.DataTransport) (*bulkOffer, error) {
	var s secret
	if _, err := io.ReadFull(r, s[:]); err != nil {
		return nil, fmt.Errorf("reading the link secret: %w", err)
	}
	o := t.redeem(s)
	if o == nil {
		return nil, errors.New("unknown or used link secret")
	}
	if o.kind != kind && !(o.kind == loomv1.DataTransport_DATA_TRANSPORT_SHM && kind == loomv1.DataTransport_DATA_TRANSPORT_TCP) {
		return nil, fmt.Errorf("link secret issued for %s, presented on %s", transportName(o.kind), transportName(kind))
	}
	return o, nil
}

// bind attaches a started inbound link to its gRPC stream, so that the
// stream's end waits for the link's.
func (in *inStream) bind(l *inLink) {
	in.bulkMu.Lock()
	in.bulk = l
	in.bulkMu.Unlock()
}

func (in *inStream) boundLink() *inLink {
	in.bulkMu.Lock()
	defer in.bulkMu.Unlock()
	return in.bulk
}

// eagerPool recycles the buffers of frames that arrive on a bulk link
// before their receive is posted, in power-of-two size classes from 4 KiB
// to 4 MiB (larger ones are allocated). Safe for concurrent use.
type eagerPool struct {
	classes [11]framePool // 4 KiB << i
}

func newEagerPool() *eagerPool {
	p := &eagerPool{}
	for i := range p.classes {
		p.classes[i].size = 4 << 10 << i
	}
	return p
}

// get returns a buffer of n bytes and the pool it goes back to (nil: not
// pooled).
func (p *eagerPool) get(n int) (*[]byte, *framePool) {
	for i := range p.classes {
		if c := &p.classes[i]; n <= c.size {
			return c.Get(n), c
		}
	}
	b := make([]byte, n)
	return &b, nil
}

// askMode is the transport this worker asks its peers for.
func (t *Transport) askMode() TransportMode { return t.opts.Mode }

// welcome answers a HELLO: it settles the transport of the dialer's
// direction and, for a bulk link, mints the secret the dialer presents.
// A refusal is a WELCOME without a transport and with the reason.
func (t *Transport) welcome(h *wireFrame, in *inStream) (*wireFrame, error) {
	w := &wireFrame{kind: loomv1.FrameKind_FRAME_KIND_WELCOME, srcAddr: t.addr}
	kind, reason, err := chooseTransport(h.transport, h.bootID, t.opts.Mode, t.opts.HostID, t.shm != nil)
	if err != nil {
		t.log.Warn("refused a peer's data transport", "peer", h.srcAddr, "err", err)
		w.detail = fmt.Sprintf("worker %s: %v", t.addr, err)
		return w, nil
	}
	w.transport, w.detail = kind, reason
	if kind == loomv1.DataTransport_DATA_TRANSPORT_TCP || kind == loomv1.DataTransport_DATA_TRANSPORT_SHM {
		local := h.bootID != "" && h.bootID == t.opts.HostID
		sec, err := t.offer(&bulkOffer{from: h.srcAddr, job: h.job, gen: h.generation, in: in, kind: kind, local: local})
		if err != nil {
			return nil, err
		}
		w.secret = sec[:]
		if kind == loomv1.DataTransport_DATA_TRANSPORT_SHM {
			w.shmAddr = t.shm.addr
		}
	}
	return w, nil
}

// openBulk opens the bulk link the WELCOME chose. With ModeAuto a link
// that cannot be opened falls back (shm → tcp → the gRPC stream) and the
// LinkInfo says why; with an explicit mode it is an error.
func (oc *outConn) openBulk(w *wireFrame) (LinkInfo, error) {
	t := oc.t
	li := LinkInfo{Peer: oc.addr, Job: oc.key.job, Generation: oc.key.generation, Transport: transportName(w.transport), Reason: w.detail}
	fallback := func(what string, err error) error {
		if t.opts.Mode != ModeAuto {
			return fmt.Errorf("%w: opening the %s link: %v", ErrPeerGone, what, err)
		}
		t.log.Warn("bulk link failed; falling back", "peer", oc.addr, "transport", what, "err", err)
		li.Reason = fmt.Sprintf("%s link failed: %v", what, err)
		return nil
	}
	switch w.transport {
	case loomv1.DataTransport_DATA_TRANSPORT_SHM:
		l, err := dialShmLink(oc.ctx, oc, w.shmAddr, w.secret)
		if err == nil {
			return li, oc.setBulk(l)
		}
		if err := fallback("shm", err); err != nil {
			return li, err
		}
		li.Transport = "tcp"
		fallthrough
	case loomv1.DataTransport_DATA_TRANSPORT_TCP:
		l, err := dialTCPLink(oc.ctx, oc, oc.addr, w.secret, t.opts.KeepaliveTime, t.opts.TLS)
		if err == nil {
			return li, oc.setBulk(l)
		}
		if err := fallback("tcp", err); err != nil {
			return li, err
		}
		li.Transport = "grpc"
	}
	return li, nil
}

// setBulk installs the connection's bulk link, unless it failed meanwhile.
func (oc *outConn) setBulk(b bulkSender) error {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	if oc.err != nil {
		b.close(oc.err)
		return oc.err
	}
	oc.bulk = b
	return nil
}

// A large frame that arrives just before its receive is posted (the
// sender ran a little ahead) would be copied aside and copied again. Its
// reader waits up to latePostWait for the receive first, yielding to the
// goroutines that would post it.
const (
	latePostBytes = 32 << 10
	latePostWait  = 20 * time.Microsecond
)

// awaitPost waits briefly for the receive of a large frame to be posted
// and claims it; nil: copy the frame aside.
func awaitPost(box *mailbox, h *bulkHeader, ab linkAborter) *recvReq {
	if h.payLen < latePostBytes {
		return nil
	}
	start := time.Now()
	for i := 0; ; i++ {
		runtime.Gosched()
		if r := box.claim(h.kind, h.seq, h.tag, ab); r != nil {
			return r
		}
		if i&7 == 7 && time.Since(start) > latePostWait {
			return nil
		}
	}
}
