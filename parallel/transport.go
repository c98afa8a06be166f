package parallel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Transport defaults, chosen by measurement (see the package doc).
const (
	DefaultStreamWindowBytes = 1 << 20
	DefaultConnWindowBytes   = 2 << 20
	DefaultWriteBufferBytes  = 1 << 20
	DefaultReadBufferBytes   = 1 << 20
	DefaultMaxFrameBytes     = 64 << 20
	DefaultKeepaliveTime     = 10 * time.Second
)

// TransportOptions configures a Transport. Zero fields take the defaults.
type TransportOptions struct {
	// ListenAddr is where the Peer service listens, e.g. ":7071" or
	// "127.0.0.1:0" (any free port), or "unix:///path/to.sock" for a Unix
	// socket (peers on the same host only; cheaper than TCP loopback).
	// Ignored when Listener is set.
	ListenAddr string
	// Listener, if set, is used instead of listening on ListenAddr.
	Listener net.Listener
	// AdvertiseAddr is the address peers dial and the address that
	// GroupSpec.Addrs must use for this worker; default: the listener's.
	AdvertiseAddr string
	// Codec is the frame encoding; every worker of a job must use the same.
	Codec Codec
	// StreamWindowBytes and ConnWindowBytes are the HTTP/2 flow-control
	// windows (static; BDP estimation is off).
	StreamWindowBytes int32
	ConnWindowBytes   int32
	// WriteBufferBytes and ReadBufferBytes size gRPC's socket buffers; -1
	// turns a buffer off (every frame is its own system call).
	WriteBufferBytes int
	ReadBufferBytes  int
	// MaxFrameBytes is the largest frame accepted or sent; a group's
	// ChunkBytes must be smaller.
	MaxFrameBytes int
	// KeepaliveTime is the HTTP/2 ping interval on idle connections; a peer
	// that does not answer a ping within it loses its connections, which
	// fails its groups even when no operation is waiting on it. gRPC
	// enforces at least 10s.
	KeepaliveTime time.Duration
	// Logger receives rejected frames, lost peers and the transport chosen
	// for each peer; default: discard.
	Logger *slog.Logger

	// Mode chooses how payloads travel to peers (default ModeAuto: shared
	// memory on this host, raw TCP across hosts; see TransportMode). It
	// governs both what this worker asks of peers and what it accepts.
	Mode TransportMode
	// HostID tells peers on the same host apart from the others for
	// ModeAuto and ModeShm; default: the kernel's boot id. Tests set it to
	// pretend to be on different hosts.
	HostID string
	// ShmRingBytes is the size of each shared-memory ring (one per peer
	// and direction); default DefaultShmRingBytes.
	ShmRingBytes int
	// PollSpin is how long a bulk link's reader keeps polling after the
	// last frame before it sleeps, which costs no CPU but a wake-up: a
	// shared-memory reader polls its ring (then sleeps on its doorbell
	// socket), a tcp reader of a plain socket reads it without blocking
	// (then parks in the network poller); negative: never. Default:
	// DefaultPollSpin while this process and its peers on this host are
	// no more than the host's cores, else never (see
	// Transport.pollSpinFor).
	PollSpin time.Duration
	// ShmNoSingleCopy keeps every shared-memory payload in the ring: peers
	// then never read this process's memory (process_vm_readv), which by
	// default they do for large payloads when the system lets them.
	ShmNoSingleCopy bool
	// shmByRefMin, if set, is the smallest shm payload sent by reference
	// whatever the host (tests: exercising by-reference paths on any
	// number of cores); else shmByRefFor decides.
	shmByRefMin int
	// OnLink, if set, is told the transport chosen for each peer, once per
	// outbound connection (for a metric label).
	OnLink func(LinkInfo)
	// TLS, if set, secures the gRPC Peer streams and the raw tcp bulk
	// links with it, as a server (accepting peers) and as a client
	// (dialling them, with ServerName set to the peer's host): mutual TLS
	// when it requires and presents certificates (security.PeerTLS).
	// Shared-memory links between processes of one host stay as they are:
	// only processes of that host (and user) can open them.
	TLS *tls.Config
}

