package coordinator

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/plan"
)

// DefaultPrefix is the etcd key prefix of Loom's control-plane state.
const DefaultPrefix = "/loom/v1/"

// Keys names the etcd keys under one prefix (see the package doc's table).
// A Keys value is immutable and safe for concurrent use.
type Keys struct {
	Prefix string // ends in "/"
}

// NewKeys returns the key layout under prefix ("" means DefaultPrefix).
func NewKeys(prefix string) Keys {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Keys{Prefix: prefix}
}

// Jobs is the prefix of every job's keys.
func (k Keys) Jobs() string { return k.Prefix + "jobs/" }

// Job is the prefix of one job's keys.
func (k Keys) Job(name string) string { return k.Jobs() + name + "/" }

// Desired is the key of a job's desired state.
func (k Keys) Desired(name string) string { return k.Job(name) + "desired" }

// Status is the key of a job's observed state.
func (k Keys) Status(name string) string { return k.Job(name) + "status" }

// Assignment is the key of a job's current generation.
func (k Keys) Assignment(name string) string { return k.Job(name) + "assignment" }

// Results is the prefix of a generation's rank results.
func (k Keys) Results(name string, gen uint64) string {
	return fmt.Sprintf("%sresults/%010d/", k.Job(name), gen)
}

// Result is the key of one rank's result in a generation.
func (k Keys) Result(name string, gen uint64, rank int) string {
	return fmt.Sprintf("%s%d", k.Results(name, gen), rank)
}

// Progress is the key of one rank's latest batch of steps.
func (k Keys) Progress(name string, rank int) string {
	return fmt.Sprintf("%sprogress/%d", k.Job(name), rank)
}

// CheckpointReports is the prefix of the ranks' reports of one checkpoint
// step.
func (k Keys) CheckpointReports(name string, step int64) string {
	return fmt.Sprintf("%scheckpoints/%010d/", k.Job(name), step)
}

// CheckpointReport is the key of one rank's report of a checkpoint step.
func (k Keys) CheckpointReport(name string, step int64, rank int) string {
	return fmt.Sprintf("%s%d", k.CheckpointReports(name, step), rank)
}

// Checkpoint is the key of a job's latest complete checkpoint.
func (k Keys) Checkpoint(name string) string { return k.Job(name) + "checkpoint" }

// Snapshots is the prefix of the in-memory snapshots the workers hold of
// a job (elastic.snapshot_every), one key per worker.
func (k Keys) Snapshots(name string) string { return k.Job(name) + "snapshots/" }

// Snapshot is the key of the snapshot one worker holds of a job
// (loomv1.SnapshotHolding), written under the worker's lease.
func (k Keys) Snapshot(name, worker string) string { return k.Snapshots(name) + worker }

// Workers is the prefix of worker registrations.
func (k Keys) Workers() string { return k.Prefix + "workers/" }

// Worker is the key of one worker's registration.
func (k Keys) Worker(id string) string { return k.Workers() + id }

// Quarantines is the prefix of the workers held out of rendezvous.
func (k Keys) Quarantines() string { return k.Prefix + "quarantine/" }

// Quarantine is the key of one worker's quarantine record.
func (k Keys) Quarantine(id string) string { return k.Quarantines() + id }

// Election is the prefix of the coordinators' leader election.
func (k Keys) Election() string { return k.Prefix + "election" }

// keyKind classifies a key under Jobs(): it returns the job name, the kind
// ("desired", "status", "assignment", "results", "progress") and the rest.
func (k Keys) parseJobKey(key string) (job, kind, rest string, ok bool) {
	s, found := strings.CutPrefix(key, k.Jobs())
	if !found {
		return "", "", "", false
	}
	parts := strings.SplitN(s, "/", 3)
	if len(parts) < 2 {
		return "", "", "", false
	}
	if len(parts) == 3 {
		rest = parts[2]
	}
	return parts[0], parts[1], rest, true
}

// parseGenRank parses "GEN/RANK" of a results key.
func parseGenRank(rest string) (uint64, int, bool) {
	g, r, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, false
	}
	gen, err1 := strconv.ParseUint(g, 10, 64)
	rank, err2 := strconv.Atoi(r)
	return gen, rank, err1 == nil && err2 == nil
}

var jsonOpts = protojson.MarshalOptions{UseProtoNames: true}

// Encode renders a record as stored in etcd (protojson).
func Encode(m proto.Message) string {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		// Marshalling a well-formed message cannot fail; a failure here is a
		// programming error, not bad input.
		panic(fmt.Sprintf("coordinator: encode %T: %v", m, err))
	}
	return string(b)
}

// Decode parses a record stored in etcd; key names it in the error.
func Decode(key string, b []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return fmt.Errorf("etcd key %s: decode %T: %w", key, m, err)
	}
	return nil
}

// RankCoords returns the (dp, pp, tp) coordinates of a rank in the job's
// plan (plan.Mesh): tensor parallelism varies fastest, then data
// parallelism, then pipeline stage, so a tensor-parallel group is a run of
// consecutive ranks, which the rendezvous places on one host when it can.
// Workers check the coordinates they are assigned against their plan.
func RankCoords(rank int, p api.ParallelSpec) (dp, pp, tp int) {
	c := plan.MeshOf(p).Coord(rank)
	return c.DP, c.PP, c.TP
}
