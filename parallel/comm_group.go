package parallel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Group defaults, chosen by measurement (see the package doc).
// DefaultSmallBytes is the latency-optimal algorithms' limit over gRPC;
// over tcp links it is 128 KiB and over shm links 16 KiB (where a ring
// step costs less), unless GroupSpec.SmallBytes says otherwise.
const (
	DefaultTimeout    = 60 * time.Second
	DefaultChunkBytes = 256 << 10
	DefaultSmallBytes = 256 << 10
	tcpSmallBytes     = 128 << 10
	shmSmallBytes     = 16 << 10
	// bulkChunkBytes is the ring's chunk on tcp and shm links: fewer,
	// larger frames (and, by reference over shm, fewer acknowledgements)
	// than gRPC's 256 KiB. 2 ranks, 1 MiB chunks against 256 KiB: shm
	// 1 MiB 218 µs vs 238, 4 MiB 970–1020 vs 1060–1107; tcp 1 MiB 427–460
	// vs 702–753; shm at 4 ranks 16 MiB 16 ms vs 39.
	bulkChunkBytes = 1 << 20
)

// smallBytes returns the largest buffer all-reduced and broadcast with
// the latency-optimal algorithms: GroupSpec.SmallBytes, or by the
// transport mode, which every member must share (the choice must be the
// same everywhere; a member that chose otherwise fails with ErrMismatch on
// the first frame). Auto counts as tcp: across hosts that is what it
// uses, and on one host tcp's switch point costs shm links little.
func (g *Group) smallBytes() int {
	if g.small != 0 {
		return g.small
	}
	switch g.t.opts.Mode {
	case ModeShm:
		return shmSmallBytes
	case ModeGRPC:
		return DefaultSmallBytes
	}
	return tcpSmallBytes
}

// shmHalvingBytes is the largest all-reduce over shm (and auto, which
// runs shm on one host) that Auto runs around the ring in a group of 4, 8
// … members; above it, halving-doubling. 4 ranks on 2 cores, rank 0's
// p50, ring against halving-doubling: 1 MiB 570–592 µs vs 619–1,103, 2 MiB
// 1,496–1,529 vs 1,040–1,225, 4 MiB 3.0–3.3 ms vs 2.2–2.3.
const shmHalvingBytes = 1 << 20

// shmHalvingSmallBytes is the largest all-reduce over shm (ModeShm) that
// Auto runs by halving-doubling in a group of 4, 8 … members just above
// SmallBytes, before the ring takes over: its 2·log2 n steps against the
// ring's 2(n−1), each a hop that, with more processes than cores, waits
// for its peer to be scheduled. 4 ranks on the 2-vCPU Xeon, 3 alternating
// rounds, rank 0's p50, ring / halving-doubling / recursive doubling:
// 32 KiB 36–43 / 24–28 / 21–27 µs, 64 KiB 48–56 / 34–35 / 92–109
// (OpenMPI vader 41), 128 KiB 52–55 / 78–84 / 162–171 (a halving step's
// 64 KiB frame goes by reference there). Auto mode keeps tcp's bounds.
const shmHalvingSmallBytes = 64 << 10

// halvingSmallBytes is the largest buffer above smallBytes that Auto
// all-reduces by halving-doubling (in groups where it may): 64 KiB over
// shm, none otherwise. Like smallBytes it depends only on what every
// member shares.
func (g *Group) halvingSmallBytes() int {
	if g.t.opts.Mode == ModeShm {
		return shmHalvingSmallBytes
	}
	return 0
}

// halvingBytes returns the largest buffer that Auto does not all-reduce
// by halving-doubling (in groups where it may): tcp's smallBytes, where
// it beats the ring from the first size above, 1 MiB over shm and auto,
// none over gRPC (not measured there). Like smallBytes it depends only on
// what every member shares.
func (g *Group) halvingBytes() int {
	switch g.t.opts.Mode {
	case ModeTCP:
		return g.smallBytes()
	case ModeGRPC:
		return math.MaxInt
	}
	return max(g.smallBytes(), shmHalvingBytes)
}

// Algorithm selects the all-reduce algorithm.
type Algorithm int