func (o TransportOptions) withDefaults() TransportOptions {
	if o.StreamWindowBytes == 0 {
		o.StreamWindowBytes = DefaultStreamWindowBytes
	}
	if o.ConnWindowBytes == 0 {
		o.ConnWindowBytes = DefaultConnWindowBytes
	}
	if o.WriteBufferBytes == 0 {
		o.WriteBufferBytes = DefaultWriteBufferBytes
	}
	if o.ReadBufferBytes == 0 {
		o.ReadBufferBytes = DefaultReadBufferBytes
	}
	if o.MaxFrameBytes == 0 {
		o.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if o.KeepaliveTime == 0 {
		o.KeepaliveTime = DefaultKeepaliveTime
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HostID == "" {
		o.HostID = hostID()
	}
	if o.ShmRingBytes == 0 {
		o.ShmRingBytes = DefaultShmRingBytes
	}
	return o
}

// Validate reports every invalid field at once.
func (o TransportOptions) Validate() error {
	var errs []error
	if o.Listener == nil && o.ListenAddr == "" {
		errs = append(errs, errors.New("ListenAddr: empty (want host:port, e.g. 127.0.0.1:0) and no Listener"))
	}
	if o.Codec != CodecRaw && o.Codec != CodecProto {
		errs = append(errs, fmt.Errorf("Codec: %d (want CodecRaw or CodecProto)", int(o.Codec)))
	}
	if o.StreamWindowBytes != 0 && o.StreamWindowBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("StreamWindowBytes: %d (want ≥ 65536, or 0 for the default)", o.StreamWindowBytes))
	}
	if o.ConnWindowBytes != 0 && o.ConnWindowBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("ConnWindowBytes: %d (want ≥ 65536, or 0 for the default)", o.ConnWindowBytes))
	}
	if o.WriteBufferBytes < -1 || o.ReadBufferBytes < -1 {
		errs = append(errs, fmt.Errorf("WriteBufferBytes/ReadBufferBytes: %d/%d (want ≥ 0, or -1 for none)", o.WriteBufferBytes, o.ReadBufferBytes))
	}
	if o.MaxFrameBytes != 0 && o.MaxFrameBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("MaxFrameBytes: %d (want ≥ 65536, or 0 for the default)", o.MaxFrameBytes))
	}
	if o.KeepaliveTime < 0 {
		errs = append(errs, fmt.Errorf("KeepaliveTime: %v (want ≥ 0)", o.KeepaliveTime))
	}
	if o.Mode < ModeAuto || o.Mode > ModeShm {
		errs = append(errs, fmt.Errorf("Mode: %d (want ModeAuto, ModeGRPC, ModeTCP or ModeShm)", int(o.Mode)))
	}
	if o.ShmRingBytes != 0 && (o.ShmRingBytes < 64<<10 || o.ShmRingBytes > 1<<30 || o.ShmRingBytes&(o.ShmRingBytes-1) != 0) {
		errs = append(errs, fmt.Errorf("ShmRingBytes: %d (want a power of two from 65536 to 2^30, or 0 for %d)", o.ShmRingBytes, DefaultShmRingBytes))
	}
	return errors.Join(errs...)
}

// framePool recycles buffers of one size class: gRPC's receive buffers
// (one per HTTP/2 DATA frame, at most 16 KiB) and the raw codec's small
// outgoing messages. Unlike gRPC's default pool it does not zero a buffer
// on reuse — every user overwrites the bytes it hands out — and it is not
// emptied by each GC; it hands out the most recently returned buffer
// first, which is likely still in cache. Measured: zeroing cost as much
// CPU as the data copy itself. Safe for concurrent use.
type framePool struct {
	size int // capacity of pooled buffers; larger requests are not pooled

	mu   sync.Mutex
	free []*[]byte // a stack
}

const (
	framePoolBufBytes = 16 << 10
	framePoolMaxBufs  = 1024
	framePoolMaxBytes = 64 << 20 // what one pool keeps at most (but 4 buffers)
)

// newFramePool returns a pool of buffers of capacity size.
func newFramePool(size int) *framePool { return &framePool{size: size} }

// Get returns a buffer of length n; its contents are arbitrary.
func (p *framePool) Get(n int) *[]byte {
	if n <= p.size {
		p.mu.Lock()
		if k := len(p.free); k > 0 {
			b := p.free[k-1]
			p.free[k-1] = nil
			p.free = p.free[:k-1]
			p.mu.Unlock()
			*b = (*b)[:n]
			return b
		}
		p.mu.Unlock()
		b := make([]byte, n, p.size)
		return &b
	}
	b := make([]byte, n)
	return &b
}

// Put recycles a buffer from Get.
func (p *framePool) Put(b *[]byte) {
	if cap(*b) != p.size {
		return
	}
	p.mu.Lock()
	if len(p.free) < min(framePoolMaxBufs, max(4, framePoolMaxBytes/p.size)) {
		p.free = append(p.free, b)
	}
	p.mu.Unlock()
}

// groupKey names a process group on the wire.
type groupKey struct {
	job        string
	generation uint64
	name       string
}

