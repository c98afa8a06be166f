package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

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
	return decodeSnapshot(resp.Header.Revision, resp.Kvs, keys, version), nil
}

// decodeSnapshot decodes the keys under the prefix read at revision rev.
func decodeSnapshot(rev int64, kvs []*mvccpb.KeyValue, keys Keys, version string) *snapshot {
	s := &snapshot{
		Rev:        rev,
		Observed:   Observed{Version: version, WorkerRev: map[string]int64{}, Quarantine: map[string]*loomv1.Quarantine{}},
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
	for _, kv := range kvs {
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
			s.Observed.WorkerRev[w.Id] = kv.ModRevision
			continue
		}
		if id, ok := cutPrefix(key, keys.Quarantines()); ok {
			q := &loomv1.Quarantine{}
			if err := Decode(key, kv.Value, q); err != nil {
				s.Problems = append(s.Problems, err)
				continue
			}
			s.Observed.Quarantine[id] = q
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
			j.CheckpointRev = kv.ModRevision
		case "progress":
			p := &loomv1.RankProgress{}
			if err = Decode(key, kv.Value, p); err == nil {
				if s.Progress[name] == nil {
					s.Progress[name] = map[int]*loomv1.RankProgress{}
				}
				s.Progress[name][int(p.Rank)] = p
				j := acc(name)
				if j.Progress == nil {
					j.Progress = map[int]*loomv1.RankProgress{}
				}
				j.Progress[int(p.Rank)] = p
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
		if err == nil {
			lo, hi := spec.DPRange()
			j.Elastic = &ElasticObserved{Reachable: spec.ReachableDP(), MinDP: lo, MaxDP: hi,
				RendezvousTimeout: spec.Elastic.RendezvousTimeout, Steps: spec.Train.Steps}
		}
		if j.Assignment != nil {
			j.Results = j.results[j.Assignment.Generation]
		}
		list = append(list, j)
	}
	sort.Slice(list, func(a, b int) bool { return list[a].createRev < list[b].createRev })
	for _, j := range list {
		s.Observed.Jobs = append(s.Observed.Jobs, j.JobObserved)
	}
	return s
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

// apply writes a round's actions to etcd, each transaction fenced on the
// leader's election key: the writes happen only while that key still has
// createRev. The writes hold each key once (writeSet); a job's writes go
// in one transaction, and transactions hold whole jobs up to maxTxnOps.
// A round cut short (a later transaction fenced off, a lost connection)
// is finished by the next one: Decide is level-triggered.
func apply(ctx context.Context, cli *clientv3.Client, keys Keys, leaderKey string, leaderRev int64, acts []Action, nowMs int64) error {
	txns, err := buildTxns(keys, acts, nowMs)
	if err != nil {
		return err
	}
	for _, ops := range txns {
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(leaderKey), "=", leaderRev)).
			Then(ops...).Commit()
		if err != nil {
			return fmt.Errorf("apply %d actions to etcd: %w", len(acts), err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
	}
	return nil
}

// maxTxnOps stays under etcd's default --max-txn-ops (128).
const maxTxnOps = 100

// writeSet is the writes of one job (or of the workers) in one round. It
// holds each key at most once by construction: a put or delete of a key
// replaces the earlier one, the checkpoint record keeps the newest step,
// and report ranges, which lie under jobs/NAME/checkpoints/ where no key
// of the other kinds is, only ever grow. Ops renders it puts first, then
// deletes, each sorted by key, so a round is deterministic.
type writeSet struct {
	puts   map[string]string
	dels   map[string]bool
	ranges map[string]string // from → to (exclusive)
	record *loomv1.CheckpointRecord
	recKey string
}

func newWriteSet() *writeSet {
	return &writeSet{puts: map[string]string{}, dels: map[string]bool{}, ranges: map[string]string{}}
}

func (w *writeSet) put(key, value string) {
	delete(w.dels, key)
	w.puts[key] = value
}

func (w *writeSet) del(key string) {
	delete(w.puts, key)
	w.dels[key] = true
}

func (w *writeSet) deleteRange(from, to string) {
	if cur, ok := w.ranges[from]; !ok || to > cur {
		w.ranges[from] = to
	}
}

func (w *writeSet) putRecord(key string, r *loomv1.CheckpointRecord) {
	if w.record == nil || r.Step > w.record.Step {
		w.record, w.recKey = r, key
	}
}

func (w *writeSet) ops() []clientv3.Op {
	if w.record != nil {
		w.put(w.recKey, Encode(w.record))
		w.record = nil
	}
	var ops []clientv3.Op
	for _, k := range sortedKeys(w.puts) {
		ops = append(ops, clientv3.OpPut(k, w.puts[k]))
	}
	for _, k := range sortedKeys(w.dels) {
		ops = append(ops, clientv3.OpDelete(k))
	}
	for _, from := range sortedKeys(w.ranges) {
		ops = append(ops, clientv3.OpDelete(from, clientv3.WithRange(w.ranges[from])))
	}
	return ops
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// buildTxns turns a round's actions into etcd transactions: one writeSet
// per job, packed whole into transactions of at most maxTxnOps operations
// (a job with more is split, in key order). Every transaction is checked
// with checkTxn, the rule etcd applies, so a round is never sent that etcd
// would refuse and retry forever.
func buildTxns(keys Keys, acts []Action, nowMs int64) ([][]clientv3.Op, error) {
	sets := map[string]*writeSet{}
	var order []string
	set := func(job string) *writeSet {
		w := sets[job]
		if w == nil {
			w = newWriteSet()
			sets[job] = w
			order = append(order, job)
		}
		return w
	}
	for _, a := range acts {
		w := set(a.Job)
		switch a.Kind {
		case PutStatus:
			st := proto.Clone(a.Status).(*loomv1.JobStatus)
			st.UpdatedUnixMs = nowMs
			w.put(keys.Status(a.Job), Encode(st))
		case PutAssignment:
			w.put(keys.Assignment(a.Job), Encode(a.Assignment))
		case DeleteAssignment:
			w.del(keys.Assignment(a.Job))
		case PutQuarantine:
			w.put(keys.Quarantine(a.Quarantine.WorkerId), Encode(a.Quarantine))
		case DeleteQuarantine:
			w.del(keys.Quarantine(a.Worker))
		case Checkpoints:
			if a.Record != nil {
				w.putRecord(keys.Checkpoint(a.Job), a.Record)
			}
			for _, r := range a.DeleteReports {
				w.deleteRange(keys.CheckpointReports(a.Job, r.From), keys.CheckpointReports(a.Job, r.To+1))
			}
		}
	}
	var txns [][]clientv3.Op
	var cur []clientv3.Op
	for _, job := range order {
		ops := sets[job].ops()
		if len(cur)+len(ops) > maxTxnOps && len(cur) > 0 {
			txns = append(txns, cur)
			cur = nil
		}
		for len(ops) > maxTxnOps {
			txns = append(txns, ops[:maxTxnOps])
			ops = ops[maxTxnOps:]
		}
		cur = append(cur, ops...)
	}
	if len(cur) > 0 {
		txns = append(txns, cur)
	}
	for _, ops := range txns {
		if err := checkTxn(ops); err != nil {
			return nil, fmt.Errorf("coordinator: a round's writes would be refused by etcd (%w); not sending them", err)
		}
	}
	return txns, nil
}

// ErrDuplicateKey is a transaction that writes a key twice (two puts, or a
// put inside a deleted range): etcd refuses it whole.
var ErrDuplicateKey = errors.New("duplicate key in one transaction")

// checkTxn applies etcd's rule for the operations of one transaction
// (etcd server, v3rpc checkIntervals): no key is put twice and no put
// lies in a deleted key or range; at most maxTxnOps operations.
func checkTxn(ops []clientv3.Op) error {
	if len(ops) > maxTxnOps {
		return fmt.Errorf("%d operations, more than %d", len(ops), maxTxnOps)
	}
	type span struct{ from, to string } // to "" : the single key from
	var dels []span
	for _, op := range ops {
		if op.IsDelete() {
			dels = append(dels, span{string(op.KeyBytes()), string(op.RangeBytes())})
		}
	}
	puts := map[string]bool{}
	for _, op := range ops {
		if !op.IsPut() {
			continue
		}
		k := string(op.KeyBytes())
		if puts[k] {
			return fmt.Errorf("%w: %s put twice", ErrDuplicateKey, k)
		}
		for _, d := range dels {
			if k == d.from || d.to != "" && k >= d.from && k < d.to {
				return fmt.Errorf("%w: %s put and deleted", ErrDuplicateKey, k)
			}
		}
		puts[k] = true
	}
	return nil
}
