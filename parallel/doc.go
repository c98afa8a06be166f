// Package parallel owns the data plane between workers: a Transport per
// worker (gRPC to negotiate; raw TCP, shared memory or gRPC to carry
// tensors) and process groups (Group) on it with point-to-point and
// collective operations on float32 buffers.
//
// # Use
//
//	t, err := parallel.NewTransport(ctx, parallel.TransportOptions{ListenAddr: ":7071"}) // Mode: ModeAuto
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
// # Transports
//
// gRPC is the control plane of the data plane: every worker serves
// loomv1.Peer, and opens one Exchange stream per member of its groups and
// job generation (dialled when the group is created). The stream's HELLO
// names the job, generation, the transport the dialer wants
// (TransportOptions.Mode) and its host's boot id; the server's WELCOME
// settles it and mints a secret. Then, per direction:
//
//   - shm (peers on one host, the same boot id): the sender creates a ring
//     in a memfd, connects to the receiver's abstract Unix socket and
//     passes the memfd there with the secret (SCM_RIGHTS; nothing is left
//     in /dev/shm). A small frame is copied once, from the caller's buffer
//     into the ring, and the receiver reduces or copies straight out of
//     the ring into the destination. A payload of 1 MiB or more — of
//     64 KiB or more (256 KiB for a send that waits to be read) when the
//     linked processes outnumber the cores — goes by reference where the system allows it (probed at the handshake;
//     TransportOptions.ShmNoSingleCopy turns it off): the ring carries its
//     address, the receiver reads the sender's buffer straight into the
//     destination (process_vm_readv, as OpenMPI's vader does with CMA),
//     and the send returns on its acknowledgement — or at once for the
//     ring's sends, which the call settles before it returns (a failed
//     call gives the peer a moment, then breaks the link so it drops what
//     it reads). An empty ring is polled for PollSpin (yielding the core
//     between polls), longer when the wait is for a by-reference read
//     (about 0.5 ms per MiB unread), then the waiter sets its flag in the shared
//     header and sleeps on a channel, and the sender clears the flag and
//     writes a byte on the Unix socket, whose reading goroutine wakes it:
//     idle links cost no CPU. Since Go's network poller does not run
//     while any goroutine of the process polls, every polling loop also
//     wakes the process's sleeping waiters whose flag was cleared, and
//     sees parked tcp readers' sockets turn readable (bellBoard). The
//     socket also carries death: when either process exits the other's
//     read returns.
//   - tcp (other peers): a raw connection to the peer's data-plane address
//     (the listener tells it from gRPC by its first 8 bytes, so one port
//     serves both), authenticated with the secret. A frame is one vectored
//     write of header and caller's payload (one system call for a small
//     message, no copy in user space); the reader reads the payload
//     straight into the destination, or into a 256 KiB buffer it reduces
//     from. Like a shm reader, it polls its socket (non-blocking reads,
//     yielding between them) for PollSpin before it parks in Go's network
//     poller, whose wake-up is a kernel wake-up of the thread (on a VM, of
//     a halted vCPU); inside TLS it parks at once. A small frame (header
//     and payload up to 64 KiB) goes out in one raw writev (see rawSock). With TransportOptions.TLS the connection runs TLS right after
//     its clear-text preamble (the secret and every frame inside; a small
//     frame's header and payload joined in one record, as TLS has no
//     vectored write), and so do the gRPC streams; shm links are not
//     wrapped (only the host's own processes can open them).
//   - grpc: frames stay on the Exchange stream (below). The fallback: auto
//     falls back shm → tcp → grpc when a link cannot be opened, and says
//     so; an explicit mode fails instead, naming the peer.
//
// ModeAuto picks shm for same-host peers and tcp for the others; each
// choice is logged and reported (Transport.Links, TransportOptions.OnLink:
// the worker's loom_worker_link{peer,transport}). Two workers asking for
// different explicit modes, or shm across hosts, fail their groups with an
// error that says so. Bulk links carry COLLECTIVE and P2P frames in a fixed
// binary layout (transport_bulk.go) with the same fields as loomv1.Frame;
// job and generation are the link's, which serves one generation.
// REJECT, ABORT and GOODBYE stay on the gRPC stream.
//
// Every transport keeps the same guarantees. Frames are routed by (job,
// generation, group, sender) to a mailbox and matched by (kind, seq, tag),
// so groups never mix and a late or early frame waits for its own call.
// Frames of a generation older than the newest group the receiver has for
// the job are rejected (REJECT back to the sender, whose group then fails
// with ErrStaleGeneration), never delivered; frames for a group not created
// yet are held until it is; a bulk connection without a secret the
// receiver minted is closed before anything is read from it.
//
// Receives are posted: a call says where each frame it expects goes and
// whether it is copied or reduced, before the frame can arrive where that
// is safe (see ring.go), and whoever holds the frame applies it. A frame
// that arrives first is kept in a pooled buffer (a large one is held up to
// 20 µs for its receive first). Calls, receive slabs, frames and buffers
// are reused: a steady-state all-reduce on tcp or shm allocates nothing
// (TestNoAllocationsInSteadyState). The reductions are AVX-512 / AVX2
// assembly (reduce_amd64.s; pure Go under -tags purego or elsewhere),
// checked bit for bit against the reference loops.
//
// On the grpc transport the default codec (CodecRaw) writes the protobuf
// encoding of loomv1.Frame by hand, payload last and 4-byte aligned: the
// sender's float32 memory is handed to gRPC without a copy (gRPC's release
// of the buffer tells the collective it may overwrite that memory), and the
// receiver reduces or copies straight out of gRPC's receive buffers.
// CodecProto, plain proto.Marshal/Unmarshal, is kept as the measured
// baseline: it copies the payload once more on send and twice more on
// receive, and was 2–4× slower for 1–16 MiB all-reduces (see
// BenchmarkAllReduce).
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
// which gRPC returns once it has written them. 64 MiB frame limit.
//
// # Where the time goes
//
// Measured on the 2-core development VM (Sapphire-Rapids-class Xeon), 2
// ranks, each worker process on one Go scheduler thread (`loom bench
// allreduce` sets GOMAXPROCS to cores ÷ ranks), rank 0's p50 (how the
// OpenMPI anchor and `loom bench wire` time; the slowest rank's per
// iteration, also printed, is 10–30% higher), in a quiet moment; the final
// figures are scripts/bench.py comm's.
//
//   - tcp, large buffers: bound by the kernel's loopback copies, which the
//     plain socket pays too (a 16 MiB profile: 56% of a worker's CPU in
//     write/read system calls, 26% memmove before the read-ahead limit, 7%
//     reduction). 64–256 MiB ran at 0.9–1.2× `loom bench wire`, 16 MiB at
//     about 0.8, 1 MiB at 1.4× (the wire's 1 MiB rounds are slowed by its
//     own goroutine per round).
//   - tcp, small buffers: a 4 KiB all-reduce took 16–17 µs against the
//     wire's 12 µs and OpenMPI-TCP's 13: each rank makes one writev, and its
//     reader wakes from the network poller and hands the frame to the
//     waiting call — one goroutine hand-off the plain socket's benchmark
//     does not have — and on an idle 2-vCPU VM every wake-up of the other
//     vCPU costs several µs. The reader now polls its socket first (as
//     OpenMPI polls): per frame, epoll_pwait calls fell from 1.1 to 0.07
//     and futex calls from 0.8 to 0.2 (strace -c, 10,000 all-reduces).
//     On a loaded VM (load 3–7 from other work) six alternating rounds
//     gave rank 0's p50 10–27 µs against 17–26 before and OpenMPI-TCP's
//     14–19; a polling reader yields its core to whatever else runs, so
//     the figure follows the machine's load more than the code.
//   - shm: 4 KiB in 7 µs (OpenMPI's busy-polling vader: 2.7), 16–64 KiB
//     within 20% of OpenMPI-shm, 256 KiB level with it, 16 MiB and up
//     2–6× faster on an earlier VM (OpenMPI dropped to 0.6–0.9 GB/s once
//     buffers left the cache there). On a later one (2 ranks, 6 rounds
//     alternating with OpenMPI-shm, medians of p50): 1 MiB 271 µs vs 275,
//     4 MiB 945 vs 1,030, 16 MiB 4,877 vs 4,786 — where before the ring's
//     sends were lazy and by-reference waits polled longer they took 289,
//     1,916 and 12,065: every hop waited for an acknowledgement, and most
//     waits slept and paid a halted vCPU's wake-up. At 4 ranks on 2 cores
//     (nothing polled) 1 MiB took ~1.8 ms against OpenMPI's ~0.8 (quiet): six
//     ring hops, each a wake-up of a process that needs a busy core.
//     perf sched: each of the ranks' 5,400 wake-ups in a 300-iteration
//     run waited 0.2 ms on average for a core, and a rank was on a core
//     for only 0.42 ms of each 1.9 ms all-reduce (0.18 ms of it reading
//     its peers' memory); the cores went to other ranks' and other
//     processes' work meanwhile. Fewer hops did not help
//     (HalvingDoubling's 4 steps; see halving.go). Polling for 2 ms
//     instead of sleeping made 1 MiB ~20% faster but 4 KiB 20× slower
//     — because a poll kept Go's network poller, which reads the doorbells
//     of the process's sleeping waiters, from running at all (it runs
//     only when a P has nothing else to run): a sleeper's wake-up waited
//     for every poll of its process to give up. The bells (bellBoard) fix
//     that, and oversubscribed waits now poll 200 µs (oversubscribedSpin):
//     4 ranks shm on 2 cores, 4 KiB 73–84 → 18 µs, 64 KiB 280–312 → 78,
//     level with OpenMPI-shm from 4 KiB to 256 KiB in three alternating
//     rounds (transport.go has the figures).
//     What did help: the profile showed 16% of a reader's CPU in waking
//     sysmon (runtime.entersyscallWakeSysmon → futex) and process_vm_readv
//     losing its P to sysmon mid-copy. Every call of the scheduler's
//     system-call path from a process that had gone idle wakes sysmon, a
//     thread that then wants a core too. The calls that never wait
//     (non-blocking socket reads and writes of at most 64 KiB, the doorbell
//     bytes, sched_yield, process_vm_readv in 256 KiB pieces) are now raw
//     system calls (rawSock), parking in the network poller only when a
//     socket is not ready: 4 ranks shm, 4 KiB 247 → 116 µs, 1 MiB 2,152 →
//     1,737, 4 MiB 5,682 → 5,186; 4 ranks tcp 4 KiB 185 → 126 (medians of
//     3–4 alternating rounds on a loaded VM). And a wait on a by-reference
//     copy in progress now polls for as long as the copy should take even
//     when oversubscribed (spinFor): 1 MiB 1,365 → 684. Four rounds
//     alternating with OpenMPI-shm (rank 0's p50; the VM's load varied
//     from 1 to 4 meanwhile, and so did OpenMPI): 256 KiB 144–232 µs vs
//     192–300, 1 MiB 467–942 vs 827–1,336, 4 MiB 2,331–3,478 vs
//     2,757–6,279, 16 MiB 10.4–21.7 ms vs 17.5–42.2 — ahead in three
//     rounds of four at each size; 4 KiB 73–88 µs vs 18–29 (behind: a
//     small frame's wait slept; see the bells above).
//     Before single copy a frame went
//     into the ring and out of it, two passes where OpenMPI makes one, and
//     1–4 MiB ran 1.5× slower on an earlier VM; on this one, with a core
//     for each rank, the two passes on two cores at once beat the
//     receiver's one for frames below 1 MiB, the default ring's size
//     (2 ranks, 256 KiB 52 → 30 µs, 1 MiB 200 → 130–148; they lose on a
//     loaded VM; see shmByRefFor). Small messages cost per-message work: the
//     reader's poll loop, the hand-off to the waiting call, the mailbox
//     locks. While each linked process has a core, a waiting call takes
//     small frames (up to 64 KiB, whole in the ring) out of the ring
//     itself, and the reader yields to it meanwhile (ringPoller): 2 ranks,
//     3 alternating rounds, 4 KiB p50 of the slowest rank 1.8 → 1.6–1.7 µs
//     and rank 0's 1.8 → 1.4 (p90 2.2–5.3 → 1.8–1.9), 16 KiB 3.5 → 3.3,
//     64 KiB 9.9–10.2 → 9.0–9.1. With more processes than cores calls
//     leave the rings to their readers, whose polls are paced to give the
//     core away (see spinWait). Polling is what makes
//     them fast: sleeping on the doorbell at
//     once (PollSpin < 0) made 4 KiB 25 µs. But only while every linked
//     process has a core: with more (4 ranks on 2 cores) a polling rank
//     holds the core the rank it waits for needs, and 4 KiB took 307–437
//     µs polling against 185–200 sleeping at once. Those figures were
//     the network poller's starvation (above); with the bells, a
//     transport polls DefaultPollSpin while its peers on the host and
//     itself fit the cores and oversubscribedSpin beyond
//     (Transport.pollSpinFor). The sleep/wake flags are stored with a full fence
//     (see shmRing).
//
// # Algorithms
//
// AllReduce uses recursive doubling (⌈log2 n⌉ rounds; non-powers of two
// fold the extra ranks in first) up to GroupSpec.SmallBytes and a ring
// above. The switch point depends on the transport (measured with `loom
// bench allreduce --algo rd|ring`, 2 ranks, alternating runs): over gRPC
// 256 KiB (recursive doubling 455 µs against the ring's 568 at 256 KiB,
// 1315 against 860 at 512 KiB); over tcp 128 KiB (at 32 KiB 23 µs against
// 33, at 256 KiB 114–141 against 85–100); over shm the ring wins from about
// 16 KiB (32 KiB: 13 µs against 15–19; 256 KiB 56 against 88–91). Auto
// uses tcp's, since members must agree and cannot know each other's
// links. The ring is reduce-scatter then all-gather, 2(n−1) steps, each
// chunk (GroupSpec.ChunkBytes: 256 KiB over gRPC, 1 MiB on bulk links)
// forwarded as soon as it is reduced; its receives are posted before the
// frames can arrive (every reduce-scatter receive up front, each all-gather receive once the chunk it overwrites
// has been sent), so a bulk link reduces or copies each frame into place as
// it lands, beside the caller's sends. ReduceScatter and AllGather are the
// two halves of the ring. GroupSpec.AllReduce = HalvingDoubling (groups
// whose size is a power of two) runs Rabenseifner's reduce-scatter by
// recursive halving and all-gather by recursive doubling instead, for
// AllReduce, ReduceScatter and AllGather: the ring's bytes in 2·log2 n
// steps, each element reduced once along a fixed binary tree and copied,
// so the bits are the same on every member and every run (halving.go
// says the order; TestHalvingDoublingOrder checks it). Auto chooses it in
// groups of 4, 8 … members above SmallBytes over tcp (ModeTCP), above
// 1 MiB over shm and auto (shmHalvingBytes), and over shm from SmallBytes
// to 64 KiB too (shmHalvingSmallBytes; 4 ranks on 2 cores, rank 0's p50,
// 3 alternating rounds of Auto: 32 KiB 30–35 → 23–28 µs, 64 KiB 39–48 →
// 36–41, OpenMPI vader 41). 4 ranks shm on 2 cores (3
// alternating rounds, rank 0's p50, ring / halving-doubling / OpenMPI
// vader): 1 MiB 570–592 / 619–1,103 / 743–849 µs, 4 MiB 3.0–3.3 /
// 2.2–2.3 / 3.0–3.3 ms, 16 MiB 15.7–20.6 / 10.7–15.1; 2 rounds at 2 MiB
// 1.50–1.53 / 1.04–1.23 ms, 64 MiB 82 / 63–65, 256 MiB 293–319 / 239–286.
// Below 1 MiB over shm the two traded places from round to round.
// GroupSpec.AllReduce = Direct is the one-shot all-reduce (as DeepSpeed's
// CPU shm all-reduce and NCCL's one-shot do for small buffers): every
// member sends its whole buffer to every other and reduces the n
// contributions in rank order (identical bits everywhere), one hop
// instead of ⌈log2 n⌉, for n−1 buffers sent and received per member and
// (n−1)·len(buf) elements of group scratch. Auto does not choose it: with
// more ranks than cores (3 and 4 ranks on 2 cores, shm and tcp) it never
// beat recursive doubling at 4–16 KiB (see Group.allReduceAlgorithm).
// 4 ranks tcp on 2 cores (3 alternating rounds, rank 0's p50, with
// the polling tcp writer below; ring / halving-doubling / OpenMPI-TCP): 1 MiB
// 1,575–1,930 / 923–1,378 / 1,174–1,608 µs, 4 MiB 6.1–7.1 / 5.8–7.2 /
// 5.5–8.3 ms, 16 MiB 25.7–36.1 / 26.9–32.2; 2 rounds at 64 MiB 133–139 /
// 126–130, 256 MiB 462–550 / 451–513; before it, at 256 KiB, 465–679 /
// 245–430 / 462–516 µs. Fewer steps win there because every step of
// either algorithm moves its bytes through two kernel copies per hop.
//
// tcp, large frames (4 ranks on 2 cores): a writer that found its socket
// full parked in Go's network poller, and a copied payload was read
// through it too; with the other goroutines of its process polling, the
// poller ran late (see bellBoard), and the cores sat 15% idle while the
// ranks took 15,000 interrupts a second (vmstat; OpenMPI, which polls,
// none). A plain socket's large frame is now written with raw
// non-blocking writev calls that poll for room (one ppoll per poll)
// before they park, and read with the same polling raw reads as a reduced
// one; both poll for as long as the frame's bytes should take (spinFor,
// as shm's by-reference waits; 4 alternating rounds, 4 ranks, medians of
// rank 0's p50: 4 MiB 6.6 → 6.3 ms, 16 MiB 32.2 → 30.8, 2 ranks 16 MiB
// 8.3 → 7.5: within noise, but never behind in 3 rounds of 4) or the
// transport's polling time: ring 4 MiB 9.2–11.5 → 6.1–7.1 ms, 16
// MiB 38.8–45.3 → 25.7–36.1; 2 ranks (2 rounds) 1 MiB 435–565 → 366–372
// µs, 4 MiB 2.6–2.8 → 1.8–2.0 ms, 64 MiB 49–58 → 36–42, 256 MiB 192–212
// → 148–154.
// Broadcast uses a binomial tree for small buffers
// and a chunk-pipelined chain for large ones; Barrier is a dissemination
// barrier.
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
// when nothing waits on them. A bulk link fails its connection as soon as
// it breaks: a tcp peer's exit closes its sockets, a shm peer's exit
// closes the Unix socket its ring's reader sleeps on (or that the sender
// watches), so a dead peer is named at once on every transport, and a
// silent one after the group's Timeout. A write into a full socket or
// ring waits at most the Timeout too. A peer that shuts down with Shutdown
// says GOODBYE first, on the stream and on its bulk link, after its last
// frame: only operations that still need it fail. The existing failure
// tests (SIGKILL mid-collective, closed peer, silent peer, context
// deadline, stale generation, shutdown after a barrier) run on grpc, tcp
// and shm, under -race.
//
// Transport and Group are safe for concurrent use.
package parallel