// Transport is one worker's end of the data plane: it serves the Peer
// service, holds one outbound Exchange stream per peer address, and routes
// incoming frames to the process groups created on it. Safe for concurrent
// use.
type Transport struct {
	opts     TransportOptions
	log      *slog.Logger
	codec    encoding.CodecV2
	lis      net.Listener
	srv      *grpc.Server
	addr     string
	ctx      context.Context // cancelled by Close; parent of outbound streams
	cancel   context.CancelFunc
	dialOpts []grpc.DialOption
	served   chan struct{}

	mux *muxListener
	shm *shmListener // nil: shared memory unavailable
	// pollSpin is how long bulk waits (tcp readers, shm waits) poll now,
	// in nanoseconds (see pollSpinFor); the links read it on every wait.
	pollSpin atomic.Int64
	shmByRef atomic.Int64 // shm payloads of lazy sends of at least this many bytes go by reference (see shmByRefFor)
	// shmByRefWait is shmByRef for sends that wait until they are read.
	shmByRefWait atomic.Int64
	hostMu       sync.Mutex     // guards hostPeers (its own lock: links close under others)
	hostPeers    map[string]int // open links to peers on this host (shm either direction, tcp inbound), by address
	eager        *eagerPool
	frames       sync.Pool // of *wireFrame, for bulk frames
	bells        bellBoard // shm waiters' bells, rung by every polling loop
	// callFrames counts the shm frames that waiting calls took from
	// their rings themselves (see ringPoller).
	callFrames atomic.Uint64

	mu       sync.RWMutex
	closing  bool
	offers   map[secret]*bulkOffer
	inLinks  map[io.Closer]bool // open inbound bulk links
	links    []LinkInfo
	conns    map[connKey]*outConn
	groups   map[groupKey]*Group
	pending  map[groupKey][]*wireFrame // frames for groups not created yet
	jobGen   map[string]uint64         // newest generation created, per job
	retired  map[groupKey]bool         // closed groups: their frames are rejected
	inbound  map[*inStream]bool        // open inbound streams
	departed map[string]bool           // peers whose inbound stream ended cleanly
}

// inStream is an inbound Exchange stream; mu serializes its SendMsg.
type inStream struct {
	mu     sync.Mutex
	stream loomv1.Peer_ExchangeServer

	bulkMu sync.Mutex
	bulk   *inLink // the bulk link negotiated on this stream, once open
}

func (s *inStream) send(f *wireFrame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream.SendMsg(f)
}

// NewTransport listens and starts serving the Peer service. ctx bounds
// only the setup; the transport lives until Close.
func NewTransport(ctx context.Context, opts TransportOptions) (*Transport, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("parallel: transport options: %w", err)
	}
	var one uint16 = 1
	if *(*byte)(unsafe.Pointer(&one)) != 1 {
		return nil, errors.New("parallel: the wire format is little-endian float32; big-endian hosts are not supported")
	}
	o := opts.withDefaults()
	lis := o.Listener
	if lis == nil {
		var lc net.ListenConfig
		network, address := "tcp", o.ListenAddr
		if path, ok := strings.CutPrefix(o.ListenAddr, "unix://"); ok {
			network, address = "unix", path
			if o.AdvertiseAddr == "" {
				o.AdvertiseAddr = o.ListenAddr
			}
		}
		var err error
		if lis, err = lc.Listen(ctx, network, address); err != nil {
			return nil, fmt.Errorf("parallel: listen: %w", err)
		}
	}
	t := &Transport{
		opts:      o,
		log:       o.Logger,
		lis:       lis,
		addr:      o.AdvertiseAddr,
		served:    make(chan struct{}),
		conns:     map[connKey]*outConn{},
		groups:    map[groupKey]*Group{},
		pending:   map[groupKey][]*wireFrame{},
		jobGen:    map[string]uint64{},
		retired:   map[groupKey]bool{},
		inbound:   map[*inStream]bool{},
		departed:  map[string]bool{},
		offers:    map[secret]*bulkOffer{},
		inLinks:   map[io.Closer]bool{},
		hostPeers: map[string]int{},
		eager:     newEagerPool(),
	}
	t.pollSpin.Store(int64(t.pollSpinFor(0)))
	t.shmByRef.Store(int64(t.shmByRefFor(0, true)))
	t.shmByRefWait.Store(int64(t.shmByRefFor(0, false)))
	if t.addr == "" {
		t.addr = lis.Addr().String()
	}
	t.mux = newMuxListener(lis, t.acceptTCPLink)
	if o.Mode == ModeAuto || o.Mode == ModeShm {
		shm, err := newShmListener(t)
		if err != nil && o.Mode == ModeShm {
			t.mux.Close()
			return nil, fmt.Errorf("parallel: --transport shm: %w", err)
		}
		if err != nil {
			t.log.Info("shared-memory links unavailable; peers on this host use tcp", "err", err)
		}
		t.shm = shm
	}
	if o.Codec == CodecProto {
		t.codec = protoCodec{}
	} else {
		t.codec = rawCodec{small: newFramePool(inlineBufBytes)}
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	pool := newFramePool(framePoolBufBytes)
	serverCreds, clientCreds := insecure.NewCredentials(), insecure.NewCredentials()
	if o.TLS != nil {
		serverCreds, clientCreds = credentials.NewTLS(o.TLS), credentials.NewTLS(o.TLS)
	}
	t.srv = grpc.NewServer(
		grpc.Creds(serverCreds),
		experimental.BufferPool(pool),
		grpc.ForceServerCodecV2(t.codec),
		grpc.InitialWindowSize(o.StreamWindowBytes),
		grpc.InitialConnWindowSize(o.ConnWindowBytes),
		grpc.WriteBufferSize(o.WriteBufferBytes),
		grpc.ReadBufferSize(o.ReadBufferBytes),
		grpc.MaxRecvMsgSize(o.MaxFrameBytes+4096),
		grpc.MaxSendMsgSize(o.MaxFrameBytes+4096),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: o.KeepaliveTime / 2, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: o.KeepaliveTime, Timeout: o.KeepaliveTime}),
	)
	loomv1.RegisterPeerServer(t.srv, &peerServer{t: t})
	t.dialOpts = []grpc.DialOption{
		experimental.WithBufferPool(pool),
		grpc.WithTransportCredentials(clientCreds),
		grpc.WithInitialWindowSize(o.StreamWindowBytes),
		grpc.WithInitialConnWindowSize(o.ConnWindowBytes),
		grpc.WithWriteBufferSize(o.WriteBufferBytes),
		grpc.WithReadBufferSize(o.ReadBufferBytes),
		grpc.WithDisableRetry(),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: o.KeepaliveTime, Timeout: o.KeepaliveTime, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(t.codec),
			grpc.MaxCallRecvMsgSize(o.MaxFrameBytes+4096),
			grpc.MaxCallSendMsgSize(o.MaxFrameBytes+4096),
			// Commit the stream on its first message so gRPC never keeps
			// payloads around for a replay.
			grpc.MaxRetryRPCBufferSize(0),
		),
	}
	go func() {
		defer close(t.served)
		if err := t.srv.Serve(t.mux); err != nil {
			t.log.Error("peer server stopped", "addr", t.addr, "err", err)
		}
	}()
	return t, nil
}

