package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// memStore is an in-memory stand-in for etcd: keys with create and mod
// revisions, and transactions checked by etcdTxnRule, the test's own
// statement of the rule etcd applies. The leader's round is the
// coordinator's own pipeline: decodeSnapshot, Decide, commitCheckpoints
// (real files), buildTxns.
type memStore struct {
	t   *testing.T
	k   Keys
	c   *Coordinator
	h   *lineHandler
	rev int64
	kv  map[string]*mvccpb.KeyValue
	// cut is set by a leader change: the next round applies only some of
	// its transactions, as a leader that dies mid-round does.
	cut  bool
	r    *rand.Rand
	logf func(string)
}

func newMemStore(t *testing.T) *memStore {
	h := &lineHandler{}
	return &memStore{t: t, k: NewKeys(""), h: h, kv: map[string]*mvccpb.KeyValue{},
		c: &Coordinator{cfg: Config{Now: time.Now}, keys: NewKeys(""), log: slog.New(h)}}
}

func (s *memStore) keys() Keys                  { return s.k }
func (s *memStore) setLog(f func(string))       { s.h.out, s.logf = f, f }
func (s *memStore) setClock(f func() time.Time) { s.c.cfg.Now = f }
func (s *memStore) close()                      {}

func (s *memStore) put(key, value string) {
	s.rev++
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: s.rev, ModRevision: s.rev}
	if old := s.kv[key]; old != nil {
		kv.CreateRevision = old.CreateRevision
	}
	s.kv[key] = kv
}

func (s *memStore) deleteRange(from, to string) bool {
	hit := false
	for k := range s.kv {
		if k == from || to != "" && k >= from && k < to {
			delete(s.kv, k)
			hit = true
		}
	}
	return hit
}

func (s *memStore) del(key string) {
	if s.deleteRange(key, "") {
		s.rev++
	}
}

func (s *memStore) delPrefix(prefix string) {
	if s.deleteRange(prefix, clientv3.GetPrefixRangeEnd(prefix)) {
		s.rev++
	}
}

func (s *memStore) register(id, value string) { s.put(s.k.Worker(id), value) }
func (s *memStore) expire(id string)          { s.del(s.k.Worker(id)) }
func (s *memStore) reannounce(id string) {
	if kv := s.kv[s.k.Worker(id)]; kv != nil {
		s.put(s.k.Worker(id), string(kv.Value))
	}
}

func (s *memStore) snapshot() *snapshot {
	kvs := make([]*mvccpb.KeyValue, 0, len(s.kv))
	for _, kv := range s.kv {
		kvs = append(kvs, kv)
	}
	sort.Slice(kvs, func(i, j int) bool { return string(kvs[i].Key) < string(kvs[j].Key) })
	return decodeSnapshot(s.rev, kvs, s.k, "v1")
}

// etcdTxnRule is etcd's check of one transaction's operations, stated
// independently of the coordinator's checkTxn: a key may be put once, not
// put and deleted, and a transaction holds at most 128 operations (etcd's
// default --max-txn-ops).
func etcdTxnRule(ops []clientv3.Op) error {
	if len(ops) > 128 {
		return fmt.Errorf("%d operations: etcd's --max-txn-ops is 128", len(ops))
	}
	seen := map[string]bool{}
	for _, op := range ops {
		if !op.IsPut() {
			continue
		}
		k := string(op.KeyBytes())
		if seen[k] {
			return fmt.Errorf("etcdserver: duplicate key given in txn request: %s put twice", k)
		}
		seen[k] = true
		for _, d := range ops {
			if !d.IsDelete() {
				continue
			}
			from, to := string(d.KeyBytes()), string(d.RangeBytes())
			if k == from || to != "" && k >= from && k < to {
				return fmt.Errorf("etcdserver: duplicate key given in txn request: %s put and deleted [%s, %s)", k, from, to)
			}
		}
	}
	return nil
}

func (s *memStore) round() (bool, error) {
	snap := s.snapshot()
	snap.Observed.NowUnixMs = s.c.cfg.Now().UnixMilli()
	acts := Decide(snap.Observed)
	acts, err := s.c.commitCheckpoints(context.Background(), acts)
	if err != nil {
		return false, err
	}
	txns, err := buildTxns(s.k, acts, 1)
	if err != nil {
		return false, err
	}
	changed := false
	if s.cut && len(txns) > 0 {
		// The next leader starts a new round whatever this one wrote.
		s.cut, changed = false, true
		n := s.r.Intn(len(txns))
		s.logf(fmt.Sprintf("the leader dies after %d of the round's %d transactions", n, len(txns)))
		txns = txns[:n]
	}
	for i, ops := range txns {
		if err := etcdTxnRule(ops); err != nil {
			var acted []string
			for _, a := range acts {
				acted = append(acted, a.String())
			}
			return false, fmt.Errorf("transaction %d of the round is not valid in etcd: %w\nactions:\n  %s", i, err, strings.Join(acted, "\n  "))
		}
		for _, op := range ops {
			if op.IsPut() {
				s.put(string(op.KeyBytes()), string(op.ValueBytes()))
			} else if op.IsDelete() {
				s.deleteRange(string(op.KeyBytes()), string(op.RangeBytes()))
			}
		}
		s.rev++
		changed = changed || len(ops) > 0
	}
	for _, a := range acts {
		s.logf(a.String())
	}
	return changed, nil
}

func (s *memStore) leaderChange(r *rand.Rand) error {
	s.cut, s.r = r.Intn(2) == 0, r
	return nil
}

// TestDecideTranscript plays seeded transcripts of the control plane on
// the in-memory store (see transcript_test.go). -transcript.seed replays
// one; -soak=D plays new seeds, on the in-memory store and on the embedded
// etcd in turn, for D.
func TestDecideTranscript(t *testing.T) {
	if *soak > 0 {
		soakTranscripts(t, *soak)
		return
	}
	seeds := []int64{1, 2, 3}
	if *transcriptSeed != 0 {
		seeds = []int64{*transcriptSeed}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			runTranscript(t, seed, 70, newMemStore(t))
		})
	}
}

func soakTranscripts(t *testing.T, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
	defer cancel()
	e, err := StartEtcd(ctx, EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	deadline := time.Now().Add(d)
	base := time.Now().UnixNano()
	n := 0
	for ; time.Now().Before(deadline); n++ {
		seed := base + int64(n)
		ok := t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			if n%4 == 3 {
				runTranscript(t, seed, 100, newEtcdStore(t, ctx, e.Endpoints, fmt.Sprintf("/soak/%d/", seed)))
				return
			}
			runTranscript(t, seed, 300, newMemStore(t))
		})
		if !ok {
			return
		}
	}
	t.Logf("soak: %d transcripts in %v, all passed", n, d)
}
