package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/parallel/inproc"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/schedule"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/timeline"
)

// ppSpec is the model of the pipeline proofs: 8 blocks (enough for pp 4
// with two virtual stages), 10 steps of 8 micro-batches of one sequence
// (accumulation across micro-batches) at dp 1, clipping active.
func ppSpec(path string, tied bool) api.JobSpec {
	s := tpSpec(path, tied)
	s.Model.NLayers = 8
	s.Train.GlobalBatch, s.Train.MicroBatch = 8, 1
	return s
}

// pp 2 and pp 4 under every schedule reproduce one rank within 1e-5 per
// step over 10 steps, tied and untied, balanced and with uneven explicit
// stage cuts; every rank reports the same loss and grad norm. Most cases
// run over the in-process fake; one per schedule over loopback gRPC.
func TestPipelineMatchesSingleRank(t *testing.T) {
	path := corpus(t)
	for _, tied := range []bool{false, true} {
		spec := ppSpec(path, tied)
		want, _ := layoutRun(t, spec, runOpts{})
		for _, c := range []struct {
			sched string
			pp, v int
			cut   []int
		}{
			{schedule.GPipe, 2, 1, []int{5, 3}}, {schedule.GPipe, 4, 1, nil},
			{schedule.OneFOneB, 2, 1, nil}, {schedule.OneFOneB, 4, 1, []int{3, 2, 2, 1}},
			{schedule.Interleaved, 2, 2, []int{3, 1, 1, 3}}, {schedule.Interleaved, 4, 2, nil},
			{schedule.ZBH1, 2, 1, []int{2, 6}}, {schedule.ZBH1, 4, 1, nil},
			{schedule.Interleaved, 1, 3, []int{2, 3, 3}}, // one rank, its stages handing over in memory
		} {
			grpc := tied == (c.pp == 2) && c.pp > 1
			name := fmt.Sprintf("tied=%v/%s/pp=%d/v=%d/cut=%v/grpc=%v", tied, c.sched, c.pp, c.v, c.cut, grpc)
			t.Run(name, func(t *testing.T) {
				s := spec
				s.Parallel.PP, s.Parallel.Schedule, s.Parallel.VirtualStages, s.Parallel.Stages = c.pp, c.sched, c.v, c.cut
				got, _ := layoutRun(t, s, runOpts{inproc: !grpc})
				compareRuns(t, got[0], want[0], s.Train.GradClip)
			})
		}
	}
}

// dp 2 × pp 2 with ZeRO 1, 2 and 3, tp 2 × pp 2 (sequence parallelism off
// and on, kv heads replicated), and dp 2 × tp 2 × pp 2 (ZeRO 1 and 3)
// reproduce one rank (tied embeddings); the
// tensor-parallel operations each rank counts are plan.TPComm's for its
// stages, and the memory each rank counts from its allocations is the
// plan's, pipeline message buffers and activation slots included.
func TestPipelineWithDataAndTensorParallel(t *testing.T) {
	path := corpus(t)
	spec := ppSpec(path, true)
	spec.Model.NLayers = 4
	spec.Train.Steps = 6
	refs := map[[2]int][][]Stats{} // one rank's run by (global batch, micro-batch)
	for _, c := range []struct {
		dp, tp, zero int
		sp           bool
		sched        string
		grpc         bool
	}{
		{2, 1, 1, false, schedule.OneFOneB, true}, {2, 1, 2, false, schedule.ZBH1, false}, {2, 1, 3, false, schedule.Interleaved, false},
		{1, 2, 0, false, schedule.OneFOneB, false}, {1, 2, 0, true, schedule.ZBH1, false},
		{2, 2, 1, false, schedule.OneFOneB, false}, {2, 2, 2, true, schedule.GPipe, false}, {2, 2, 3, true, schedule.ZBH1, false},
	} {
		t.Run(fmt.Sprintf("dp=%d/tp=%d/zero=%d/sp=%v/%s/grpc=%v", c.dp, c.tp, c.zero, c.sp, c.sched, c.grpc), func(t *testing.T) {
			s := spec
			s.Parallel.DP, s.Parallel.TP, s.Parallel.PP, s.Parallel.Zero, s.Parallel.SequenceParallel, s.Parallel.Schedule = c.dp, c.tp, 2, c.zero, c.sp, c.sched
			if c.sched == schedule.Interleaved {
				s.Parallel.VirtualStages = 2
			}
			s.Train.GlobalBatch = 8 * c.dp
			if c.sp {
				s.Train.MicroBatch = 2 // B·T divisible by tp
			}
			key := [2]int{s.Train.GlobalBatch, s.Train.MicroBatch}
			ref := refs[key]
			if ref == nil {
				one := spec
				one.Train.GlobalBatch, one.Train.MicroBatch = key[0], key[1]
				ref, _ = layoutRun(t, one, runOpts{})
				refs[key] = ref
			}
			got, mem := layoutRun(t, s, runOpts{inproc: !c.grpc})
			compareRuns(t, got[0], ref[0], s.Train.GradClip)
			p, err := plan.New(s, c.dp*c.tp*2)
			if err != nil {
				t.Fatal(err)
			}
			for r := range got {
				checkTPComm(t, p, r, got[r])
				est := p.Memory(r)
				est.Runtime = 0
				if mem[r] != est {
					t.Errorf("rank %d: counted memory %+v, plan %+v", r, mem[r], est)
				}
			}
		})
	}
}