// Addr returns the address peers must use for this transport.
func (t *Transport) Addr() string { return t.addr }

// Shutdown closes the transport gracefully: every outbound stream is ended
// after the frames already sent and Shutdown waits, until ctx ends, for
// each peer to confirm it read them; then it calls Close. Use it when a
// worker leaves normally, so that peers still finishing an operation get
// every frame they need.
func (t *Transport) Shutdown(ctx context.Context) error {
	t.mu.RLock()
	conns := make([]*outConn, 0, len(t.conns))
	for _, oc := range t.conns {
		conns = append(conns, oc)
	}
	ins := make([]*inStream, 0, len(t.inbound))
	for in := range t.inbound {
		ins = append(ins, in)
	}
	t.mu.RUnlock()
	for _, in := range ins {
		in.send(&wireFrame{kind: loomv1.FrameKind_FRAME_KIND_GOODBYE, srcAddr: t.addr})
	}
	var wg sync.WaitGroup
	for _, oc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			oc.closeSend(ctx)
		}()
	}
	wg.Wait()
	return t.Close()
}

// Close stops serving, closes every connection and fails every group with
// ErrClosed. Pending operations return promptly.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		return nil
	}
	t.closing = true
	conns := make([]*outConn, 0, len(t.conns))
	for _, oc := range t.conns {
		conns = append(conns, oc)
	}
	groups := make([]*Group, 0, len(t.groups))
	for _, g := range t.groups {
		groups = append(groups, g)
	}
	for k, fs := range t.pending {
		releaseAll(fs)
		delete(t.pending, k)
	}
	t.mu.Unlock()
	for _, g := range groups {
		g.fail(fmt.Errorf("transport %s: %w", t.addr, ErrClosed), false)
	}
	for _, oc := range conns {
		oc.fail(ErrClosed)
	}
	t.cancel()
	t.srv.Stop()
	t.mux.Close()
	if t.shm != nil {
		t.shm.close()
	}
	t.mu.Lock()
	for c := range t.inLinks {
		c.Close()
	}
	t.mu.Unlock()
	<-t.served
	return nil
}

// trackLink registers an inbound bulk link so that Close closes it; it
// reports false when the transport is closing.
func (t *Transport) trackLink(c io.Closer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return false
	}
	t.inLinks[c] = true
	return true
}

func (t *Transport) untrackLink(c io.Closer) {
	t.mu.Lock()
	delete(t.inLinks, c)
	t.mu.Unlock()
}

// Links returns how payloads travel to each peer this transport has an
// outbound connection to.
func (t *Transport) Links() []LinkInfo {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Clone(t.links)
}

// pollSpinFor is how long a bulk wait (a tcp reader, a shm wait) polls
// before it sleeps, for a host where this process has links to peers
// other processes on this host (shm links, and tcp links whose dialer's
// boot id is ours): the PollSpin option if set, else DefaultPollSpin
// while those processes (peers and this one) are no more than the host's
// cores. With more, each hop's wake-up waits for a core (0.2 ms on
// average, perf sched), and a wait polls longer instead,
// oversubscribedSpin, yielding the core between polls to whichever rank
// has work, as OpenMPI does when oversubscribed. (Before the bells, a
// poll kept Go's network poller from waking the process's sleeping
// waits, and oversubscribed waits slept at once: see bellBoard.) Peers on
// other hosts do not count: their processes do not compete for our
// cores.
func (t *Transport) pollSpinFor(peers int) time.Duration {
	switch {
	case t.opts.PollSpin != 0:
		return t.opts.PollSpin
	case peers+1 <= runtime.NumCPU():
		return DefaultPollSpin
	}
	return oversubscribedSpin
}

