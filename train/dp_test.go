package train

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/zero"
)

// dpLosses trains spec on dp ranks, each with its own loopback gRPC
// transport, and returns rank 0's loss per step (every rank must agree).
func dpLosses(t *testing.T, spec api.JobSpec, dp int) []float64 {
	t.Helper()
	stats, _ := dpRun(t, spec, dp)
	out := make([]float64, len(stats[0]))
	for i, s := range stats[0] {
		out[i] = s.Loss
	}
	return out
}

// dpRun trains spec on dp ranks, each with its own loopback gRPC
// transport, and returns every rank's step statistics and counted memory;
// it fails the test unless every rank reports the same losses.
func dpRun(t *testing.T, spec api.JobSpec, dp int, opts ...func(*parallel.GroupSpec)) ([][]Stats, []zero.Memory) {
	t.Helper()
	return dpRunSetup(t, spec, dp, nil, opts...)
}

// dpRunSetup is dpRun with setup called on each rank's trainer before it
// trains (to enable checkpoints or restore one).
func dpRunSetup(t *testing.T, spec api.JobSpec, dp int, setup func(rank int, tr *Trainer) error, opts ...func(*parallel.GroupSpec)) ([][]Stats, []zero.Memory) {
	t.Helper()
	spec.Parallel.DP = dp
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addrs := map[int]string{}
	var ts []*parallel.Transport
	for r := 0; r < dp; r++ {
		tr, err := parallel.NewTransport(ctx, parallel.TransportOptions{ListenAddr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		ts = append(ts, tr)
		addrs[r] = tr.Addr()
	}
	ranks := make([]int, dp)
	for i := range ranks {
		ranks[i] = i
	}
	out := make([][]Stats, dp)
	mem := make([]zero.Memory, dp)
	errs := make([]error, dp)
	var wg sync.WaitGroup
	for r := 0; r < dp; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gs := parallel.GroupSpec{Job: "dp-test", Generation: 1, Name: "dp", Ranks: ranks, MyRank: r, Addrs: addrs, Timeout: 30 * time.Second}
			for _, o := range opts {
				o(&gs)
			}
			g, err := ts[r].NewGroup(gs)
			if err != nil {
				errs[r] = err
				return
			}
			defer g.Close()
			ds, err := data.OpenDataset(spec.Data, spec.Model.SeqLen)
			if err != nil {
				errs[r] = err
				return
			}
			defer ds.Close()
			tr, err := New(Config{Spec: spec, Kernels: tensor.Reference{}, Loader: ds.Train, Validation: ds.Validation, DP: g, BucketBytes: 16 << 10})
			if err != nil {
				errs[r] = err
				return
			}
			mem[r] = tr.Memory()
			if setup != nil {
				if errs[r] = setup(r, tr); errs[r] != nil {
					return
				}
			}
			errs[r] = tr.Run(ctx, func(s Stats) { out[r] = append(out[r], s) })
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for r := 1; r < dp; r++ {
		for i := range out[0] {
			if out[r][i].Loss != out[0][i].Loss {
				t.Fatalf("rank %d step %d loss %v, rank 0 %v", r, i+1, out[r][i].Loss, out[0][i].Loss)
			}
		}
	}
	return out, mem
}

// Every data-parallel size reproduces the single-rank loss trajectory for
// the same global batch, with gradient accumulation and clipping active.
func TestDataParallelMatchesSingleRank(t *testing.T) {
	spec := tinySpec(corpus(t))
	spec.Train.Steps = 10
	spec.Train.GlobalBatch, spec.Train.MicroBatch = 8, 1
	spec.Train.GradClip = 0.5
	want := dpLosses(t, spec, 1)
	for _, dp := range []int{2, 4} {
		t.Run(fmt.Sprintf("dp=%d", dp), func(t *testing.T) {
			got := dpLosses(t, spec, dp)
			for i := range want {
				if rel := math.Abs(got[i]-want[i]) / want[i]; rel > 1e-5 {
					t.Fatalf("step %d: dp=%d loss %.7f, dp=1 %.7f (rel %.2g)", i+1, dp, got[i], want[i], rel)
				}
			}
		})
	}
}
