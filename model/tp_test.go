package model_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/parallel/inproc"
	"github.com/loomtrain/loom/tensor"
)

// tpRanks builds the TP ranks of cfg over in-process groups, each
// initialized from seed.
func tpRanks(t *testing.T, cfg model.Config, tp int, sp bool, seed uint64) []*model.Model {
	t.Helper()
	tpg := inproc.New("tp", tp)
	out := make([]*model.Model, tp)
	var kv [][]*inproc.Member
	for r := range tp {
		l, err := model.NewLocalLayout(cfg, model.Split{TP: tp, Rank: r})
		if err != nil {
			t.Fatal(err)
		}
		lo := l.Local()
		c := model.Comms{TP: tpg[r], SequenceParallel: sp}
		if lo.KVReplicas > 1 {
			if kv == nil {
				for h := 0; h < tp/lo.KVReplicas; h++ {
					ranks := make([]int, lo.KVReplicas)
					for i := range ranks {
						ranks[i] = h*lo.KVReplicas + i
					}
					kv = append(kv, inproc.NewGroup(fmt.Sprintf("kv%d", h), ranks, inproc.Options{}))
				}
			}
			c.KV = kv[r/lo.KVReplicas][r%lo.KVReplicas]
		}
		m, err := model.NewUnbound(l, tensor.Reference{}, c)
		if err != nil {
			t.Fatal(err)
		}
		m.Bind(make([]float32, l.Size), make([]float32, l.Size))
		m.Init(seed)
		out[r] = m
	}
	return out
}

// onAll runs f on every rank concurrently and fails on the first error.
func onAll(t *testing.T, ms []*model.Model, f func(r int, m *model.Model) error) {
	t.Helper()
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for r, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(r, m)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// maxRel is the largest |a−b| over the largest |b| of one tensor.
func maxRel(a, b []float32) float64 {
	var d, s float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		s = math.Max(s, math.Abs(float64(b[i])))
	}
	if s == 0 {
		return d
	}
	return d / s
}

// Every tensor-parallel degree reproduces the whole model: the same
// initial chunks, loss and (chunked) gradients, with and without sequence
// parallelism, tied and untied, with kv heads fewer than ranks, an odd
// sequence length and a vocabulary not divisible by the degree.
func TestTensorParallelMatchesWholeModel(t *testing.T) {
	for _, tc := range []struct {
		tp, kv int
		tied   bool
	}{{2, 2, false}, {2, 1, true}, {4, 2, false}, {4, 4, true}, {4, 1, false}} {
		for _, sp := range []bool{false, true} {
			t.Run(fmt.Sprintf("tp=%d/kv=%d/tied=%v/sp=%v", tc.tp, tc.kv, tc.tied, sp), func(t *testing.T) {
				cfg := model.Config{VocabSize: 61, Dim: 32, NLayers: 2, NHeads: 4, NKVHeads: tc.kv, FFNHidden: 48,
					SeqLen: 8, RopeTheta: 10000, NormEps: 1e-5, TieEmbeddings: tc.tied}
				whole, err := model.New(cfg, tensor.Reference{})
				if err != nil {
					t.Fatal(err)
				}
				whole.Init(9)
				// An odd batch: the forward's two halves of the
				// sequences (blockForwardHalves) are 1 and 2 sequences.
				B, T := 4, 7
				if tc.tp == 4 && tc.kv == 1 && !sp {
					B = 3
				}
				tokens, targets := batch(B, T, cfg.VocabSize, 5)
				targets[3] = -1 // ignored
				a, _ := whole.NewActs(B, T)
				want, err := whole.ForwardBackward(a, tokens, targets, 0.5)
				if err != nil {
					t.Fatal(err)
				}
				ranks := tpRanks(t, cfg, tc.tp, sp, 9)
				for r, m := range ranks {
					for _, v := range m.Layout.Views {
						gv, _ := whole.Layout.Lookup(v.Name)
						chunk := make([]float32, v.Len())
						v.FromGlobal(chunk, whole.Params[gv.Offset:gv.End()])
						if d := maxRel(m.Params[v.Offset:v.End()], chunk); d != 0 {
							t.Fatalf("rank %d: initial %s differs from the whole model's chunk %s by %g", r, v.Name, model.ChunkString(v.Start, v.Size), d)
						}
					}
				}
				losses := make([]float64, tc.tp)
				onAll(t, ranks, func(r int, m *model.Model) error {
					a, err := m.NewActs(B, T)
					if err != nil {
						return err
					}
					losses[r], err = m.ForwardBackwardHooks(context.Background(), a, tokens, targets, 0.5, model.Hooks{})
					return err
				})
				for r, l := range losses {
					if rel := math.Abs(l-want) / want; rel > 1e-6 {
						t.Fatalf("rank %d: loss %.8f, whole model %.8f (rel %.2g)", r, l, want, rel)
					}
				}
				for r, m := range ranks {
					for _, v := range m.Layout.Views {
						gv, _ := whole.Layout.Lookup(v.Name)
						chunk := make([]float32, v.Len())
						v.FromGlobal(chunk, whole.Grads[gv.Offset:gv.End()])
						if d := maxRel(m.Grads[v.Offset:v.End()], chunk); d > 1e-5 {
							t.Errorf("rank %d: gradient of %s %s differs from the whole model's by %.2g (relative to its largest element)", r, v.Name, model.ChunkString(v.Start, v.Size), d)
						}
					}
				}
			})
		}
	}
}