// oversubscribedSpin is how long a bulk wait polls with more linked
// processes on the host than cores. 4 ranks on 2 cores, shm, 3
// alternating rounds, rank 0's p50 polling 200 µs / 500 µs / 1 ms
// (OpenMPI vader): 4 KiB 17–27 / 22–29 / 21–22 µs (17–22), 64 KiB 59–68
// / 58–80 / 63–86 (55–68), 256 KiB 178–218 / 163–225 / 142–200
// (163–178), 1 MiB 453–545 / 503–614 / 446–664 (668–733); sleeping at
// once, as before the bells, 4 KiB took 68–99 µs and 64 KiB 259–271.
// tcp, 2 rounds on a loaded VM, sleeping at once / polling 50 µs / 200
// µs (OpenMPI-TCP): 4 KiB 78–81 / 37–49 / 55–76 (53–62), 64 KiB 254–267
// / 118–219 / 114–124 (127–143), 1 MiB 2,313–2,872 / 2,192–2,497 /
// 2,339–2,462 (1,493–1,569).
const oversubscribedSpin = 200 * time.Microsecond

// hostPeer records that a link to or from a peer on this host at addr
// opened (open) or closed, and sets the readers' polling time for the
// peers now linked.
func (t *Transport) hostPeer(addr string, open bool) {
	t.hostMu.Lock()
	if open {
		t.hostPeers[addr]++
	} else if t.hostPeers[addr]--; t.hostPeers[addr] <= 0 {
		delete(t.hostPeers, addr)
	}
	t.pollSpin.Store(int64(t.pollSpinFor(len(t.hostPeers))))
	t.shmByRef.Store(int64(t.shmByRefFor(len(t.hostPeers), true)))
	t.shmByRefWait.Store(int64(t.shmByRefFor(len(t.hostPeers), false)))
	t.bells.crowded.Store(len(t.hostPeers)+1 > runtime.NumCPU())
	t.hostMu.Unlock()
}

func (t *Transport) recordLink(li LinkInfo) {
	t.log.Info("data-plane link", "peer", li.Peer, "job", li.Job, "generation", li.Generation, "transport", li.Transport, "reason", li.Reason)
	t.mu.Lock()
	t.links = append(t.links, li)
	t.mu.Unlock()
	if t.opts.OnLink != nil {
		t.opts.OnLink(li)
	}
}

func releaseAll(fs []*wireFrame) {
	for _, f := range fs {
		f.release()
	}
}

// connKey names an outbound connection: one per peer address and job
// generation, so that everything a connection negotiates (the bulk link
// and its secret) belongs to one generation.
type connKey struct {
	addr       string
	job        string
	generation uint64
}

// conn returns the outbound connection for k, dialling it if needed.
func (t *Transport) conn(k connKey) (*outConn, error) {
	t.mu.RLock()
	oc := t.conns[k]
	closing := t.closing
	t.mu.RUnlock()
	if oc != nil {
		return oc, nil
	}
	if closing {
		return nil, ErrClosed
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return nil, ErrClosed
	}
	if oc = t.conns[k]; oc != nil {
		return oc, nil
	}
	oc = &outConn{
		t:     t,
		key:   k,
		addr:  k.addr,
		ready: make(chan struct{}),
		done:  make(chan struct{}),
		sem:   make(chan struct{}, 1),
	}
	oc.ctx, oc.cancel = context.WithCancel(t.ctx)
	t.conns[k] = oc
	go oc.connect()
	return oc, nil
}

// dropConn forgets oc so that the next send to its address redials.
func (t *Transport) dropConn(oc *outConn) {
	t.mu.Lock()
	if t.conns[oc.key] == oc {
		delete(t.conns, oc.key)
	}
	t.mu.Unlock()
}

// peerLost fails every group that has a member at addr.
func (t *Transport) peerLost(addr string, err error) {
	t.mu.RLock()
	if t.closing {
		t.mu.RUnlock()
		return
	}
	var gs []*Group
	for _, g := range t.groups {
		if g.hasPeer(addr) {
			gs = append(gs, g)
		}
	}
	t.mu.RUnlock()
	if len(gs) > 0 {
		t.log.Warn("peer lost", "addr", addr, "err", err)
	}
	for _, g := range gs {
		g.failPeer(addr, err)
	}
}

// departureGrace is how long a broken outbound stream waits for the
// peer's clean goodbye on the inbound one before failing its groups.
const departureGrace = 250 * time.Millisecond