const (
	// Auto uses RecursiveDoubling up to GroupSpec.SmallBytes and Ring
	// above, but HalvingDoubling in groups of 4, 8, 16 … members above
	// SmallBytes over tcp, above 1 MiB over shm and auto, and from
	// SmallBytes to 64 KiB over shm (see Group.allReduceAlgorithm).
	Auto Algorithm = iota
	// Ring is reduce-scatter then all-gather around the ring, pipelined in
	// chunks: bandwidth-optimal, 2(n−1) steps.
	Ring
	// RecursiveDoubling exchanges whole buffers in ⌈log2 n⌉ rounds:
	// latency-optimal, n−1 times the traffic of Ring per rank at n=2^k.
	RecursiveDoubling
	// HalvingDoubling is Rabenseifner's reduce-scatter by recursive
	// halving, then all-gather by recursive doubling: the ring's traffic
	// in 2·log2 n steps instead of 2(n−1), for every all-reduce size
	// (and ReduceScatter and AllGather as its halves). Only for n a power
	// of two; other sizes run Ring.
	HalvingDoubling
	// Direct is the one-shot all-reduce: every member sends its whole
	// buffer to every other and reduces the n contributions in rank
	// order. One hop instead of ⌈log2 n⌉, for n−1 times the buffer sent
	// per member and (n−1)·len(buf) elements of scratch held by the group:
	// for small buffers in groups of 3 or more.
	Direct
)