// Padded vocabulary rows cannot change the loss: filling them with large
// weights leaves loss and gradients as they were (Megatron-LM#1754 doubled
// the loss by letting padded logits into the softmax).
func TestVocabPaddingCannotChangeTheLoss(t *testing.T) {
	for _, tied := range []bool{false, true} {
		cfg := model.Config{VocabSize: 61, Dim: 16, NLayers: 1, NHeads: 4, NKVHeads: 2, FFNHidden: 16,
			SeqLen: 8, RopeTheta: 10000, NormEps: 1e-5, TieEmbeddings: tied}
		B, T := 2, 8
		tokens, targets := batch(B, T, cfg.VocabSize, 7)
		tokens[0], targets[1] = 60, 60 // the last real row
		run := func(poison bool) ([]float64, [][]float32) {
			ranks := tpRanks(t, cfg, 4, false, 3) // 61 = 4·16 − 3: rank 3 holds 3 padding rows
			if poison {
				for _, m := range ranks {
					lo := m.Local()
					valid := lo.VocabValid(cfg.VocabSize)
					for _, name := range []string{"model.embed_tokens.weight", "lm_head.weight"} {
						if v, ok := m.Layout.Lookup(name); ok {
							p := m.Params[v.Offset:v.End()]
							for i := valid * cfg.Dim; i < len(p); i++ {
								p[i] = 50
							}
						}
					}
				}
			}
			losses := make([]float64, 4)
			onAll(t, ranks, func(r int, m *model.Model) error {
				a, _ := m.NewActs(B, T)
				var err error
				losses[r], err = m.ForwardBackwardHooks(context.Background(), a, tokens, targets, 1, model.Hooks{})
				return err
			})
			var grads [][]float32
			for _, m := range ranks {
				grads = append(grads, m.Grads)
			}
			return losses, grads
		}
		clean, cg := run(false)
		dirty, dg := run(true)
		if clean[0] != dirty[0] {
			t.Fatalf("tied=%v: padding weights changed the loss from %v to %v", tied, clean[0], dirty[0])
		}
		for r := range cg {
			for i := range cg[r] {
				if cg[r][i] != dg[r][i] {
					t.Fatalf("tied=%v: padding weights changed rank %d's gradient %d", tied, r, i)
				}
			}
		}
	}
}