// hasDeparted reports whether the peer at addr ended its stream to us
// cleanly (and has not reconnected since).
func (t *Transport) hasDeparted(addr string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.departed[addr]
}

func (t *Transport) setDeparted(addr string, v bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v {
		t.departed[addr] = true
	} else {
		delete(t.departed, addr)
	}
}

// errDeparted marks a connection that ended after the peer's GOODBYE.
var errDeparted = fmt.Errorf("%w: peer shut down", ErrPeerGone)

// peerDeparted tells every group with a member at addr that the member
// left normally: operations still waiting on it fail, the others go on.
func (t *Transport) peerDeparted(addr string) {
	t.mu.RLock()
	var gs []*Group
	for _, g := range t.groups {
		if g.hasPeer(addr) {
			gs = append(gs, g)
		}
	}
	t.mu.RUnlock()
	for _, g := range gs {
		g.peerDeparted(addr)
	}
}

// deliver routes an incoming data frame. It returns a reason when the frame
// is rejected.
//
// A frame of an older generation than the job's newest here is rejected
// even while its group still exists (superseded, failed, not yet closed):
// queued there it would never be read, and its sender would wait out its
// timeout instead of learning ErrStaleGeneration.
func (t *Transport) deliver(f *wireFrame) string {
	key := groupKey{f.job, f.generation, f.group}
	t.mu.RLock()
	g := t.groups[key]
	cur := t.jobGen[f.job]
	t.mu.RUnlock()
	if g != nil && f.generation >= cur {
		return g.deliver(f)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur := t.jobGen[f.job]; f.generation < cur {
		return fmt.Sprintf("job %q generation %d is older than the receiver's %d", f.job, f.generation, cur)
	}
	if g = t.groups[key]; g != nil {
		t.mu.Unlock()
		defer t.mu.Lock()
		return g.deliver(f)
	}
	if t.retired[key] {
		return fmt.Sprintf("group %q of job %q generation %d is closed", f.group, f.job, f.generation)
	}
	if t.closing {
		return "transport closing"
	}
	t.pending[key] = append(t.pending[key], f)
	return ""
}

// rejected handles a REJECT that a peer sent back for one of our frames.
func (t *Transport) rejected(addr string, f *wireFrame) {
	t.log.Warn("peer rejected a frame", "peer", addr, "job", f.job, "generation", f.generation, "group", f.group, "detail", f.detail)
	t.mu.RLock()
	g := t.groups[groupKey{f.job, f.generation, f.group}]
	t.mu.RUnlock()
	if g != nil {
		g.failPeer(addr, fmt.Errorf("%w: peer rejected our frame: %s", ErrStaleGeneration, f.detail))
	}
}

// aborted handles a peer's report that a group failed.
func (t *Transport) aborted(f *wireFrame) {
	t.mu.RLock()
	g := t.groups[groupKey{f.job, f.generation, f.group}]
	t.mu.RUnlock()
	if g == nil {
		return
	}
	g.fail(&PeerError{Rank: int(f.failedRank), Addr: f.failedAddr, Op: "connection",
		Err: fmt.Errorf("%w (reported by rank %d: %s)", causeError(f.cause), f.srcRank, f.detail)}, false)
}

// outConn is the outbound Exchange stream to one peer address.
type outConn struct {
	t      *Transport
	key    connKey
	addr   string
	ctx    context.Context
	cancel context.CancelFunc
	ready  chan struct{} // closed once the stream is open
	done   chan struct{} // closed on failure
	sem    chan struct{} // serializes SendMsg

	closing   atomic.Bool // CloseSend called: the stream's end is expected
	departing atomic.Bool // the peer said GOODBYE
	opened    atomic.Bool // the stream exists (NewStream returned)

	// bulk carries COLLECTIVE and P2P frames when the WELCOME chose tcp or
	// shm; nil: they go on the stream. Set before ready closes.
	bulk bulkSender

	mu     sync.Mutex
	cc     *grpc.ClientConn
	stream grpc.ClientStream
	err    error
}

// bulkSender is the sending end of a bulk link (tcp or shm).
type bulkSender interface {
	// send writes one frame; the payload has been copied out when it
	// returns.
	send(ctx context.Context, f *wireFrame, timeout time.Duration, abort <-chan struct{}) error
	// closeSend writes GOODBYE after every frame already sent.
	closeSend(ctx context.Context)
	// close breaks the link without failing the connection, which failed
	// with err: sends in progress return err.
	close(err error)
}

// broke classifies the end of the stream or of its bulk link: expected
// after our CloseSend, a departure after the peer's GOODBYE, else a loss.
func (oc *outConn) broke(what string, err error) error {
	switch {
	case oc.closing.Load():
		return ErrClosed
	case oc.departing.Load():
		return errDeparted
	}
	return fmt.Errorf("%w: %s ended: %v", ErrPeerGone, what, err)
}

// connect dials, opens the stream and says HELLO; the peer's header
// confirms it accepted us. It waits for the peer to come up.
func (oc *outConn) connect() {
	cc, err := grpc.NewClient("passthrough:///"+oc.addr, oc.t.dialOpts...)
	if err != nil {
		oc.fail(fmt.Errorf("%w: dial: %v", ErrPeerGone, err))
		return
	}
	oc.mu.Lock()
	oc.cc = cc
	failed := oc.err != nil
	oc.mu.Unlock()
	if failed {
		cc.Close()
		return
	}
	t := oc.t
	stream, err := cc.NewStream(oc.ctx, &loomv1.Peer_ServiceDesc.Streams[0], loomv1.Peer_Exchange_FullMethodName, grpc.WaitForReady(true))
	oc.opened.Store(err == nil)
	if err == nil {
		err = stream.SendMsg(&wireFrame{kind: loomv1.FrameKind_FRAME_KIND_HELLO, srcAddr: t.addr,
			job: oc.key.job, generation: oc.key.generation, transport: t.askMode().proto(), bootID: t.opts.HostID})
	}
	var welcome wireFrame
	if err == nil {
		err = stream.RecvMsg(&welcome)
	}
	if err != nil {
		oc.fail(fmt.Errorf("%w: open stream: %v", ErrPeerGone, err))
		return
	}
	oc.mu.Lock()
	oc.stream = stream
	oc.mu.Unlock()
	if welcome.kind != loomv1.FrameKind_FRAME_KIND_WELCOME {
		welcome.release()
		oc.fail(fmt.Errorf("%w: the peer answered HELLO with %v, not WELCOME (an older Loom?)", ErrPeerGone, welcome.kind))
		return
	}
	if welcome.transport == 0 { // the peer refused: it says why
		oc.fail(fmt.Errorf("%w: data transport: %s", ErrMismatch, welcome.detail))
		return
	}
	li, err := oc.openBulk(&welcome)
	if err != nil {
		oc.fail(err)
		return
	}
	t.recordLink(li)
	close(oc.ready)
	for {
		var f wireFrame
		if err := stream.RecvMsg(&f); err != nil {
			oc.fail(oc.broke("stream", err))
			return
		}
		switch f.kind {
		case loomv1.FrameKind_FRAME_KIND_REJECT:
			oc.t.rejected(oc.addr, &f)
		case loomv1.FrameKind_FRAME_KIND_GOODBYE:
			oc.departing.Store(true)
		}
		f.release()
	}
}

// fail closes the connection for good and fails the groups using it.
func (oc *outConn) fail(err error) {
	oc.mu.Lock()
	if oc.err != nil {
		oc.mu.Unlock()
		return
	}
	oc.err = err
	cc := oc.cc
	oc.mu.Unlock()
	close(oc.done)
	oc.cancel()
	oc.mu.Lock()
	bulk := oc.bulk
	oc.mu.Unlock()
	if bulk != nil {
		bulk.close(err)
	}
	if cc != nil {
		cc.Close()
	}
	oc.t.dropConn(oc)
	switch {
	case errors.Is(err, errDeparted):
		oc.t.peerDeparted(oc.addr)
	case errors.Is(err, ErrClosed):
	case errors.Is(err, ErrPeerGone):
		// The stream broke. A peer shutting down normally ends our
		// inbound stream from it cleanly, but that may be seen a moment
		// after this; wait for it before calling the peer lost.
		go func() {
			time.Sleep(departureGrace)
			if oc.t.hasDeparted(oc.addr) {
				oc.t.peerDeparted(oc.addr)
				return
			}
			oc.t.peerLost(oc.addr, err)
		}()
	default:
		oc.t.peerLost(oc.addr, err)
	}
}

func (oc *outConn) failure() error {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	return oc.err
}

// send writes one frame. It waits at most timeout for the stream to open
// and for earlier frames to leave, and stops waiting when abort closes; a
// SendMsg blocked longer than timeout (a peer that stopped reading) breaks
// the connection.
func (oc *outConn) send(ctx context.Context, f *wireFrame, timeout time.Duration, abort <-chan struct{}) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// acquire waits for ready (a channel that closes) or for a token of sem.
	acquire := func(ready <-chan struct{}, sem chan struct{}, what string) error {
		select {
		case <-ready:
			return nil
		case sem <- struct{}{}:
			return nil
		default:
		}
		if timer == nil {
			timer = time.NewTimer(timeout)
		}
		select {
		case <-ready:
			return nil
		case sem <- struct{}{}:
			return nil
		case <-oc.done:
			return oc.failure()
		case <-abort:
			return errAborted
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return fmt.Errorf("%w: %s for %v", ErrPeerTimeout, what, timeout)
		}
	}
	if err := acquire(oc.ready, nil, "connecting"); err != nil {
		return err
	}
	if oc.bulk != nil && (f.kind == loomv1.FrameKind_FRAME_KIND_COLLECTIVE || f.kind == loomv1.FrameKind_FRAME_KIND_P2P) {
		return oc.bulk.send(ctx, f, timeout, abort)
	}
	if err := acquire(nil, oc.sem, "waiting to send"); err != nil {
		return err
	}
	defer func() { <-oc.sem }()
	if err := oc.failure(); err != nil {
		return err
	}
	guard := time.AfterFunc(timeout, func() {
		oc.fail(fmt.Errorf("%w: send blocked for %v", ErrPeerTimeout, timeout))
	})
	err := oc.stream.SendMsg(f)
	guard.Stop()
	if err != nil {
		oc.fail(fmt.Errorf("%w: send: %v", ErrPeerGone, err))
		return oc.failure()
	}
	return nil
}

