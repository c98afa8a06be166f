package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

func report(gen uint64, step int64, rank, world int) *loomv1.CheckpointReport {
	return &loomv1.CheckpointReport{Job: "j", Generation: gen, Step: step, Rank: int32(rank), WorldSize: int32(world)}
}

// Transcript of the commit decision: a step is committed only when every
// rank of one generation has reported it, and dropped when it can no
// longer complete or is not newer than the latest checkpoint.
func TestDecideCheckpoints(t *testing.T) {
	reports := func(rs ...*loomv1.CheckpointReport) map[int64]map[int]*loomv1.CheckpointReport {
		m := map[int64]map[int]*loomv1.CheckpointReport{}
		for _, r := range rs {
			if m[r.Step] == nil {
				m[r.Step] = map[int]*loomv1.CheckpointReport{}
			}
			m[r.Step][int(r.Rank)] = r
		}
		return m
	}
	gen2 := &loomv1.Assignment{Job: "j", Generation: 2}
	cases := []struct {
		name   string
		j      JobObserved
		expect string // the action, and its report ranges
	}{
		{"one of two ranks reported, generation running",
			JobObserved{Assignment: gen2, Reports: reports(report(2, 4, 0, 2))}, ""},
		{"all ranks reported",
			JobObserved{Assignment: gen2, Reports: reports(report(2, 4, 0, 2), report(2, 4, 1, 2))},
			"checkpoints j commit=[4(2 ranks)] drop=[] [{4 4}]"},
		{"all reported after the job finished (no assignment)",
			JobObserved{Reports: reports(report(2, 4, 0, 2), report(2, 4, 1, 2))},
			"checkpoints j commit=[4(2 ranks)] drop=[] [{4 4}]"},
		{"a rank died before reporting: generation ended",
			JobObserved{Reports: reports(report(1, 4, 0, 2))},
			"checkpoints j commit=[] drop=[4] [{4 4}]"},
		{"reports of an older generation",
			JobObserved{Assignment: gen2, Reports: reports(report(1, 4, 0, 2), report(2, 4, 1, 2))},
			"checkpoints j commit=[] drop=[4] [{4 4}]"},
		{"not newer than the latest",
			JobObserved{Assignment: gen2, Checkpoint: &loomv1.CheckpointRecord{Step: 4},
				Reports: reports(report(2, 2, 0, 1), report(2, 6, 0, 1))},
			"checkpoints j commit=[6(1 ranks)] drop=[2] [{2 6}]"},
		// Several steps complete in one round (a coordinator that was away,
		// checkpoint.every: 1): one action commits them all; the step still
		// being written splits the report ranges.
		{"several complete steps, one in progress between",
			JobObserved{Assignment: gen2, Reports: reports(report(2, 1, 0, 2), report(2, 1, 1, 2), report(2, 2, 0, 2), report(2, 2, 1, 2),
				report(2, 3, 0, 2), report(2, 4, 0, 2), report(2, 4, 1, 2))},
			"checkpoints j commit=[1(2 ranks) 2(2 ranks) 4(2 ranks)] drop=[] [{1 2} {4 4}]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.j.Desired = &loomv1.JobDesired{Name: "j"}
			got := ""
			if a, ok := decideCheckpoints(c.j); ok {
				got = fmt.Sprintf("%s %v", a, a.DeleteReports)
			}
			if got != c.expect {
				t.Fatalf("got  %q\nwant %q", got, c.expect)
			}
		})
	}
}

// writeRanks writes world ranks' files of step under jobDir as ranks do
// and returns their reports' parts.
func writeRanks(t *testing.T, jobDir string, step, world int) []checkpoint.RankPart {
	t.Helper()
	var parts []checkpoint.RankPart
	for r := range world {
		s := &checkpoint.Snapshot{
			Part:   checkpoint.RankPart{Job: "j", Step: step, Rank: r, Layout: checkpoint.Layout{DP: world, TP: 1, PP: 1, WorldSize: world}, Spec: "name: j\n"},
			State:  checkpoint.RankState{DataStep: step},
			Slices: []checkpoint.Slice{{Key: checkpoint.SliceKey("param", "w", int64(4*r)), Kind: "param", Name: "w", Shape: []int{4 * world}, Start: int64(4 * r), Len: 4}},
			Data:   []float32{1, 2, 3, float32(step)},
		}
		p, err := checkpoint.WriteRank(context.Background(), jobDir, s, checkpoint.WriteOptions{})
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, p)
	}
	return parts
}