// Evaluation and sampling work with tp > 1: every rank gets the whole
// model's eval loss and samples the same tokens, from an odd-length prompt.
func TestTensorParallelEvalAndSample(t *testing.T) {
	cfg := model.Config{VocabSize: 61, Dim: 32, NLayers: 2, NHeads: 4, NKVHeads: 1, FFNHidden: 48,
		SeqLen: 12, RopeTheta: 10000, NormEps: 1e-5}
	whole, _ := model.New(cfg, tensor.Reference{})
	whole.Init(4)
	B, T := 3, 5
	tokens, targets := batch(B, T, cfg.VocabSize, 11)
	a, _ := whole.NewEvalActs(B, T)
	want, err := whole.Loss(a, tokens, targets)
	if err != nil {
		t.Fatal(err)
	}
	opt := model.SampleOptions{Temperature: 0.9, TopK: 7, Seed: 5}
	prompt := []int32{1, 2, 3}
	wantGen, err := whole.Generate(prompt, 15, opt)
	if err != nil {
		t.Fatal(err)
	}
	ranks := tpRanks(t, cfg, 4, true, 4)
	gens := make([][]int32, 4)
	onAll(t, ranks, func(r int, m *model.Model) error {
		a, err := m.NewEvalActs(B, T)
		if err != nil {
			return err
		}
		l, err := m.LossContext(context.Background(), a, tokens, targets)
		if err != nil {
			return err
		}
		if rel := math.Abs(l-want) / want; rel > 1e-6 {
			return fmt.Errorf("eval loss %.8f, whole model %.8f", l, want)
		}
		gens[r], err = m.GenerateContext(context.Background(), prompt, 15, opt)
		return err
	})
	for r, g := range gens {
		if fmt.Sprint(g) != fmt.Sprint(wantGen) {
			t.Fatalf("rank %d sampled %v, whole model %v", r, g, wantGen)
		}
	}
}

// A failed tensor-parallel collective surfaces as the pass's error.
func TestTensorParallelErrorsReturn(t *testing.T) {
	cfg := model.Config{VocabSize: 61, Dim: 16, NLayers: 1, NHeads: 2, NKVHeads: 2, FFNHidden: 16,
		SeqLen: 8, RopeTheta: 10000, NormEps: 1e-5}
	g := inproc.NewGroup("tp", []int{0, 1}, inproc.Options{Timeout: 50e6})
	l, _ := model.NewLocalLayout(cfg, model.Split{TP: 2, Rank: 0})
	m, err := model.NewUnbound(l, tensor.Reference{}, model.Comms{TP: g[0]})
	if err != nil {
		t.Fatal(err)
	}
	m.Bind(make([]float32, l.Size), make([]float32, l.Size))
	a, _ := m.NewActs(1, 4)
	tokens := []int32{1, 2, 3, 4}
	_, err = m.ForwardBackwardHooks(context.Background(), a, tokens, tokens, 1, model.Hooks{})
	if err == nil {
		t.Fatal("a pass whose peer never joins succeeded")
	}
	t.Log(err)
	// A layout split for two ranks refuses to run without its group.
	if _, err := model.NewUnbound(l, tensor.Reference{}, model.Comms{}); err == nil {
		t.Fatal("NewUnbound accepted a split layout without a TP communicator")
	}
	var _ parallel.Comm = g[1]
}

// overlapWatch sees, per rank, whether weight-gradient GEMMs (the
// backward's transposed-A products) start while the input gradient
// computed just before them is still being reduced over the
// tensor-parallel group.
type overlapWatch struct {
	backward atomic.Bool  // a backward kernel has run
	gemms    atomic.Int64 // weight-gradient GEMMs started
	mark     atomic.Int64 // gemms when the last backward kernel ran
}

type watchKernels struct {
	tensor.Reference
	w *overlapWatch
}

func (k watchKernels) Sgemm(transA, transB bool, m, n, kk int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if transA {
		k.w.gemms.Add(1)
	}
	k.Reference.Sgemm(transA, transB, m, n, kk, alpha, a, lda, b, ldb, beta, c, ldc)
}

func (k watchKernels) backwardKernel() {
	k.w.backward.Store(true)
	k.w.mark.Store(k.w.gemms.Load())
}

func (k watchKernels) SwiGLUBackward(dgate, dup, dout, gate, up []float32) {
	k.backwardKernel()
	k.Reference.SwiGLUBackward(dgate, dup, dout, gate, up)
}

func (k watchKernels) AttentionBackward(dq, dk, dv, dout, out, lse, q, kk, v []float32, batch, seqLen, heads, kvHeads, headDim int) {
	k.backwardKernel()
	k.Reference.AttentionBackward(dq, dk, dv, dout, out, lse, q, kk, v, batch, seqLen, heads, kvHeads, headDim)
}