// errAborted: a wait ended because the group failed; the group's error is
// the one to report.
var errAborted = errors.New("group failed")

// closeSend ends the stream after every frame already sent and waits, until
// ctx ends, for the peer to confirm it read them all.
func (oc *outConn) closeSend(ctx context.Context) {
	// A stream still opening (eager dialing) must open and end cleanly too:
	// cancelling it would show the peer a broken stream, and the peer would
	// declare this rank lost while it may still be finishing an operation.
	// A stream not created yet (still dialling: the peer may be gone
	// already, or not up yet) is nothing the peer sees, and is dropped.
	if !oc.opened.Load() {
		select {
		case <-oc.ready:
		default:
			oc.fail(ErrClosed)
			return
		}
	}
	select {
	case <-oc.ready:
	case <-oc.done:
		return
	case <-ctx.Done():
		oc.fail(ErrClosed)
		return
	}
	select {
	case oc.sem <- struct{}{}:
	case <-oc.done:
		return
	case <-ctx.Done():
		oc.fail(ErrClosed)
		return
	}
	oc.closing.Store(true)
	if oc.bulk != nil {
		oc.bulk.closeSend(ctx)
	}
	oc.stream.CloseSend()
	<-oc.sem
	select {
	case <-oc.done: // the peer ended the stream: it has read everything
	case <-ctx.Done():
	}
	oc.fail(ErrClosed)
}

