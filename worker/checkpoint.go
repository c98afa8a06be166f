package worker

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/loomtrain/loom/coordinator"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// reportCheckpoint records that this rank's files of the checkpoint of
// step are durable (jobs/NAME/checkpoints/STEP/RANK), only while the
// assignment it trains under is current: a rank of an ended generation
// cannot complete a checkpoint of the next. The leader writes the manifest
// once every rank has reported (see coordinator/checkpoint.go).
func (w *Worker) reportCheckpoint(ctx context.Context, a *loomv1.Assignment, rank int, assignRev int64, step int, part []byte) error {
	rep := &loomv1.CheckpointReport{Job: a.Job, Generation: a.Generation, Step: int64(step), Rank: int32(rank),
		WorldSize: a.WorldSize, PartJson: part}
	wctx, cancel := context.WithTimeout(ctx, w.cfg.DialTimeout)
	defer cancel()
	akey := w.keys.Assignment(a.Job)
	txn, err := w.etcd.Txn(wctx).
		If(clientv3.Compare(clientv3.ModRevision(akey), "=", assignRev)).
		Then(clientv3.OpPut(w.keys.CheckpointReport(a.Job, int64(step), rank), coordinator.Encode(rep))).Commit()
	if err != nil {
		return fmt.Errorf("report checkpoint step %d of rank %d to etcd: %w", step, rank, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("report checkpoint step %d of rank %d: generation %d of job %s has ended", step, rank, a.Generation, a.Job)
	}
	return nil
}