// The activation slots a stage holds at once, counted while the schedule
// runs, are the schedule's in-flight count: 1F1B holds at most pp
// micro-batches on the first stage (pp − s on stage s) where GPipe holds
// all of them, ZB-H1 holds pp on every stage; the peak activation memory
// each rank measures is those slots' bytes plus the shared scratch, which
// is what the plan predicts.
func TestPipelinePeakActivations(t *testing.T) {
	path := corpus(t)
	spec := ppSpec(path, false)
	spec.Train.Steps = 2
	for _, c := range []struct {
		sched string
		want  func(stage, pp, m int) int
	}{
		{schedule.GPipe, func(_, _, m int) int { return m }},
		{schedule.OneFOneB, func(s, pp, m int) int { return min(pp-s, m) }},
		{schedule.ZBH1, func(_, pp, m int) int { return min(pp, m) }},
	} {
		t.Run(c.sched, func(t *testing.T) {
			s := spec
			s.Parallel.PP, s.Parallel.Schedule = 4, c.sched
			p, err := plan.New(s, 4)
			if err != nil {
				t.Fatal(err)
			}
			got, mem := layoutRun(t, s, runOpts{inproc: true})
			for r := range 4 {
				for _, st := range got[r] {
					if n, want := st.PeakSlots[0], c.want(r, 4, p.Accum); n != want {
						t.Fatalf("rank %d step %d: %d micro-batches' activations held at once, the schedule's in-flight count is %d", r, st.Step, n, want)
					}
					if want := p.ActivationBytes(r, p.MicroBatch, p.SeqLen); st.PeakActivationBytes != want || mem[r].Activations != want {
						t.Fatalf("rank %d: peak activation memory %d, allocated %d, the plan %d", r, st.PeakActivationBytes, mem[r].Activations, want)
					}
				}
			}
			if c.sched == schedule.OneFOneB {
				first1f1b := got[0][0].PeakActivationBytes
				t.Logf("1f1b first stage: %d bytes of activations for %d micro-batches", first1f1b, got[0][0].PeakSlots[0])
			}
		})
	}
}