// String returns "auto", "ring", "rd", "hd" or "direct".
func (a Algorithm) String() string {
	switch a {
	case Auto:
		return "auto"
	case Ring:
		return "ring"
	case RecursiveDoubling:
		return "rd"
	case HalvingDoubling:
		return "hd"
	case Direct:
		return "direct"
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// ParseAlgorithm parses "auto", "ring", "rd", "hd" or "direct".
func ParseAlgorithm(s string) (Algorithm, error) {
	for _, a := range []Algorithm{Auto, Ring, RecursiveDoubling, HalvingDoubling, Direct} {
		if a.String() == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("algorithm %q: want auto, ring, rd, hd or direct", s)
}

// GroupSpec describes a process group as every member sees it.
type GroupSpec struct {
	Job        string // job name
	Generation uint64 // job generation; frames of older generations are rejected
	Name       string // group name, unique within the job, e.g. "dp0", "tp1"
	// Ranks lists the members' global ranks; its order is the ring order
	// and the shard order of ReduceScatter and AllGather.
	Ranks  []int
	MyRank int            // this worker's global rank, one of Ranks
	Addrs  map[int]string // every other member's advertised address
	// Timeout is how long an operation waits for the next frame from (or
	// send to) a peer before it declares the peer dead; default
	// DefaultTimeout. It bounds progress, not the whole call, so large
	// buffers need no larger value — but a peer that enters a collective
	// later than this (a straggler) is also declared dead.
	Timeout time.Duration
	// ChunkBytes is the pipelining unit of ring algorithms and the largest
	// frame; default DefaultChunkBytes for the grpc transport and 1 MiB for
	// the others (every member must use the same). Must be a multiple of 4.
	ChunkBytes int
	// SmallBytes is the largest buffer all-reduced and broadcast with the
	// latency-optimal algorithms; default by the transport's mode:
	// DefaultSmallBytes for grpc, 128 KiB for tcp and auto, 16 KiB for shm.
	SmallBytes int
	// AllReduce forces an all-reduce algorithm; default Auto.
	AllReduce Algorithm
}

// Validate reports every invalid field at once.
func (s GroupSpec) Validate() error {
	var errs []error
	if s.Job == "" {
		errs = append(errs, errors.New("Job: empty"))
	}
	if s.Name == "" {
		errs = append(errs, errors.New("Name: empty"))
	}
	if len(s.Ranks) == 0 {
		errs = append(errs, errors.New("Ranks: empty (want the members' global ranks)"))
	}
	seen := map[int]bool{}
	for _, r := range s.Ranks {
		if r < 0 || r > 1<<30 {
			errs = append(errs, fmt.Errorf("Ranks: rank %d out of range [0, 2^30]", r))
		}
		if seen[r] {
			errs = append(errs, fmt.Errorf("Ranks: rank %d listed twice", r))
		}
		seen[r] = true
	}
	if !seen[s.MyRank] {
		errs = append(errs, fmt.Errorf("MyRank: %d is not in Ranks %v", s.MyRank, s.Ranks))
	}
	for _, r := range s.Ranks {
		if r != s.MyRank && s.Addrs[r] == "" {
			errs = append(errs, fmt.Errorf("Addrs: no address for rank %d", r))
		}
	}
	if s.Timeout < 0 {
		errs = append(errs, fmt.Errorf("Timeout: %v (want > 0, or 0 for %v)", s.Timeout, DefaultTimeout))
	}
	if s.ChunkBytes < 0 || s.ChunkBytes%4 != 0 {
		errs = append(errs, fmt.Errorf("ChunkBytes: %d (want a positive multiple of 4, or 0 for %d)", s.ChunkBytes, DefaultChunkBytes))
	}
	if s.SmallBytes < 0 {
		errs = append(errs, fmt.Errorf("SmallBytes: %d (want ≥ 0, or 0 for %d)", s.SmallBytes, DefaultSmallBytes))
	}
	if s.AllReduce < Auto || s.AllReduce > Direct {
		errs = append(errs, fmt.Errorf("AllReduce: %d (want Auto, Ring, RecursiveDoubling, HalvingDoubling or Direct)", int(s.AllReduce)))
	}
	return errors.Join(errs...)
}

// ShardRange returns the offset and length of part i when length elements
// are split into parts contiguous parts: the first length%parts parts have
// one element more. ReduceScatter and AllGather use it.
func ShardRange(length, parts, i int) (off, n int) {
	q, r := length/parts, length%parts
	off = i*q + min(i, r)
	n = q
	if i < r {
		n++
	}
	return off, n
}

// Group is a process group: the members of GroupSpec.Ranks, talking over
// one Transport each. Collective operations (AllReduce, ReduceScatter,
// AllGather, Broadcast, Barrier) must be called by every member in the same
// order; calls on one Group are serialized, calls on different Groups run
// concurrently. Send and Recv may run concurrently with anything.
//
// Any error leaves the group failed: every pending and later call returns
// an error naming the peer that caused it. Recover by creating a new group
// (normally for the next generation).
type Group struct {
	t       *Transport
	spec    GroupSpec
	key     groupKey
	me      int      // my index in ranks
	ranks   []int    // by index
	addrs   []string // by index; addrs[me] is the transport's
	index   map[int]int
	boxes   []*mailbox // incoming frames by sender index
	timeout time.Duration
	chunk   int // elements per frame
	small   int // bytes; 0: by transport (smallBytes)

	opMu sync.Mutex // serializes collectives
	seq  uint64     // collective calls so far; guarded by opMu
	coll *call      // the collective in progress; guarded by opMu
	// scratch holds the other members' contributions to a Direct
	// all-reduce; guarded by opMu, kept between calls.
	scratch []float32

	p2pCalls sync.Pool // of *call, for Send and Recv

	p2pMu   sync.Mutex
	p2pSent []uint64 // messages sent, by index
	p2pRcvd []uint64 // messages received, by index

	closed atomic.Bool // Close was called
	// superseded is set once a group of a newer generation of the job
	// exists here: bulk links then reject the group's frames, as
	// Transport.deliver does.
	superseded atomic.Bool

	failMu  sync.Mutex
	failErr error
	failCh  chan struct{} // closed on failure
}

// NewGroup creates this worker's member of a process group. It does not
// block: connections are opened by the first operation. Creating a group of
// a newer generation fails the job's older groups with ErrStaleGeneration.
func (t *Transport) NewGroup(spec GroupSpec) (*Group, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("parallel: group spec: %w", err)
	}
	g := &Group{
		t:       t,
		spec:    spec,
		key:     groupKey{spec.Job, spec.Generation, spec.Name},
		ranks:   slices.Clone(spec.Ranks),
		index:   map[int]int{},
		timeout: spec.Timeout,
		chunk:   spec.ChunkBytes / 4,
		small:   spec.SmallBytes,
		failCh:  make(chan struct{}),
	}
	if g.timeout == 0 {
		g.timeout = DefaultTimeout
	}
	if g.chunk == 0 {
		g.chunk = DefaultChunkBytes / 4
		if t.opts.Mode != ModeGRPC {
			g.chunk = bulkChunkBytes / 4
		}
	}

	if 4*g.chunk > t.opts.MaxFrameBytes {
		return nil, fmt.Errorf("parallel: group spec: ChunkBytes %d exceeds the transport's MaxFrameBytes %d", 4*g.chunk, t.opts.MaxFrameBytes)
	}
	n := len(g.ranks)
	g.addrs = make([]string, n)
	g.boxes = make([]*mailbox, n)
	g.p2pSent = make([]uint64, n)
	g.p2pRcvd = make([]uint64, n)
	g.coll = newCall(g)
	for i, r := range g.ranks {
		g.index[r] = i
		g.boxes[i] = &mailbox{}
		g.addrs[i] = spec.Addrs[r]
		if r == spec.MyRank {
			g.me = i
			g.addrs[i] = t.addr
		}
	}
	for i, a := range g.addrs {
		if i != g.me && a == t.addr {
			return nil, fmt.Errorf("parallel: group spec: Addrs: rank %d has this transport's own address %s (one transport per rank)", g.ranks[i], a)
		}
	}

	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		return nil, fmt.Errorf("parallel: new group: transport %w", ErrClosed)
	}
	if cur := t.jobGen[spec.Job]; spec.Generation < cur {
		t.mu.Unlock()
		return nil, fmt.Errorf("parallel: new group %q: job %q generation %d: %w (current %d)", spec.Name, spec.Job, spec.Generation, ErrStaleGeneration, cur)
	}
	if _, dup := t.groups[g.key]; dup || t.retired[g.key] {
		t.mu.Unlock()
		return nil, fmt.Errorf("parallel: new group: group %q of job %q generation %d already exists", spec.Name, spec.Job, spec.Generation)
	}
	var stale []*Group
	if spec.Generation > t.jobGen[spec.Job] {
		t.jobGen[spec.Job] = spec.Generation
		for k, og := range t.groups {
			if k.job == spec.Job && k.generation < spec.Generation {
				stale = append(stale, og)
			}
		}
		for k, fs := range t.pending {
			if k.job == spec.Job && k.generation < spec.Generation {
				releaseAll(fs)
				delete(t.pending, k)
			}
		}
	}
	t.groups[g.key] = g
	early := t.pending[g.key]
	delete(t.pending, g.key)
	t.mu.Unlock()

	for _, og := range stale {
		og.superseded.Store(true)
		og.fail(fmt.Errorf("group %q generation %d superseded by generation %d: %w", og.spec.Name, og.spec.Generation, spec.Generation, ErrStaleGeneration), false)
	}
	// Dial every member now: a member's death is then seen by all, on the
	// broken stream, not only by those that were sending to it.
	for i := range g.addrs {
		if i != g.me {
			t.conn(g.connKey(i))
		}
	}
	for _, f := range early {
		if reason := g.deliver(f); reason != "" {
			t.log.Warn("dropped early frame", "group", spec.Name, "reason", reason)
		}
	}
	return g, nil
}

// Close removes the group from its transport; pending and later calls fail
// with ErrClosed. Later frames for it are rejected.
func (g *Group) Close() error {
	g.closed.Store(true)
	g.t.mu.Lock()
	if g.t.groups[g.key] == g {
		delete(g.t.groups, g.key)
		g.t.retired[g.key] = true
	}
	g.t.mu.Unlock()
	g.fail(fmt.Errorf("group %q: %w", g.spec.Name, ErrClosed), false)
	for _, b := range g.boxes {
		b.drop()
	}
	return nil
}

// Size returns the number of members.
func (g *Group) Size() int { return len(g.ranks) }

// Index returns this worker's position in GroupSpec.Ranks.
func (g *Group) Index() int { return g.me }

// Rank returns this worker's global rank.
func (g *Group) Rank() int { return g.ranks[g.me] }

// Spec returns the spec the group was created with.
func (g *Group) Spec() GroupSpec { return g.spec }

// Shard returns the offset and length of this worker's part of a buffer
// of length elements, as ReduceScatter and AllGather split it.
func (g *Group) Shard(length int) (off, n int) { return ShardRange(length, len(g.ranks), g.me) }

// Err returns the error that failed the group, or nil.
func (g *Group) Err() error {
	g.failMu.Lock()
	defer g.failMu.Unlock()
	return g.failErr
}

// connKey names the connection to peer i.
func (g *Group) connKey(i int) connKey {
	return connKey{addr: g.addrs[i], job: g.spec.Job, generation: g.spec.Generation}
}

func (g *Group) hasPeer(addr string) bool {
	for i, a := range g.addrs {
		if i != g.me && a == addr {
			return true
		}
	}
	return false
}

// fail records the group's first failure and wakes every waiter. With
// tell, the other members are sent an ABORT naming the culprit, so that
// they fail now rather than time out waiting on someone else.
func (g *Group) fail(err error, tell bool) {
	g.failMu.Lock()
	if g.failErr != nil {
		g.failMu.Unlock()
		return
	}
	g.failErr = err
	close(g.failCh)
	g.failMu.Unlock()
	if tell && len(g.ranks) > 1 {
		go g.tellAbort(err)
	}
}

// tellAbort sends ABORT to every other member, best effort.
func (g *Group) tellAbort(err error) {
	f := wireFrame{
		kind: loomv1.FrameKind_FRAME_KIND_ABORT, job: g.spec.Job, generation: g.spec.Generation,
		group: g.spec.Name, srcRank: int32(g.ranks[g.me]), detail: err.Error(),
		failedRank: int32(g.ranks[g.me]), failedAddr: g.addrs[g.me],
	}
	f.cause = causeOf(err)
	var pe *PeerError
	if errors.As(err, &pe) && f.cause != loomv1.FailureCause_FAILURE_CAUSE_CANCELED {
		f.failedRank, f.failedAddr = int32(pe.Rank), pe.Addr
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(g.timeout, 2*time.Second))
	defer cancel()
	for i, a := range g.addrs {
		if i == g.me || a == f.failedAddr {
			continue
		}
		oc, err := g.t.conn(g.connKey(i))
		if err != nil {
			return
		}
		ff := f
		_ = oc.send(ctx, &ff, min(g.timeout, time.Second), nil)
	}
}

// causeOf classifies err for an ABORT frame.
func causeOf(err error) loomv1.FailureCause {
	switch {
	case errors.Is(err, ErrPeerTimeout):
		return loomv1.FailureCause_FAILURE_CAUSE_TIMEOUT
	case errors.Is(err, ErrPeerGone), errors.Is(err, ErrClosed):
		return loomv1.FailureCause_FAILURE_CAUSE_PEER_GONE
	case errors.Is(err, ErrStaleGeneration):
		return loomv1.FailureCause_FAILURE_CAUSE_STALE_GENERATION
	case errors.Is(err, ErrMismatch):
		return loomv1.FailureCause_FAILURE_CAUSE_MISMATCH
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return loomv1.FailureCause_FAILURE_CAUSE_CANCELED
	}
	return loomv1.FailureCause_FAILURE_CAUSE_UNSPECIFIED
}

// causeError maps an ABORT's cause back to the error class.
func causeError(c loomv1.FailureCause) error {
	switch c {
	case loomv1.FailureCause_FAILURE_CAUSE_TIMEOUT:
		return ErrPeerTimeout
	case loomv1.FailureCause_FAILURE_CAUSE_PEER_GONE:
		return ErrPeerGone
	case loomv1.FailureCause_FAILURE_CAUSE_STALE_GENERATION:
		return ErrStaleGeneration
	case loomv1.FailureCause_FAILURE_CAUSE_MISMATCH:
		return ErrMismatch
	case loomv1.FailureCause_FAILURE_CAUSE_CANCELED:
		return context.Canceled
	}
	return errors.New("peer failed")
}

// failPeer fails the group because of the peer at addr.
func (g *Group) failPeer(addr string, err error) {
	for i, a := range g.addrs {
		if i != g.me && a == addr {
			g.fail(&PeerError{Rank: g.ranks[i], Addr: addr, Op: "connection", Err: err}, true)
			return
		}
	}
}

// peerDeparted marks the member at addr as gone after a normal shutdown:
// waits on it fail once its mailbox is empty; the group stays usable for
// whatever does not need it.
func (g *Group) peerDeparted(addr string) {
	for i, a := range g.addrs {
		if i != g.me && a == addr {
			g.boxes[i].depart(&PeerError{Rank: g.ranks[i], Addr: addr, Op: "connection", Err: errDeparted})
		}
	}
}

// failure returns nil, or the group's failure as seen by a call of op.
func (g *Group) failure(op string) error {
	g.failMu.Lock()
	cause := g.failErr
	g.failMu.Unlock()
	if cause == nil {
		return nil
	}
	var pe *PeerError
	if errors.As(cause, &pe) {
		if pe.Op == op {
			return pe
		}
		return &PeerError{Rank: pe.Rank, Addr: pe.Addr, Op: op, Err: pe.Err}
	}
	return fmt.Errorf("%s on group %q: %w", op, g.spec.Name, cause)
}

// deliver queues an incoming frame for its sender's mailbox.
func (g *Group) deliver(f *wireFrame) string {
	i, ok := g.index[int(f.srcRank)]
	if !ok || i == g.me {
		return fmt.Sprintf("rank %d is not a peer in group %q", f.srcRank, g.spec.Name)
	}
	g.boxes[i].push(f)
	return ""
}

// peerIndex maps a global rank to a peer's index.
func (g *Group) peerIndex(rank int, op string) (int, error) {
	i, ok := g.index[rank]
	if !ok {
		return 0, fmt.Errorf("parallel: %s: rank %d is not in group %q (ranks %v)", op, rank, g.spec.Name, g.ranks)
	}
	if i == g.me {
		return 0, fmt.Errorf("parallel: %s: rank %d is this worker", op, rank)
	}
	return i, nil
}

// Send sends buf to the member with global rank dst, which must call Recv
// with a buffer of the same length. It returns once buf may be reused; it
// does not wait for the receiver. Messages between a pair of ranks are
// matched in order.
func (g *Group) Send(ctx context.Context, dst int, buf []float32) error {
	const name = "send"
	i, err := g.peerIndex(dst, name)
	if err != nil {
		return err
	}
	if err := g.failure(name); err != nil {
		return err
	}
	g.p2pMu.Lock()
	seq := g.p2pSent[i]
	g.p2pSent[i]++
	g.p2pMu.Unlock()
	c := g.p2pCall(ctx, name, seq, len(buf))
	return c.endP2P(c.sendAll(i, buf))
}

// Recv receives into buf the next message that the member with global
// rank src sends to this worker; its length must be len(buf).
func (g *Group) Recv(ctx context.Context, src int, buf []float32) error {
	const name = "recv"
	i, err := g.peerIndex(src, name)
	if err != nil {
		return err
	}
	g.p2pMu.Lock()
	seq := g.p2pRcvd[i]
	g.p2pRcvd[i]++
	g.p2pMu.Unlock()
	c := g.p2pCall(ctx, name, seq, len(buf))
	return c.endP2P(c.recvAll(i, buf, applyCopy))
}

// AllReduce reduces buf element-wise over the group, in place: afterwards
// every member holds the same result, bit for bit.
func (g *Group) AllReduce(ctx context.Context, buf []float32, op ReduceOp) error {
	c, err := g.begin(ctx, "all-reduce", loomv1.CollectiveOp_COLLECTIVE_OP_ALL_REDUCE, len(buf))
	if err != nil {
		return err
	}
	return c.end(c.allReduce(buf, op))
}

func (c *call) allReduce(buf []float32, op ReduceOp) error {
	n := c.g.Size()
	if n == 1 || len(buf) == 0 {
		return nil
	}
	switch c.g.allReduceAlgorithm(len(buf)) {
	case RecursiveDoubling:
		return c.recursiveDoubling(buf, op)
	case HalvingDoubling:
		return c.halvingDoubling(buf, op, true, true)
	case Direct:
		return c.direct(buf, op)
	}
	return c.ring(buf, 0, 2*n-2, op)
}

// allReduceAlgorithm is the algorithm an all-reduce of n elements runs:
// the spec's (HalvingDoubling only where the group's size is a power of
// two, else Ring), else recursive doubling up to smallBytes and the ring
// above. It depends only on what every member shares (spec, size, length,
// transport mode), so every member runs the same algorithm and gets the
// same bits.
//
// Auto picks halving-doubling for groups of a power-of-two size above 2
// above halvingBytes: its 2·log2 n steps beat the ring's 2(n−1) over tcp
// from 256 KiB to 256 MiB at 4 ranks and over shm from 2 MiB (the package
// doc has the figures).
//
// Auto never picks Direct: with more ranks than cores (the only case this
// project's 2-core hosts can measure at 3 and 4 ranks) its one hop did not
// beat recursive doubling's two or three at any small size, as every
// member receives and copies n−1 buffers instead of ⌈log2 n⌉ and every
// one of its n−1 links polls. Three alternating rounds, rank 0's p50, shm,
// rd / direct / ring: 4 ranks 4 KiB 20–29 / 34–51 / 32–56 µs, 64 KiB
// 128–135 / 102–121 / 54–97; 3 ranks 4 KiB 11–15 / 12–21 / 14–15; tcp,
// 4 ranks 4 KiB 47–58 / 83–98 / 114–128.
func (g *Group) allReduceAlgorithm(n int) Algorithm {
	algo := g.spec.AllReduce
	if algo == Auto {
		switch size := g.Size(); {
		case 4*n <= g.smallBytes():
			algo = RecursiveDoubling
		case size > 2 && isPow2(size) && (4*n > g.halvingBytes() || 4*n <= g.halvingSmallBytes()):
			algo = HalvingDoubling
		default:
			algo = Ring
		}
	}
	if algo == HalvingDoubling && !isPow2(g.Size()) {
		algo = Ring
	}
	return algo
}

// AllReduceAlgorithm is the algorithm an all-reduce of elems elements
// runs on this group: the spec's, or what Auto picks for that length (the
// same on every member). Ring, RecursiveDoubling, HalvingDoubling or
// Direct; never Auto.
func (g *Group) AllReduceAlgorithm(elems int) Algorithm {
	return g.allReduceAlgorithm(elems)
}

// shardAlgorithm is how ReduceScatter and AllGather move shards: by
// halving and doubling when the spec asks for HalvingDoubling and the
// group's size is a power of two above 2, else around the ring (at 2
// members the two are the same steps, and the ring pipelines them chunk
// by chunk).
func (g *Group) shardAlgorithm() Algorithm {
	if n := g.Size(); g.spec.AllReduce == HalvingDoubling && n > 2 && isPow2(n) {
		return HalvingDoubling
	}
	return Ring
}

// ReduceScatter reduces buf element-wise over the group; afterwards this
// member's shard of buf (Shard(len(buf)), returned) holds the result. The
// rest of buf is left undefined.
func (g *Group) ReduceScatter(ctx context.Context, buf []float32, op ReduceOp) ([]float32, error) {
	c, err := g.begin(ctx, "reduce-scatter", loomv1.CollectiveOp_COLLECTIVE_OP_REDUCE_SCATTER, len(buf))
	if err != nil {
		return nil, err
	}
	off, n := g.Shard(len(buf))
	shard := buf[off : off+n]
	if g.Size() == 1 || len(buf) == 0 {
		return shard, c.end(nil)
	}
	var err2 error
	if g.shardAlgorithm() == HalvingDoubling {
		err2 = c.halvingDoubling(buf, op, true, false)
	} else {
		err2 = c.ring(buf, 0, g.Size()-1, op)
	}
	if err := c.end(err2); err != nil {
		return nil, err
	}
	return shard, nil
}

// AllGather fills buf from every member's shard: on entry this member's
// shard of buf (Shard(len(buf))) holds its contribution; on return all of
// buf holds everyone's.
func (g *Group) AllGather(ctx context.Context, buf []float32) error {
	c, err := g.begin(ctx, "all-gather", loomv1.CollectiveOp_COLLECTIVE_OP_ALL_GATHER, len(buf))
	if err != nil {
		return err
	}
	n := g.Size()
	if n == 1 || len(buf) == 0 {
		return c.end(nil)
	}
	if g.shardAlgorithm() == HalvingDoubling {
		return c.end(c.halvingDoubling(buf, Sum, false, true))
	}
	return c.end(c.ring(buf, n-1, 2*n-2, Sum))
}

// Broadcast copies buf of the member with global rank root into buf of
// every member.
func (g *Group) Broadcast(ctx context.Context, buf []float32, root int) error {
	ri, ok := g.index[root]
	if !ok {
		return fmt.Errorf("parallel: broadcast: root %d is not in group %q (ranks %v)", root, g.spec.Name, g.ranks)
	}
	c, err := g.begin(ctx, "broadcast", loomv1.CollectiveOp_COLLECTIVE_OP_BROADCAST, len(buf))
	if err != nil {
		return err
	}
	if g.Size() == 1 || len(buf) == 0 {
		return c.end(nil)
	}
	return c.end(c.broadcast(buf, ri))
}

// Barrier returns once every member has called it.
func (g *Group) Barrier(ctx context.Context) error {
	c, err := g.begin(ctx, "barrier", loomv1.CollectiveOp_COLLECTIVE_OP_BARRIER, 0)
	if err != nil {
		return err
	}
	return c.end(c.barrier())
}