// watchComm holds each reduction of an activation-sized buffer in the
// blocks' backward open after it completed, until a weight-gradient GEMM
// has started since the backward kernel before it (or a second has
// passed). A caller that waits on the reduction synchronously cannot start
// one meanwhile.
type watchComm struct {
	parallel.Comm
	w        *overlapWatch
	act      int // elements of an activation (B·T·d)
	checked  atomic.Int32
	overlaps atomic.Int32
}

func (c *watchComm) hold(n int, reduce func() error) error {
	if n != c.act || !c.w.backward.Load() {
		return reduce()
	}
	mark := c.w.mark.Load()
	err := reduce()
	deadline := time.Now().Add(time.Second)
	for c.w.gemms.Load() == mark && time.Now().Before(deadline) {
		time.Sleep(100 * time.Microsecond)
	}
	c.checked.Add(1)
	if c.w.gemms.Load() > mark {
		c.overlaps.Add(1)
	}
	return err
}

func (c *watchComm) AllReduce(ctx context.Context, buf []float32, op parallel.ReduceOp) error {
	return c.hold(len(buf), func() error { return c.Comm.AllReduce(ctx, buf, op) })
}

func (c *watchComm) ReduceScatter(ctx context.Context, buf []float32, op parallel.ReduceOp) ([]float32, error) {
	var out []float32
	err := c.hold(len(buf), func() (err error) { out, err = c.Comm.ReduceScatter(ctx, buf, op); return err })
	return out, err
}

// The input gradient of every column-parallel pair is reduced while the
// pair's weight gradients are computed (Megatron's asynchronous
// all-reduce), with and without sequence parallelism, and the hidden time
// is counted.
func TestInputGradientReductionOverlapsWeightGradients(t *testing.T) {
	cfg := model.Config{VocabSize: 61, Dim: 32, NLayers: 2, NHeads: 4, NKVHeads: 2, FFNHidden: 48,
		SeqLen: 8, RopeTheta: 10000, NormEps: 1e-5}
	B, T := 2, 8
	tokens, targets := batch(B, T, cfg.VocabSize, 5)
	for _, sp := range []bool{false, true} {
		t.Run(fmt.Sprintf("sp=%v", sp), func(t *testing.T) {
			tpg := inproc.New("tp", 2)
			var comms []*watchComm
			var ranks []*model.Model
			for r := range 2 {
				l, err := model.NewLocalLayout(cfg, model.Split{TP: 2, Rank: r})
				if err != nil {
					t.Fatal(err)
				}
				w := &overlapWatch{}
				wc := &watchComm{Comm: tpg[r], w: w, act: B * T * cfg.Dim}
				m, err := model.NewUnbound(l, watchKernels{w: w}, model.Comms{TP: wc, SequenceParallel: sp})
				if err != nil {
					t.Fatal(err)
				}
				m.Bind(make([]float32, l.Size), make([]float32, l.Size))
				m.Init(4)
				comms, ranks = append(comms, wc), append(ranks, m)
			}
			onAll(t, ranks, func(r int, m *model.Model) error {
				a, err := m.NewActs(B, T)
				if err != nil {
					return err
				}
				_, err = m.ForwardBackwardHooks(context.Background(), a, tokens, targets, 1, model.Hooks{})
				return err
			})
			for r, c := range comms {
				// Two input gradients per layer, after the first backward kernel.
				if got, want := c.checked.Load(), int32(2*cfg.NLayers); got != want {
					t.Fatalf("rank %d: %d activation-sized reductions in the blocks' backward, want %d", r, got, want)
				}
				if got := c.overlaps.Load(); got != c.checked.Load() {
					t.Errorf("rank %d: %d of %d input-gradient reductions had a weight-gradient GEMM running beside them", r, got, c.checked.Load())
				}
				if ranks[r].TakeTPOverlap() <= 0 {
					t.Errorf("rank %d: no hidden tensor-parallel time counted", r)
				}
				if d := ranks[r].TakeTPOverlap(); d != 0 {
					t.Errorf("rank %d: TakeTPOverlap did not reset (%v left)", r, d)
				}
			}
		})
	}
}