// A checkpoint written by dp 2 × tp 2 × pp 2 (ZeRO 1, tied embeddings)
// resumes on one rank and on pp 4 within 1e-5 of the uninterrupted run;
// the same layout resumes bit for bit; the whole model exported from the
// pipelined checkpoint is the run's own final model.
func TestResumeReshardPipeline(t *testing.T) {
	path := corpus(t)
	spec := ppSpec(path, true)
	spec.Model.NLayers = 4
	spec.Train.Steps = 6
	dir := t.TempDir()
	job := func(name string) string { return filepath.Join(dir, name) }
	want, _ := layoutCk(t, spec, job("ref"), 0, "", false, true)
	src := spec
	src.Parallel.DP, src.Parallel.TP, src.Parallel.PP, src.Parallel.Zero = 2, 2, 2, 1
	src.Train.GlobalBatch = 8
	full, final := layoutCk(t, src, job("src"), 3, "", true, true)
	from := checkpoint.StepDir(job("src"), 3)
	for _, l := range []struct {
		name         string
		dp, tp, pp   int
		zero         int
		sched        string
		sameAsSource bool
	}{
		{"pp1", 1, 1, 1, 0, schedule.OneFOneB, false},
		{"pp4", 1, 1, 4, 0, schedule.ZBH1, false},
		{"same", 2, 2, 2, 1, schedule.OneFOneB, true},
	} {
		s := src
		s.Parallel.DP, s.Parallel.TP, s.Parallel.PP, s.Parallel.Zero, s.Parallel.Schedule = l.dp, l.tp, l.pp, l.zero, l.sched
		got, _ := layoutCk(t, s, job(l.name), 0, from, false, true)
		if len(got) != 3 {
			t.Fatalf("%s: resumed after step 3 took %d steps", l.name, len(got))
		}
		for i, st := range got {
			if l.sameAsSource {
				if w := full[3+i]; st.Loss != w.Loss || st.GradNorm != w.GradNorm {
					t.Fatalf("same layout: resumed step %d loss %v grad norm %v, uninterrupted %v %v", st.Step, st.Loss, st.GradNorm, w.Loss, w.GradNorm)
				}
				continue
			}
			w := want[st.Step-1]
			if rel := math.Abs(st.Loss-w.Loss) / w.Loss; rel > 1e-5 {
				t.Fatalf("%s (resumed after step 3) step %d: loss %.8f, uninterrupted one rank %.8f (rel %.2g)", l.name, st.Step, st.Loss, w.Loss, rel)
			}
			if rel := math.Abs(st.GradNorm-w.GradNorm) / w.GradNorm; rel > 1e-5 {
				t.Fatalf("%s step %d: grad norm %.8f, one rank %.8f (rel %.2g)", l.name, st.Step, st.GradNorm, w.GradNorm, rel)
			}
		}
	}
	ck, err := checkpoint.Open(checkpoint.StepDir(job("src"), 6))
	if err != nil {
		t.Fatal(err)
	}
	exported, err := ck.Model(tensor.Reference{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range exported.Params {
		if exported.Params[i] != final.Params[i] {
			t.Fatalf("the export of the pipelined checkpoint differs from the run's final model at element %d", i)
		}
	}
}

// The last step's timeline of a pipelined run holds every rank's
// forwards, backwards, weight passes, waits, sends, receives and
// collectives; merged it is a Chrome trace whose measured bubble lies
// between none and all.
func TestPipelineTimeline(t *testing.T) {
	path := corpus(t)
	spec := ppSpec(path, true)
	spec.Model.NLayers = 4
	spec.Train.Steps = 2
	spec.Parallel.DP, spec.Parallel.PP, spec.Parallel.Zero, spec.Parallel.Schedule = 2, 2, 1, schedule.ZBH1
	spec.Train.GlobalBatch = 16
	dir := t.TempDir()
	layoutRun(t, spec, runOpts{inproc: true, after: func(r int, tr *Trainer) error {
		return timeline.Save(dir, tr.LastTimeline())
	}})
	b, err := timeline.Merge(dir, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"0F7"`, `"1B0"`, `"1W3"`, `"0RECV_B2"`, `"send 0SEND_F1"`, `"recv 1SEND_B0"`, "all-reduce emb.dp1.tp0", "all-reduce pp.dp0.tp0", "reduce-scatter dp.pp1.tp0", `"optimizer step"`, `"rank 3 (dp 1, tp 0, pp 1) step 2"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the merged timeline lacks %s", want)
		}
	}
	st, err := timeline.Analyze(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ranks != 4 || !(st.Bubble > 0 && st.Bubble < 1) || len(st.Mean["W"]) != 2 {
		t.Fatalf("trace stats %+v", st)
	}
	t.Logf("measured bubble %.1f%% over %v", 100*st.Bubble, st.Span)
	if _, err := timeline.Merge(dir, 5); !errors.Is(err, timeline.ErrNone) || !strings.Contains(err.Error(), "rank 4 of 5") {
		t.Fatalf("a missing rank's timeline: %v", err)
	}
	if _, err := timeline.Merge(t.TempDir(), 1); err == nil {
		t.Fatal("no error for a job without a timeline")
	}
}

// Recomputing each block's forward before its backward changes nothing
// but memory and work: the same layout with train.recompute reproduces the
// run without it bit for bit — one rank, pp 2 under GPipe, tp 2 × pp 2
// with sequence parallelism — holds less activation memory (the plan's
// count, exactly), and issues the tensor-parallel collectives plan.TPComm
// counts for it (each layer's forward ones twice).
func TestRecompute(t *testing.T) {
	path := corpus(t)
	spec := ppSpec(path, false)
	spec.Model.NLayers = 4
	spec.Train.Steps, spec.Train.MicroBatch = 3, 2
	for _, c := range []struct {
		tp, pp int
		sp     bool
		sched  string
	}{{1, 1, false, schedule.OneFOneB}, {1, 2, false, schedule.GPipe}, {2, 2, true, schedule.OneFOneB}} {
		t.Run(fmt.Sprintf("tp=%d/pp=%d/%s", c.tp, c.pp, c.sched), func(t *testing.T) {
			s := spec
			s.Parallel.TP, s.Parallel.PP, s.Parallel.SequenceParallel, s.Parallel.Schedule = c.tp, c.pp, c.sp, c.sched
			want, wmem := layoutRun(t, s, runOpts{inproc: true})
			s.Train.Recompute = true
			got, mem := layoutRun(t, s, runOpts{inproc: true})
			for i := range want[0] {
				if g, w := got[0][i], want[0][i]; g.Loss != w.Loss || g.GradNorm != w.GradNorm {
					t.Fatalf("step %d: recomputing loss %v grad norm %v, saving %v %v", i+1, g.Loss, g.GradNorm, w.Loss, w.GradNorm)
				}
			}
			p, err := plan.New(s, c.tp*c.pp)
			if err != nil {
				t.Fatal(err)
			}
			for r := range got {
				checkTPComm(t, p, r, got[r])
				est := p.Memory(r)
				est.Runtime = 0
				// A stage of one block in one slot saves nothing: its one
				// block's activations move into the shared scratch.
				if mem[r] != est || mem[r].Activations > wmem[r].Activations || r == 0 && mem[r].Activations == wmem[r].Activations {
					t.Errorf("rank %d: recomputing counts %+v (plan %+v), saving %d bytes of activations", r, mem[r], est, wmem[r].Activations)
				}
			}
		})
	}
}

// failingSend is a pipeline group whose Send fails from the n-th call on,
// as a transport does when its peer is gone.
type failingSend struct {
	parallel.Comm
	mu sync.Mutex
	n  int
}

func (f *failingSend) Send(ctx context.Context, dst int, buf []float32) error {
	f.mu.Lock()
	f.n--
	fail := f.n < 0
	f.mu.Unlock()
	if fail {
		return errors.New("connection to rank 1 lost")
	}
	return f.Comm.Send(ctx, dst, buf)
}

// A pipeline rank whose sends fail ends its step with an error naming the
// message and the peer, and the rank waiting for that message ends with an
// error naming its receive and the peer (the failed group, or its timeout)
// — neither hangs.
func TestPipelinePeerFailureIsAnError(t *testing.T) {
	path := corpus(t)
	spec := ppSpec(path, false)
	spec.Model.NLayers = 2
	spec.Parallel.PP = 2
	p, err := plan.New(spec, 2)
	if err != nil {
		t.Fatal(err)
	}
	members := inproc.NewGroup("pp.dp0.tp0", []int{0, 1}, inproc.Options{Timeout: 2 * time.Second})
	trainers := make([]*Trainer, 2)
	for r := range 2 {
		f, err := data.Open(spec.Data.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		l, _ := data.NewLoader(f, data.LoaderConfig{SeqLen: spec.Model.SeqLen, Shuffle: spec.Data.Shuffle, Seed: spec.Data.Seed})
		var c parallel.Comm = members[r]
		if r == 0 {
			c = &failingSend{Comm: c, n: 3}
		}
		if trainers[r], err = New(Config{Spec: spec, Kernels: tensor.Reference{}, Loader: l, Plan: p, Rank: r, Comms: Comms{PP: c}}); err != nil {
			t.Fatal(err)
		}
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r, tr := range trainers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, errs[r] = tr.Step(ctx)
		}()
	}
	wg.Wait()
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "connection to rank 1 lost") || !strings.Contains(errs[0].Error(), "sending 0SEND_F3 to rank 1") {
		t.Fatalf("rank 0: %v", errs[0])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "from rank 0") {
		t.Fatalf("rank 1: %v", errs[1])
	}
	t.Logf("rank 0: %v\nrank 1: %v", errs[0], errs[1])
}