// The leader dies after every rank reported and before the manifest: the
// checkpoint stays partial, the previous one is the one a resume uses, and
// the next leader commits it.
func TestCheckpointLeaderDiesBeforeManifest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := StartEtcd(ctx, EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys := NewKeys("")
	jobDir := filepath.Join(t.TempDir(), "j")
	if _, err := checkpoint.Commit(writeRanks(t, jobDir, 2, 2), checkpoint.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf("name: j\ndata: {path: x.bin}\nparallel: {dp: 2}\ntrain: {global_batch: 16, micro_batch: 8}\ncheckpoint: {dir: %s, every: 2, keep: 1}\n", filepath.Dir(jobDir))
	if _, err := cli.Put(ctx, keys.Desired("j"), Encode(&loomv1.JobDesired{Name: "j", SpecYaml: []byte(spec), WorldSize: 2})); err != nil {
		t.Fatal(err)
	}
	for _, p := range writeRanks(t, jobDir, 4, 2) {
		b, _ := json.Marshal(p)
		rep := report(1, 4, p.Rank, 2)
		rep.PartJson = b
		if _, err := cli.Put(ctx, keys.CheckpointReport("j", 4, p.Rank), Encode(rep)); err != nil {
			t.Fatal(err)
		}
	}
	// Leader 1 stops exactly between the reports and the manifest.
	lctx, stop := context.WithCancel(ctx)
	died := make(chan struct{})
	c1, err := New(Config{Etcd: cli, Addr: "c1:1", LeaseTTL: 2 * time.Second, Resync: 100 * time.Millisecond,
		BeforeCheckpointManifest: func(job string, step int64) error {
			stop()
			close(died)
			return errors.New("leader killed before the manifest")
		}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c1.Run(lctx); close(done) }()
	<-died
	<-done
	if _, err := os.Stat(filepath.Join(checkpoint.PartialDir(jobDir, 4), checkpoint.ManifestFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("manifest after the leader died: %v", err)
	}
	ck, skipped, err := checkpoint.Resolve(jobDir, "latest")
	if err != nil || ck.Manifest.Step != 2 {
		t.Fatalf("resume after the leader died: %v, %+v", err, ck)
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0].Err.Error(), "step-4.partial") {
		t.Fatalf("skipped %v, want step-4.partial named", skipped)
	}
	if r, _ := cli.Get(ctx, keys.Checkpoint("j")); len(r.Kvs) != 0 {
		t.Fatalf("checkpoint recorded although the manifest was not written: %s", r.Kvs[0].Value)
	}

	// Leader 2 finds the reports and finishes the commit.
	c2, err := New(Config{Etcd: cli, Addr: "c2:1", LeaseTTL: 2 * time.Second, Resync: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop2 := context.WithCancel(ctx)
	defer stop2()
	go c2.Run(rctx)
	for {
		r, err := cli.Get(ctx, keys.Checkpoint("j"))
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) > 0 {
			rec := &loomv1.CheckpointRecord{}
			if err := Decode("checkpoint", r.Kvs[0].Value, rec); err != nil || rec.Step != 4 || rec.Dir != checkpoint.StepDir(mustAbs(t, jobDir), 4) {
				t.Fatalf("record %+v (%v)", rec, err)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the second leader did not commit step 4")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if r, _ := cli.Get(ctx, keys.CheckpointReports("j", 4), clientv3.WithPrefix()); len(r.Kvs) != 0 {
		t.Errorf("%d reports left after the commit", len(r.Kvs))
	}
	ck, _, err = checkpoint.Resolve(jobDir, "latest")
	if err != nil || ck.Manifest.Step != 4 {
		t.Fatalf("after the commit: %v, %+v", err, ck)
	}
	// keep: 1 removed step 2.
	if _, err := os.Stat(checkpoint.StepDir(jobDir, 2)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("retention (keep 1) left step-2: %v", err)
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
