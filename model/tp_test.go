package model_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"

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
				B, T := 4, 7
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
