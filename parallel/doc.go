// Package parallel owns the data plane between workers: a gRPC Transport
// per worker and process groups (Group) on it with point-to-point and
// collective operations on float32 buffers.
//
// # Use
//
//	t, err := parallel.NewTransport(ctx, parallel.TransportOptions{ListenAddr: ":7071"})
//	defer t.Shutdown(ctx)           // or t.Close() to drop everything at once
//	dp, err := t.NewGroup(parallel.GroupSpec{
//		Job: "llama-7b", Generation: 3, Name: "dp0",
//		Ranks: []int{0, 2, 4, 6}, MyRank: 2,
//		Addrs: map[int]string{0: "10.0.0.1:7071", 4: "10.0.0.3:7071", 6: "10.0.0.4:7071"},
//		Timeout: 30 * time.Second,
//	})
//	err = dp.AllReduce(ctx, grads, parallel.Mean)          // in place
//	shard, err := dp.ReduceScatter(ctx, grads, parallel.Sum) // shard = grads[dp.Shard(len(grads))]
//	err = dp.AllGather(ctx, params)                        // fills params from every shard
//	err = dp.Broadcast(ctx, params, 0)
//	err = dp.Barrier(ctx)
//	err = pp.Send(ctx, nextStage, activations); err = pp.Recv(ctx, prevStage, grads)
//
// Ranks are global worker ranks; the order of GroupSpec.Ranks is the ring
// order and the shard order (ShardRange: the first length%n shards get one
// element more). Any length works, 0 included. Collectives on one Group run
// one at a time, in the same order on every member; Groups are independent
// and may run concurrently over the same connections; Send and Recv may run
// beside anything. All members get bit-identical all-reduce results.
//
// # Wire
//
// Every worker serves loomv1.Peer and opens one Exchange stream to every
// member of its groups (dialled when the group is created). All groups
// share that stream; each Frame carries (job, generation, group, seq, tag)
// and the receiver routes it to a per-(group, sender) mailbox and matches
// it exactly, so groups never mix and a late or early frame waits for its
// own call. Frames of a generation older than the newest group the
// receiver has for the job are rejected (REJECT back to the sender, whose
// group then fails with ErrStaleGeneration), never delivered; frames for a
// group not created yet are held until it is.
//
// The default codec (CodecRaw) writes the protobuf encoding of loomv1.Frame
// by hand, payload last and 4-byte aligned: the sender's float32 memory is
// handed to gRPC without a copy (gRPC's release of the buffer tells the
// collective it may overwrite that memory), and the receiver reduces or
// copies straight out of gRPC's receive buffers. CodecProto, plain
// proto.Marshal/Unmarshal, is kept as the measured baseline: it copies the
// payload once more on send and twice more on receive, and was 2–4× slower
// for 1–16 MiB all-reduces (see BenchmarkAllReduce).
//
// gRPC settings (TransportOptions defaults), measured with
// BenchmarkTransportTuning (CPU time per 16 MiB all-reduce, which the
// shared machine's load disturbs less than wall time) and `loom bench
// allreduce`. The data path is memory-bound, so the defaults keep the data
// in flight cache-sized: static 1 MiB stream and 2 MiB connection windows
// with 256 KiB chunks took about 25% less CPU than 32/64 MiB windows with
// 1 MiB chunks, whose receive buffers went cold before they were reduced;
// 256 KiB windows with 64 KiB chunks cost more again (more frames, more
// wake-ups). Loopback's bandwidth-delay product is far below 1 MiB; raise
// the windows for long fat networks. Static windows also skip gRPC's BDP
// probing. 1 MiB read and write buffers: fewer system calls; turning either
// off cost 15–30% more CPU, 32–64 KiB buffers 5–10% more. A receive buffer
// pool that neither zeroes buffers (gRPC's default zeroes each 16 KiB frame
// buffer, which cost as much CPU as the copy itself) nor forgets them at
// each GC, and reuses the most recently freed first. Messages with inline
// payloads (up to 32 KiB) are built in buffers from a second such pool,
// which gRPC returns once it has written them (a 4 KiB all-reduce of two
// ranks went from 13.1 to 3.4 KB allocated). 64 MiB frame limit.
//
// # Where the time goes
//
// Measured on the 2-core development VM, 2 ranks, each worker process on
// one Go scheduler thread (`loom bench allreduce` sets GOMAXPROCS to
// cores ÷ ranks; with two threads per worker every goroutine hand-off woke
// an idle vCPU and cost 15–30 µs). `loom bench wire` is the floor: a plain
// socket between two processes, both directions at once.
//
//   - Large buffers are bound by CPU per byte. A 16 MiB all-reduce spends
//     about 52% of a worker's CPU in the kernel's TCP copies (what the plain
//     socket spends too), 23% in memmove — gRPC-go copies every byte into
//     its write buffer and out of its read buffer into 16 KiB frame buffers,
//     and the all-gather copies into the caller's buffer — 7% in the
//     reduction and the rest in framing and scheduling; about 20% of the
//     wall time both workers wait on each other between ring steps. Loom
//     reaches 0.55–0.75 of the plain socket's bandwidth from 16 MiB up.
//   - Small buffers are bound by per-message cost: a 4 KiB exchange over a
//     plain socket takes 24–48 µs, a plain gRPC-go stream's one-way trip
//     about 60 µs (123 µs round trip), and Loom's 4 KiB all-reduce 95–135 µs.
//     In one worker: the write system call (26 µs median: on loopback it
//     runs the receiver's TCP path too), gRPC's send and receive machinery,
//     and two goroutine hand-offs (reader → stream → caller).
//
// Closing the rest of the gap needs a bulk path without HTTP/2 framing (a
// raw socket or shared memory negotiated over the Peer stream, as Gloo and
// NCCL do); the project keeps data on gRPC.
//
// # Algorithms
//
// AllReduce uses recursive doubling (⌈log2 n⌉ rounds; non-powers of two
// fold the extra ranks in first) up to GroupSpec.SmallBytes and a ring
// above. The switch point, 256 KiB, is measured (`loom bench allreduce
// --algo rd|ring`, best of two): with 2 ranks recursive doubling took 455
// µs at 256 KiB against the ring's 568, and 1315 µs at 512 KiB against 860;
// with 4 ranks 2308 against 2825 at 256 KiB and 4265 against 3022 at 512
// KiB. The ring is reduce-scatter then all-gather, 2(n−1) steps, each chunk
// (GroupSpec.ChunkBytes) forwarded as soon as it is reduced, with a sender
// goroutine so that writing one chunk overlaps reducing the next.
// ReduceScatter and AllGather are the two halves of the ring. Broadcast
// uses a binomial tree for small buffers and a chunk-pipelined chain for
// large ones; Barrier is a dissemination barrier.
//
// # Failure
//
// Every call takes a context. An operation waits at most GroupSpec.Timeout
// for each frame from a peer (progress, not the whole call); a broken
// connection to or from a member fails its groups at once. Either way the
// error is a *PeerError naming the peer's global rank and address and
// wrapping ErrPeerTimeout, ErrPeerGone, ErrStaleGeneration, ErrMismatch or
// the context's error, and the member tells the others (ABORT) so that
// they fail now, naming the same peer, instead of timing out. A failed
// group stays failed: every pending and later call returns the error;
// create a new group, normally for the next generation. HTTP/2 keepalive
// (TransportOptions.KeepaliveTime) breaks connections to frozen peers even
// when nothing waits on them. A peer that shuts down with Shutdown says
// GOODBYE first: only operations that still need it fail.
//
// Transport and Group are safe for concurrent use.
package parallel
