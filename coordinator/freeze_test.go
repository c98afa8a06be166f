package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Three checkpoints of a dp=2 job complete before the leader looks (it was
// away, checkpoint.every: 1): one round commits them all in transactions
// etcd accepts, records the newest, and deletes every report — the leader
// does not retry a refused round forever, and `loom stop` then works.
func TestSeveralCheckpointsInOneRound(t *testing.T) {
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
	c, err := New(Config{Etcd: cli, Addr: "c:1", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	keys := c.Keys()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, keys.Election())
	if err := el.Campaign(ctx, "c:1"); err != nil {
		t.Fatal(err)
	}
	jobDir := filepath.Join(t.TempDir(), "j")
	spec := fmt.Sprintf("name: j\ndata: {path: x.bin}\nparallel: {dp: 2}\ntrain: {global_batch: 16, micro_batch: 8}\ncheckpoint: {dir: %s, every: 1, keep: 2}\n", filepath.Dir(jobDir))
	put := func(k, v string) {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	put(keys.Desired("j"), Encode(&loomv1.JobDesired{Name: "j", SpecYaml: []byte(spec), WorldSize: 2}))
	for _, id := range []string{"w1", "w2"} {
		put(keys.Worker(id), Encode(&loomv1.WorkerInfo{Id: id, Addr: id + ":1", Host: "h", Version: "v1"}))
	}
	if err := c.reconcile(ctx, el.Key(), el.Rev()); err != nil {
		t.Fatal(err)
	}
	for step := 1; step <= 3; step++ {
		for _, p := range writeRanks(t, jobDir, step, 2) {
			b, _ := json.Marshal(p)
			rep := report(1, int64(step), p.Rank, 2)
			rep.PartJson = b
			put(keys.CheckpointReport("j", int64(step), p.Rank), Encode(rep))
		}
	}
	if err := c.reconcile(ctx, el.Key(), el.Rev()); err != nil {
		t.Fatalf("the round with three complete checkpoints: %v", err)
	}
	r, err := cli.Get(ctx, keys.Checkpoint("j"))
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("checkpoint record: %v, %v", r, err)
	}
	rec := &loomv1.CheckpointRecord{}
	if err := Decode("record", r.Kvs[0].Value, rec); err != nil || rec.Step != 3 {
		t.Fatalf("record %+v (%v), want step 3", rec, err)
	}
	if r, _ := cli.Get(ctx, keys.Job("j")+"checkpoints/", clientv3.WithPrefix(), clientv3.WithCountOnly()); r.Count != 0 {
		t.Errorf("%d reports left", r.Count)
	}
	// The job still obeys a stop.
	if _, err := c.Stop(ctx, &loomv1.StopRequest{Name: "j", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := c.reconcile(ctx, el.Key(), el.Rev()); err != nil {
		t.Fatal(err)
	}
	job, _, _, err := c.readJob(ctx, "j")
	if err != nil || job.Status.State != loomv1.JobState_JOB_STATE_STOPPED {
		t.Fatalf("after stop: %v, %v", job.GetStatus(), err)
	}
}