// peerServer serves inbound Exchange streams.
type peerServer struct {
	loomv1.UnimplementedPeerServer
	t *Transport
}

// Exchange reads frames until the stream ends and routes them to groups.
func (s *peerServer) Exchange(stream loomv1.Peer_ExchangeServer) error {
	var hello wireFrame
	if err := stream.RecvMsg(&hello); err != nil {
		return err
	}
	hello.release()
	if hello.kind != loomv1.FrameKind_FRAME_KIND_HELLO || hello.srcAddr == "" {
		return fmt.Errorf("parallel: first frame must be HELLO with src_addr, got kind %v", hello.kind)
	}
	from := hello.srcAddr
	in := &inStream{stream: stream}
	welcome, err := s.t.welcome(&hello, in)
	if err != nil {
		return err
	}
	if err := in.send(welcome); err != nil {
		return err
	}
	if welcome.transport == 0 {
		return nil // refused; the dialer fails with the reason
	}
	defer s.t.forget(in)
	s.t.setDeparted(from, false)
	s.t.mu.Lock()
	s.t.inbound[in] = true
	s.t.mu.Unlock()
	defer func() {
		s.t.mu.Lock()
		delete(s.t.inbound, in)
		s.t.mu.Unlock()
	}()
	for {
		f := new(wireFrame)
		if err := stream.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				// The peer shut down after sending everything: wait for
				// its bulk link to end too (it wrote GOODBYE there before
				// ending this stream), and everything is in the mailboxes.
				if l := in.boundLink(); l != nil {
					select {
					case <-l.done:
					case <-stream.Context().Done():
					}
					if !l.ended.Load() {
						return nil // the link failed and said so
					}
				}
				s.t.setDeparted(from, true)
				s.t.peerDeparted(from)
				return nil
			}
			s.t.peerLost(from, fmt.Errorf("%w: inbound stream ended: %v", ErrPeerGone, err))
			return nil
		}
		var reason string
		switch f.kind {
		case loomv1.FrameKind_FRAME_KIND_COLLECTIVE, loomv1.FrameKind_FRAME_KIND_P2P:
			reason = s.t.deliver(f)
		case loomv1.FrameKind_FRAME_KIND_ABORT:
			s.t.aborted(f)
		default:
			reason = fmt.Sprintf("unexpected frame kind %v", f.kind)
		}
		if reason == "" {
			continue
		}
		s.t.log.Warn("rejected frame", "from", from, "job", f.job, "generation", f.generation, "group", f.group, "reason", reason)
		rej := &wireFrame{kind: loomv1.FrameKind_FRAME_KIND_REJECT, job: f.job, generation: f.generation, group: f.group, seq: f.seq, tag: f.tag, detail: reason}
		f.release()
		if err := in.send(rej); err != nil {
			return nil
		}
	}
}
