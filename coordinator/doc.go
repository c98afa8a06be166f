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
// and applies the resulting actions in one etcd transaction that compares
// the create revision of its election key, so a deposed leader cannot
// write. A restarted coordinator needs no memory: it reads the same state.
//
// Rendezvous follows TorchElastic: once world-size idle workers of the
// coordinator's Loom version are registered, the leader writes an
// Assignment for the next generation (rank, (dp, pp, tp) coordinates, peers'
// data-plane addresses). A generation ends when every rank has an ok
// result (SUCCEEDED), when a rank's worker lease expires or its engine
// fails (WAITING for a restart while max_restarts allows, else FAILED), or
// when the job is stopped (STOPPED). Ending a generation deletes its
// assignment, which cancels the engines of the remaining ranks. A restart
// (generation > 1) resumes from the newest complete checkpoint.
//
// # Checkpoints
//
// Ranks save at deterministic step boundaries and report their durable
// files under checkpoints/STEP/RANK; when every rank of a generation has
// reported a step, the leader writes the manifest, then records checkpoint
// and deletes the reports (coordinator/checkpoint.go, docs/checkpoints.md).
package coordinator
