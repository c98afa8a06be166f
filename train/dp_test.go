package train

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/parallel/inproc"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor"
)

// runOpts configures layoutRun.
type runOpts struct {
	// inproc runs the ranks' groups over parallel/inproc instead of one
	// loopback gRPC transport per rank.
	inproc bool
	// setup is called on each rank's trainer before it trains (to enable
	// checkpoints or restore one).
	setup func(rank int, tr *Trainer) error
	// group adjusts each gRPC group's spec.
	group func(*parallel.GroupSpec)
	// after, if set, is called on each rank's trainer after it trained
	// (on every rank concurrently, so it may run collectives).
	after func(rank int, tr *Trainer) error
	// kernels, if set, makes each rank's kernels instead of tensor.Reference.
	kernels func() (tensor.Kernels, func())
}

// layoutRun trains spec on its parallel layout (dp·tp·pp ranks from one plan,
// each rank's groups as the plan names them) and returns every rank's step
// statistics and counted memory; it fails the test unless every rank
// reports the same losses.
func layoutRun(t *testing.T, spec api.JobSpec, o runOpts) ([][]Stats, []plan.Memory) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	world := spec.Parallel.WorldSize()
	p, err := plan.New(spec, world)
	if err != nil {
		t.Fatal(err)
	}
	comms := make([]Comms, world)
	if o.inproc {
		made := map[string][]*inproc.Member{}
		member := func(g plan.Group, r int) parallel.Comm {
			if g.Size() <= 1 {
				return nil
			}
			if made[g.Name] == nil {
				made[g.Name] = inproc.NewGroup(g.Name, g.Ranks, inproc.Options{})
			}
			return made[g.Name][g.Index(r)]
		}
		for r := range world {
			rp := p.Rank(r)
			comms[r] = Comms{TP: member(rp.TP, r), DP: member(rp.DP, r), KV: member(rp.KV, r), PP: member(rp.PP, r), Emb: member(rp.Emb, r)}
		}
	} else if world > 1 {
		addrs := map[int]string{}
		var ts []*parallel.Transport
		for r := 0; r < world; r++ {
			tr, err := parallel.NewTransport(ctx, parallel.TransportOptions{ListenAddr: "127.0.0.1:0"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			ts = append(ts, tr)
			addrs[r] = tr.Addr()
		}
		for r := range world {
			rp := p.Rank(r)
			join := func(g plan.Group) parallel.Comm {
				if g.Size() <= 1 {
					return nil
				}
				gs := parallel.GroupSpec{Job: "layout-test", Generation: 1, Name: g.Name, Ranks: g.Ranks, MyRank: r, Addrs: addrs, Timeout: 30 * time.Second}
				if o.group != nil {
					o.group(&gs)
				}
				grp, err := ts[r].NewGroup(gs)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { grp.Close() })
				return grp
			}
			comms[r] = Comms{TP: join(rp.TP), DP: join(rp.DP), KV: join(rp.KV), PP: join(rp.PP), Emb: join(rp.Emb)}
		}
	}
	out := make([][]Stats, world)
	mem := make([]plan.Memory, world)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := 0; r < world; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds, err := data.OpenDataset(spec.Data, spec.Model.SeqLen)
			if err != nil {
				errs[r] = err
				return
			}
			defer ds.Close()
			l := ds.Train
			var k tensor.Kernels = tensor.Reference{}
			if o.kernels != nil {
				kk, done := o.kernels()
				defer done()
				k = kk
			}
			tr, err := New(Config{Spec: spec, Kernels: k, Loader: l, Validation: ds.Validation, Plan: p, Rank: r, Comms: comms[r], BucketBytes: 16 << 10})
			if err != nil {
				errs[r] = err
				return
			}
			mem[r] = tr.Memory()
			if o.setup != nil {
				if errs[r] = o.setup(r, tr); errs[r] != nil {
					return
				}
			}
			errs[r] = tr.Run(ctx, func(s Stats) { out[r] = append(out[r], s) })
			if errs[r] == nil && o.after != nil {
				errs[r] = o.after(r, tr)
			}
		}()
	}
	wg.Wait()
	var failed []string
	for r, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Sprintf("rank %d: %v", r, err))
		}
	}
	if len(failed) > 0 {
		t.Fatal(strings.Join(failed, "\n"))
	}
	for r := 1; r < world; r++ {
		for i := range out[0] {
			if out[r][i].Loss != out[0][i].Loss || out[r][i].GradNorm != out[0][i].GradNorm {
				t.Fatalf("rank %d step %d loss %v grad norm %v, rank 0 %v %v", r, i+1, out[r][i].Loss, out[r][i].GradNorm, out[0][i].Loss, out[0][i].GradNorm)
			}
		}
	}
	return out, mem
}

// dpLosses trains spec on dp ranks, each with its own loopback gRPC
// transport, and returns rank 0's loss per step (every rank must agree).
func dpLosses(t *testing.T, spec api.JobSpec, dp int) []float64 {
	t.Helper()
	stats, _ := dpRun(t, spec, dp)
	return lossesOf(stats[0])
}

func lossesOf(st []Stats) []float64 {
	out := make([]float64, len(st))
	for i, s := range st {
		out[i] = s.Loss
	}
	return out
}

// dpRun trains spec on dp ranks over loopback gRPC (layoutRun).
func dpRun(t *testing.T, spec api.JobSpec, dp int, opts ...func(*parallel.GroupSpec)) ([][]Stats, []plan.Memory) {
	t.Helper()
	spec.Parallel.DP = dp
	var o runOpts
	if len(opts) > 0 {
		o.group = opts[0]
	}
	return layoutRun(t, spec, o)
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
