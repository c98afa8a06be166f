package model_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

// stageModels builds one model per part of the whole model ref (each
// holding its part's views, copied from ref), with its gradients zeroed.
func stageModels(t *testing.T, ref *model.Model, parts []model.Part) []*model.Model {
	t.Helper()
	var ms []*model.Model
	for _, p := range parts {
		l, err := model.NewLocalLayout(ref.Config, model.Split{TP: 1, Part: &p})
		if err != nil {
			t.Fatal(err)
		}
		m, err := model.NewUnbound(l, tensor.Reference{}, model.Comms{})
		if err != nil {
			t.Fatal(err)
		}
		m.Bind(make([]float32, l.Size), make([]float32, l.Size))
		for _, v := range l.Views {
			gv, _ := ref.Layout.Lookup(v.Name)
			copy(m.Params[v.Offset:v.End()], ref.Params[gv.Offset:gv.End()])
		}
		ms = append(ms, m)
	}
	return ms
}

// pipe runs micro-batches through the stages in order (forward through
// every stage, then backward through them in reverse), handing each
// stage's output to the next's input and each input gradient back, split
// into input and weight passes when split; it returns the mean loss.
func pipe(t *testing.T, ms []*model.Model, stages []model.ActsOptions, micro [][2][]int32, B, T int, split, recompute bool) float64 {
	t.Helper()
	ctx := context.Background()
	var loss float64
	scale := 1 / float32(len(micro))
	for _, mb := range micro {
		tokens, targets := mb[0], mb[1]
		acts := make([]*model.Acts, len(ms))
		for s, m := range ms {
			o := stages[s]
			o.Split, o.Recompute = split, recompute
			a, err := m.NewStageActs(B, T, o)
			if err != nil {
				t.Fatal(err)
			}
			acts[s] = a
			if s > 0 {
				prev := acts[s-1]
				copy(a.Resid[0], prev.Resid[len(prev.Resid)-1])
			}
			l, err := m.StageForward(ctx, a, tokens, targets, scale, model.Hooks{})
			if err != nil {
				t.Fatal(err)
			}
			loss += l / float64(len(micro))
		}
		for s := len(ms) - 1; s >= 0; s-- {
			if s < len(ms)-1 {
				copy(acts[s].DResid, acts[s+1].DResid)
			}
			if err := ms[s].StageBackward(ctx, acts[s], tokens, split, model.Hooks{}); err != nil {
				t.Fatal(err)
			}
		}
		if split {
			for s := range ms {
				if err := ms[s].StageWeights(ctx, acts[s], tokens, model.Hooks{}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return loss
}

// Pipeline stages — uneven block ranges, the embedding on the first, the
// head on the last, a tied embedding's copy on the last — run in turn
// over micro-batches compute the whole model's loss and gradients: bit for
// bit with the fused backward, and within float32 rounding of the norm
// weights' sums when the backward is split into input and weight passes
// (ZB's B and W), or when a tied embedding's two halves are summed. A
// recomputing stage is bit for bit the stage that saves its activations.
func TestPipelineStagesMatchWholeModel(t *testing.T) {
	for _, tied := range []bool{false, true} {
		cfg := tinyConfig()
		cfg.NLayers, cfg.TieEmbeddings = 5, tied
		ref := newTiny(t, cfg)
		B, T := 2, 5
		var micro [][2][]int32
		for i := range 3 {
			tok, tgt := batch(B, T, cfg.VocabSize, i)
			micro = append(micro, [2][]int32{tok, tgt})
		}
		ref.ZeroGrads()
		a, _ := ref.NewActs(B, T)
		var want float64
		for _, mb := range micro {
			l, err := ref.ForwardBackward(a, mb[0], mb[1], 1/float32(len(micro)))
			if err != nil {
				t.Fatal(err)
			}
			want += l / float64(len(micro))
		}
		parts := []model.Part{
			{Blocks: []model.BlockRange{{0, 1}}, Embed: true},
			{Blocks: []model.BlockRange{{1, 4}}},
			{Blocks: []model.BlockRange{{4, 5}}, Head: true},
		}
		stages := []model.ActsOptions{{First: 0, End: 1, Embed: true}, {First: 1, End: 4}, {First: 4, End: 5, Head: true}}
		for _, mode := range []struct {
			split, recompute bool
		}{{false, false}, {true, false}, {false, true}} {
			name := fmt.Sprintf("tied=%v/split=%v/recompute=%v", tied, mode.split, mode.recompute)
			ms := stageModels(t, ref, parts)
			got := pipe(t, ms, stages, micro, B, T, mode.split, mode.recompute)
			if math.Abs(got-want) > 1e-12*math.Abs(want) {
				t.Fatalf("%s: loss %v, whole model %v", name, got, want)
			}
			whole := make([]float32, ref.Layout.Size)
			for _, m := range ms {
				for _, v := range m.Layout.Views {
					gv, _ := ref.Layout.Lookup(v.Name)
					g := m.Grads[v.Offset:v.End()]
					for i := range g {
						whole[gv.Offset+i] += g[i]
					}
				}
			}
			exact := !mode.split && !tied
			for _, v := range ref.Layout.Views {
				g, w := whole[v.Offset:v.End()], ref.Grads[v.Offset:v.End()]
				if exact {
					for i := range g {
						if g[i] != w[i] {
							t.Fatalf("%s: %s[%d] = %v, whole model %v", name, v.Name, i, g[i], w[i])
						}
					}
				} else if rel := maxRel(g, w); rel > 1e-5 {
					t.Fatalf("%s: %s differs from the whole model's by %.2g", name, v.Name, rel)
				}
			}
		}
	}
}

// A last stage of a tied model holds a copy of the embedding that is not
// its owner, in a unit of its own shaped like the first stage's embedding
// unit; stage layouts hold exactly their part's views.
func TestStageLayouts(t *testing.T) {
	cfg := tinyConfig()
	cfg.NLayers, cfg.TieEmbeddings = 4, true
	first := model.Part{Blocks: []model.BlockRange{{0, 1}, {2, 3}}, Embed: true}
	last := model.Part{Blocks: []model.BlockRange{{1, 2}, {3, 4}}, Head: true}
	lf, err := model.NewLocalLayout(cfg, model.Split{TP: 1, Part: &first})
	if err != nil {
		t.Fatal(err)
	}
	ll, err := model.NewLocalLayout(cfg, model.Split{TP: 1, Part: &last})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range ll.Units() {
		names = append(names, u.Kind+":"+u.Name)
	}
	if got := strings.Join(names, " "); got != "block:block.1 block:block.3 head:head tied:tied" {
		t.Fatalf("last stage units %s", got)
	}
	e, tu := lf.Units()[lf.EmbedUnit()], ll.Units()[ll.TiedUnit()]
	if e.Len != tu.Len || lf.BlockUnit(1) != -1 || ll.BlockUnit(3) != 1 || ll.EmbedUnit() != -1 || lf.HeadUnit() != -1 {
		t.Fatalf("embedding unit %+v, tied copy %+v", e, tu)
	}
	v, _ := ll.Lookup("model.embed_tokens.weight")
	if v.Owner || v.Replica != model.ReplicatedPP {
		t.Fatalf("tied copy %+v: want a non-owner pp replica", v)
	}
	if gu := ll.GradUnits(ll.HeadUnit()); len(gu) != 2 || gu[1] != ll.TiedUnit() {
		t.Fatalf("head's gradient units %v", gu)
	}
	whole, _ := model.NewLayout(cfg)
	if lf.Size+ll.Size != whole.Size+tu.Len {
		t.Fatalf("stage sizes %d + %d, whole %d + copy %d", lf.Size, ll.Size, whole.Size, tu.Len)
	}
	for _, bad := range []model.Part{
		{Blocks: []model.BlockRange{{1, 1}}},
		{Blocks: []model.BlockRange{{2, 3}, {1, 2}}},
		{Blocks: []model.BlockRange{{3, 5}}},
		{},
	} {
		if _, err := model.NewLocalLayout(cfg, model.Split{TP: 1, Part: &bad}); err == nil {
			t.Errorf("part %+v accepted", bad)
		}
	}
}

// A split or recomputing stage's activations cost what they hold: the
// per-micro-batch slot (SlotBytes) grows with the split's gradient stash
// and shrinks by the blocks' saved activations under recomputation.
func TestStageActsBytes(t *testing.T) {
	cfg := tinyConfig()
	m := newTiny(t, cfg)
	B, T := 2, 5
	base, _ := m.NewStageActs(B, T, model.ActsOptions{})
	split, _ := m.NewStageActs(B, T, model.ActsOptions{Split: true})
	rec, _ := m.NewStageActs(B, T, model.ActsOptions{Recompute: true})
	n, d := int64(B*T), int64(cfg.Dim)
	stash := int64(cfg.NLayers) * 4 * (2*n*d + 2*d)
	if got := split.SlotBytes() - base.SlotBytes(); got != stash+4*d {
		t.Fatalf("split slot %d bytes more, want %d", got, stash+4*d)
	}
	if rec.SlotBytes() >= base.SlotBytes() || rec.Bytes()-rec.SlotBytes() <= base.Bytes()-base.SlotBytes() {
		t.Fatalf("recompute slot %d scratch %d, base slot %d scratch %d", rec.SlotBytes(), rec.Bytes()-rec.SlotBytes(), base.SlotBytes(), base.Bytes()-base.SlotBytes())
	}
	if _, err := m.NewStageActs(B, T, model.ActsOptions{Split: true, Recompute: true}); err == nil {
		t.Fatal("split with recomputation accepted")
	}
}
