// Package coordinator owns Loom's control plane: the job and worker state
// kept in etcd, the pure reconciliation that turns observed state into
// actions (Decide), the leader election that lets a standby take over, and
// the Coordinator gRPC service that `loom submit`, `loom status`, `loom stop`
// and workers talk to.
//
// # State in etcd
//
// Everything lives under one key prefix (DefaultPrefix, "/loom/v1/"). Values
// are protojson-encoded messages of package loomv1, so `etcdctl get` shows
// readable JSON.
//
//	key                                 value          written by                 lifetime
//	jobs/NAME/desired                   JobDesired     Submit, Stop (any coord.)  until resubmitted
//	jobs/NAME/status                    JobStatus      leader only (fenced)       until resubmitted
//	jobs/NAME/assignment                Assignment     leader only (fenced)       while a generation runs
//	jobs/NAME/results/GEN/RANK          RankResult     the rank's worker          until resubmitted
//	jobs/NAME/progress/RANK             RankProgress   coordinator (ReportSteps)  until resubmitted
//	jobs/NAME/checkpoints/STEP/RANK     CheckpointReport the rank's worker        until committed or dropped
//	jobs/NAME/checkpoint                CheckpointRecord leader only (fenced)     until resubmitted
//	workers/ID                          WorkerInfo     the worker                 its session lease
//	quarantine/ID                       Quarantine     leader only (fenced)       until ID re-registers, goes or is assigned
//	election/...                        leader's addr  concurrency.Election       the leader's lease
//
// Desired state (desired) is the user's; observed state (status) is the
// leader's. GEN is a zero-padded decimal so keys sort by generation.
//
// Step histories live beside the prefix, not under it (e.g.
// "/loom/v1-history/"), so that reconciling never reads them; their values
// are plain JSON (history.go, docs/metrics.md):
//
//	PREFIX-history/NAME/job             jobState       the leader, every 5 s      overwritten by the next run
//	PREFIX-history/NAME/ranks/RANK      rankState      the leader, every 5 s      overwritten by the next run
//
// # Reconciliation
//
// The leader re-reads the whole prefix whenever anything under it changes
// (and every resync interval), computes Decide(observed) — a pure function —
// and applies the resulting actions in etcd transactions that compare the
// create revision of its election key, so a deposed leader cannot write. A
// round's writes hold each key once by construction (writeSet: one action
// of each kind per job, however many checkpoints completed since the last
// round; a job's writes in one transaction) and are checked against etcd's
// transaction rule before they are sent, so a round etcd would refuse is
// never retried forever. A restarted coordinator needs no memory: it reads
// the same state. The randomized transcript test (transcript_test.go) plays
// the outside world against Decide and checks every round and fixed point.
//
// Rendezvous follows TorchElastic: once enough idle workers of the
// coordinator's Loom version are registered, the leader writes an
// Assignment for the next generation (its data-parallel size, rank, (dp,
// pp, tp) coordinates, peers' data-plane addresses). The first generation
// waits for parallel.dp; a restart takes the largest reachable dp in
// [elastic.min_dp, elastic.max_dp] the idle workers fill (JobObserved.
// Elastic), waiting up to elastic.rendezvous_timeout for the survivors of
// the ended generation to rejoin; tp and pp stay. A generation ends when
// every rank has an ok result (SUCCEEDED), when a rank's worker lease
// expires, its engine fails or it hangs (WAITING for a restart while
// max_restarts allows, else FAILED), when the job is stopped (STOPPED),
// or — an elastic job below max_dp with workers idle since before the
// checkpoint its generation just committed — to grow (WAITING, not a
// restart). Ending a generation deletes its assignment, which cancels the
// engines of the remaining ranks; it is recorded in JobStatus.recoveries
// (reason, steps lost, dp before and after, how long the next generation
// took to train). A restart (generation > 1) resumes from the recorded
// checkpoint (Assignment.resume names its directory, so every rank
// restores the same one, resharded).
//
// A rank whose engine lost its connection to a peer (RankResult.lost_peer)
// while that peer reported nothing names the peer: the failure says the
// peer was lost and which ranks saw it (a killed worker keeps its lease
// for up to the TTL, so its rank is found lost by its peers first). The
// live workers of a failed generation are held out of the next rendezvous
// (quarantine/ID) until each rewrites its registration, which a worker
// does when its generation's assignment is deleted and which a dead or
// frozen one cannot; spares are preferred over released workers.
//
// # Checkpoints
//
// Ranks save at deterministic step boundaries and report their durable
// files under checkpoints/STEP/RANK; when every rank of a generation has
// reported a step, the leader writes the manifest, then records checkpoint
// and deletes the reports (coordinator/checkpoint.go, docs/checkpoints.md).
package coordinator
