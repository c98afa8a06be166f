package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/loomtrain/loom/api"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// snapshot is everything under the prefix at one revision.
type snapshot struct {
	Rev      int64
	Observed Observed
	// Progress by job, then rank.
	Progress map[string]map[int]*loomv1.RankProgress
	// DesiredRev is each job's desired key mod revision.
	DesiredRev map[string]int64
	// StatusRev is each job's status key mod revision (0: absent).
	StatusRev map[string]int64
	// Problems lists keys that did not decode; they are skipped.
	Problems []error
}

// readSnapshot reads and decodes the whole prefix at one revision.
func readSnapshot(ctx context.Context, cli *clientv3.Client, keys Keys, version string) (*snapshot, error) {
	resp, err := cli.Get(ctx, keys.Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s from etcd: %w", keys.Prefix, err)
	}
	s := &snapshot{
		Rev:        resp.Header.Revision,
		Observed:   Observed{Version: version},
		Progress:   map[string]map[int]*loomv1.RankProgress{},
		DesiredRev: map[string]int64{},
		StatusRev:  map[string]int64{},
	}
	type jobAcc struct {
		JobObserved
		createRev int64
		results   map[uint64]map[int]*loomv1.RankResult
	}
	jobs := map[string]*jobAcc{}
	acc := func(name string) *jobAcc {
		j := jobs[name]
		if j == nil {
			j = &jobAcc{results: map[uint64]map[int]*loomv1.RankResult{}}
			jobs[name] = j
		}
		return j
	}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		if id, ok := cutPrefix(key, keys.Workers()); ok {
			w := &loomv1.WorkerInfo{}
			if err := Decode(key, kv.Value, w); err != nil {
				s.Problems = append(s.Problems, err)
				continue
			}
			if w.Id == "" {
				w.Id = id
			}
			s.Observed.Workers = append(s.Observed.Workers, w)
			continue
		}
		name, kind, rest, ok := keys.parseJobKey(key)
		if !ok {
			continue
		}
		var err error
		switch kind {
		case "desired":
			j := acc(name)
			j.Desired = &loomv1.JobDesired{}
			err = Decode(key, kv.Value, j.Desired)
			j.createRev = kv.CreateRevision
			s.DesiredRev[name] = kv.ModRevision
		case "status":
			j := acc(name)
			j.Status = &loomv1.JobStatus{}
			err = Decode(key, kv.Value, j.Status)
			s.StatusRev[name] = kv.ModRevision
		case "assignment":
			j := acc(name)
			j.Assignment = &loomv1.Assignment{}
			err = Decode(key, kv.Value, j.Assignment)
		case "results":
			gen, rank, ok := parseGenRank(rest)
			if !ok {
				continue
			}
			r := &loomv1.RankResult{}
			if err = Decode(key, kv.Value, r); err == nil {
				j := acc(name)
				if j.results[gen] == nil {
					j.results[gen] = map[int]*loomv1.RankResult{}
				}
				j.results[gen][rank] = r
			}
		case "checkpoints":
			step, rank, ok := parseGenRank(rest)
			if !ok {
				continue
			}
			r := &loomv1.CheckpointReport{}
			if err = Decode(key, kv.Value, r); err == nil {
				j := acc(name)
				if j.Reports == nil {
					j.Reports = map[int64]map[int]*loomv1.CheckpointReport{}
				}
				if j.Reports[int64(step)] == nil {
					j.Reports[int64(step)] = map[int]*loomv1.CheckpointReport{}
				}
				j.Reports[int64(step)][rank] = r
			}
		case "checkpoint":
			j := acc(name)
			j.Checkpoint = &loomv1.CheckpointRecord{}
			err = Decode(key, kv.Value, j.Checkpoint)
		case "progress":
			p := &loomv1.RankProgress{}
			if err = Decode(key, kv.Value, p); err == nil {
				if s.Progress[name] == nil {
					s.Progress[name] = map[int]*loomv1.RankProgress{}
				}
				s.Progress[name][int(p.Rank)] = p
			}
		}
		if err != nil {
			s.Problems = append(s.Problems, err)
		}
	}
	var list []*jobAcc
	for name, j := range jobs {
		if j.Desired == nil {
			// Leftovers of a job being replaced; nothing to decide.
			continue
		}
		if j.Desired.Name == "" {
			j.Desired.Name = name
		}
		spec, err := api.ParseSpec(j.Desired.SpecYaml, "job "+name)
		j.Parallel, j.SpecErr = spec.Parallel, err
		if j.Assignment != nil {
			j.Results = j.results[j.Assignment.Generation]
		}
		list = append(list, j)
	}
	sort.Slice(list, func(a, b int) bool { return list[a].createRev < list[b].createRev })
	for _, j := range list {
		s.Observed.Jobs = append(s.Observed.Jobs, j.JobObserved)
	}
	return s, nil
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return "", false
}

// ErrNotLeader is returned when a fenced write finds that this coordinator
// no longer holds the election.
var ErrNotLeader = errors.New("coordinator: not the leader (election key changed)")

// apply writes actions in one transaction fenced on the leader's election
// key: the writes happen only while that key still has createRev.
func apply(ctx context.Context, cli *clientv3.Client, keys Keys, leaderKey string, leaderRev int64, acts []Action, nowMs int64) error {
	var ops []clientv3.Op
	for _, a := range acts {
		switch a.Kind {
		case PutStatus:
			a.Status.UpdatedUnixMs = nowMs
			ops = append(ops, clientv3.OpPut(keys.Status(a.Job), Encode(a.Status)))
		case PutAssignment:
			ops = append(ops, clientv3.OpPut(keys.Assignment(a.Job), Encode(a.Assignment)))
		case DeleteAssignment:
			ops = append(ops, clientv3.OpDelete(keys.Assignment(a.Job)))
		case CommitCheckpoint:
			if a.Record == nil {
				continue // the manifest was not written; nothing to record
			}
			ops = append(ops, clientv3.OpPut(keys.Checkpoint(a.Job), Encode(a.Record)),
				clientv3.OpDelete(keys.CheckpointReports(a.Job, a.Step), clientv3.WithPrefix()))
		case DropCheckpointReports:
			ops = append(ops, clientv3.OpDelete(keys.CheckpointReports(a.Job, a.Step), clientv3.WithPrefix()))
		}
	}
	if len(ops) == 0 {
		return nil
	}
	// etcd caps a transaction at 128 operations; each chunk is fenced, and
	// a partly applied round is finished by the next (Decide is level-
	// triggered).
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(leaderKey), "=", leaderRev)).
			Then(ops[:n]...).Commit()
		if err != nil {
			return fmt.Errorf("apply %d actions to etcd: %w", len(acts), err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
		ops = ops[n:]
	}
	return nil
}

// maxTxnOps stays under etcd's default --max-txn-ops (128).
const maxTxnOps = 100
