package model_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

func tinyConfig() model.Config {
	return model.Config{VocabSize: 23, Dim: 16, NLayers: 3, NHeads: 4, NKVHeads: 2, FFNHidden: 24, SeqLen: 9,
		RopeTheta: 10000, NormEps: 1e-5}
}

func newTiny(t *testing.T, cfg model.Config) *model.Model {
	t.Helper()
	m, err := model.New(cfg, tensor.Reference{})
	if err != nil {
		t.Fatal(err)
	}
	m.Init(42)
	return m
}

func batch(B, T, V int, seed int) (tokens, targets []int32) {
	for i := 0; i < B*T; i++ {
		tokens = append(tokens, int32((i*7+seed)%V))
		targets = append(targets, int32((i*5+seed+3)%V))
	}
	return tokens, targets
}

func TestConfigValidate(t *testing.T) {
	if err := tinyConfig().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	for _, tc := range []struct {
		mutate func(*model.Config)
		fields []string
	}{
		{func(c *model.Config) { c.VocabSize = 0 }, []string{"VocabSize"}},
		{func(c *model.Config) { c.NHeads = 3 }, []string{"NHeads"}},                  // 16 % 3 != 0
		{func(c *model.Config) { c.NHeads, c.NKVHeads = 16, 16 }, []string{"NHeads"}}, // head dim 1 is odd
		{func(c *model.Config) { c.NKVHeads = 3 }, []string{"NKVHeads"}},
		{func(c *model.Config) { c.SeqLen, c.NormEps, c.RopeTheta = 0, 0, math.NaN() }, []string{"SeqLen", "NormEps", "RopeTheta"}},
		{func(c *model.Config) { c.Dim, c.NLayers, c.FFNHidden = 0, 0, -1 }, []string{"Dim", "NLayers", "FFNHidden"}},
	} {
		c := tinyConfig()
		tc.mutate(&c)
		err := c.Validate()
		if !errors.Is(err, model.ErrInvalidConfig) {
			t.Fatalf("%+v: want ErrInvalidConfig, got %v", c, err)
		}
		for _, f := range tc.fields {
			if !strings.Contains(err.Error(), f+" =") {
				t.Errorf("%+v: error %q does not name %s", c, err, f)
			}
		}
		var fe *model.FieldError
		if !errors.As(err, &fe) {
			t.Errorf("error is not a *FieldError: %v", err)
		}
	}
}

func TestLayout(t *testing.T) {
	for _, tied := range []bool{false, true} {
		cfg := tinyConfig()
		cfg.TieEmbeddings = tied
		l, err := model.NewLayout(cfg)
		if err != nil {
			t.Fatal(err)
		}
		off := 0
		for _, v := range l.Views {
			if v.Offset != off {
				t.Fatalf("%s: offset %d, want %d (views must be contiguous)", v.Name, v.Offset, off)
			}
			off = v.End()
			wantTP, wantDecay := model.TPRows, true
			switch {
			case len(v.Shape) == 1:
				wantTP, wantDecay = model.TPNone, false
			case strings.HasSuffix(v.Name, "o_proj.weight"), strings.HasSuffix(v.Name, "down_proj.weight"):
				wantTP = model.TPCols
			}
			if v.TPAxis != wantTP || v.Decay != wantDecay {
				t.Errorf("%s: TPAxis %d Decay %v, want %d %v", v.Name, v.TPAxis, v.Decay, wantTP, wantDecay)
			}
		}
		if off != l.Size || l.Size != cfg.NumParams() {
			t.Fatalf("size %d, views end at %d, NumParams %d", l.Size, off, cfg.NumParams())
		}
		_, hasHead := l.Lookup("lm_head.weight")
		if hasHead == tied {
			t.Errorf("tied=%v but lm_head present=%v", tied, hasHead)
		}
		hd := cfg.HeadDim()
		for name, shape := range map[string][]int{
			"model.embed_tokens.weight":                      {23, 16},
			"model.layers.2.self_attn.q_proj.weight":         {4 * hd, 16},
			"model.layers.2.self_attn.k_proj.weight":         {2 * hd, 16},
			"model.layers.0.self_attn.o_proj.weight":         {16, 4 * hd},
			"model.layers.1.mlp.down_proj.weight":            {16, 24},
			"model.layers.1.post_attention_layernorm.weight": {16},
			"model.norm.weight":                              {16},
		} {
			v, ok := l.Lookup(name)
			if !ok || !slices.Equal(v.Shape, shape) {
				t.Errorf("%s: found %v shape %v, want %v", name, ok, v.Shape, shape)
			}
		}
		// A block range covers exactly the views of those blocks.
		start, end := l.BlockRange(1, 3)
		for _, v := range l.Views {
			in := v.Offset >= start && v.End() <= end
			if in != (v.Block == 1 || v.Block == 2) {
				t.Errorf("BlockRange(1,3)=[%d,%d): %s (block %d) inside=%v", start, end, v.Name, v.Block, in)
			}
		}
	}
}

func TestParamsCount(t *testing.T) {
	cfg := tinyConfig()
	hd := cfg.HeadDim()
	perBlock := int64(2*16*4*hd + 2*16*2*hd + 3*16*24)
	if got, want := cfg.MatmulParams(), 3*perBlock+23*16; got != want {
		t.Fatalf("MatmulParams %d, want %d", got, want)
	}
	if got, want := cfg.TrainFLOPsPerToken(9), 6*float64(3*perBlock+23*16)+12*3*16*9; got != want {
		t.Fatalf("TrainFLOPsPerToken %v, want %v", got, want)
	}
}

func TestInitDeterministic(t *testing.T) {
	cfg := tinyConfig()
	a, b := newTiny(t, cfg), newTiny(t, cfg)
	if !slices.Equal(a.Params, b.Params) {
		t.Fatal("Init(42) is not deterministic")
	}
	b.Init(43)
	if slices.Equal(a.Params, b.Params) {
		t.Fatal("different seeds gave the same parameters")
	}
	for _, v := range a.Layout.Views {
		p := a.Params[v.Offset:v.End()]
		if len(v.Shape) == 1 {
			for _, x := range p {
				if x != 1 {
					t.Fatalf("%s: norm weight %v, want 1", v.Name, x)
				}
			}
			continue
		}
		var ss float64
		for _, x := range p {
			ss += float64(x) * float64(x)
		}
		std := math.Sqrt(ss / float64(len(p)))
		if std < 0.002 || std > 0.03 {
			t.Errorf("%s: std %v", v.Name, std)
		}
	}
}

// A pipeline split across two stages with their own activations reproduces the
// whole-model loss and gradients.
func TestStagesComposeToForwardBackward(t *testing.T) {
	cfg := tinyConfig()
	whole, split := newTiny(t, cfg), newTiny(t, cfg)
	B, T := 2, 7
	tokens, targets := batch(B, T, cfg.VocabSize, 1)
	a, _ := whole.NewActs(B, T)
	whole.ZeroGrads()
	want, err := whole.ForwardBackward(a, tokens, targets, 1)
	if err != nil {
		t.Fatal(err)
	}

	split.ZeroGrads()
	ctx := context.Background()
	// Stage 0 owns the embedding and blocks 0..1 with its own activations;
	// stage 1 owns block 2 (run as its two halves) and the head, and gets
	// stage 0's output as its input.
	s0, _ := split.NewActs(B, T)
	s1, _ := split.NewActs(B, T)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(split.EmbedForward(ctx, s0, tokens))
	for i := 0; i < 2; i++ {
		must(split.BlockForward(ctx, i, s0.Resid[i+1], s0.Resid[i], s0.Blocks[i], s0.Scratch))
	}
	copy(s1.Resid[2], s0.Resid[2])
	must(split.AttnForward(ctx, 2, s1.Blocks[2].H, s1.Resid[2], s1.Blocks[2], s1.Scratch))
	must(split.MLPForward(ctx, 2, s1.Resid[3], s1.Blocks[2].H, s1.Blocks[2], s1.Scratch))
	must(split.HeadForward(ctx, s1.Head, s1.Resid[3], s1.Scratch))
	got, err := split.HeadLossGrad(ctx, s1.Head, targets, 1)
	must(err)
	must(split.HeadBackward(ctx, s1.Head, s1.DResid, s1.Resid[3], s1.Scratch))
	must(split.MLPBackward(ctx, 2, s1.DResid, s1.Blocks[2].H, s1.Blocks[2], s1.Scratch))
	must(split.AttnBackward(ctx, 2, s1.DResid, s1.Resid[2], s1.Blocks[2], s1.Scratch))
	copy(s0.DResid, s1.DResid)
	for i := 1; i >= 0; i-- {
		must(split.BlockBackward(ctx, i, s0.DResid, s0.Resid[i], s0.Blocks[i], s0.Scratch))
	}
	must(split.EmbedBackward(ctx, s0, tokens))
	if got != want {
		t.Fatalf("split loss %v, whole %v", got, want)
	}
	if !slices.Equal(split.Grads, whole.Grads) {
		t.Fatal("split gradients differ from ForwardBackward's")
	}
}

func TestGradientAccumulation(t *testing.T) {
	cfg := tinyConfig()
	cfg.TieEmbeddings = true
	m := newTiny(t, cfg)
	B, T := 2, 5
	tokens, targets := batch(B, T, cfg.VocabSize, 2)
	a, _ := m.NewActs(B, T)
	m.ZeroGrads()
	if _, err := m.ForwardBackward(a, tokens, targets, 1); err != nil {
		t.Fatal(err)
	}
	once := slices.Clone(m.Grads)
	m.ZeroGrads()
	for range 2 {
		if _, err := m.ForwardBackward(a, tokens, targets, 0.5); err != nil {
			t.Fatal(err)
		}
	}
	var d2, w2 float64
	for i := range once {
		d := float64(m.Grads[i] - once[i])
		d2 += d * d
		w2 += float64(once[i]) * float64(once[i])
	}
	if math.Sqrt(d2/w2) > 1e-6 {
		t.Fatalf("two half-scaled micro-batches differ from one: rel err %g", math.Sqrt(d2/w2))
	}
}

func TestForwardBackwardDoesNotAllocate(t *testing.T) {
	cfg := tinyConfig()
	m := newTiny(t, cfg)
	tokens, targets := batch(2, 9, cfg.VocabSize, 3)
	a, _ := m.NewActs(2, 9)
	allocs := testing.AllocsPerRun(3, func() {
		if _, err := m.ForwardBackward(a, tokens, targets, 1); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("ForwardBackward allocates %v times per step", allocs)
	}
}

func TestSetShapeIsCausalPrefix(t *testing.T) {
	cfg := tinyConfig()
	m := newTiny(t, cfg)
	tokens, _ := batch(1, 9, cfg.VocabSize, 4)
	a, _ := m.NewActs(1, 9)
	full, err := m.Logits(a, tokens)
	if err != nil {
		t.Fatal(err)
	}
	full = slices.Clone(full)
	if err := a.SetShape(1, 4); err != nil {
		t.Fatal(err)
	}
	prefix, err := m.Logits(a, tokens[:4])
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range prefix {
		if math.Abs(float64(v-full[i])) > 1e-5 {
			t.Fatalf("logit %d of a 4-token prefix %v differs from the full pass %v", i, v, full[i])
		}
	}
	if err := a.SetShape(2, 9); !errors.Is(err, model.ErrInput) {
		t.Fatalf("SetShape beyond capacity: %v", err)
	}
}

func TestInputErrors(t *testing.T) {
	cfg := tinyConfig()
	m := newTiny(t, cfg)
	a, _ := m.NewActs(1, 3)
	for _, tc := range []struct{ tokens, targets []int32 }{
		{[]int32{1, 2}, []int32{1, 2}},
		{[]int32{1, 2, 23}, []int32{1, 2, 3}},
		{[]int32{1, -1, 2}, []int32{1, 2, 3}},
		{[]int32{1, 2, 3}, []int32{1, 2, 23}},
	} {
		if _, err := m.ForwardBackward(a, tc.tokens, tc.targets, 1); !errors.Is(err, model.ErrInput) {
			t.Errorf("%v/%v: want ErrInput, got %v", tc.tokens, tc.targets, err)
		}
	}
	if _, err := m.NewActs(1, cfg.SeqLen+1); !errors.Is(err, model.ErrInput) {
		t.Errorf("NewActs beyond SeqLen: %v", err)
	}
}

func TestLossMatchesForwardBackward(t *testing.T) {
	cfg := tinyConfig()
	m := newTiny(t, cfg)
	tokens, targets := batch(2, 6, cfg.VocabSize, 5)
	targets[3] = -100
	a, _ := m.NewActs(2, 6)
	eval, err := m.Loss(a, tokens, targets)
	if err != nil {
		t.Fatal(err)
	}
	train, _ := m.ForwardBackward(a, tokens, targets, 1)
	if eval != train {
		t.Fatalf("eval loss %v, training loss %v", eval, train)
	}
	if math.Abs(eval-math.Log(float64(cfg.VocabSize))) > 0.1 {
		t.Fatalf("initial loss %v far from ln V = %v", eval, math.Log(float64(cfg.VocabSize)))
	}
}

func TestGenerate(t *testing.T) {
	cfg := tinyConfig()
	m := newTiny(t, cfg)
	prompt := []int32{1, 2, 3}
	opt := model.SampleOptions{Temperature: 1, TopK: 5, Seed: 7}
	a, err := m.Generate(prompt, 12, opt) // 15 > SeqLen: the window slides
	if err != nil {
		t.Fatal(err)
	}
	b, _ := m.Generate(prompt, 12, opt)
	if len(a) != 12 || !slices.Equal(a, b) {
		t.Fatalf("generation not deterministic or wrong length: %v vs %v", a, b)
	}
	greedy, _ := m.Generate(prompt, 4, model.SampleOptions{})
	top1, _ := m.Generate(prompt, 4, model.SampleOptions{Temperature: 0.7, TopK: 1, Seed: 9})
	if !slices.Equal(greedy, top1) {
		t.Fatalf("greedy %v != top-1 sampling %v", greedy, top1)
	}
	// Greedy's first token is the argmax of the logits at the last prompt position.
	acts, _ := m.NewActs(1, 3)
	logits, _ := m.Logits(acts, prompt)
	last := logits[2*cfg.VocabSize:]
	best := 0
	for i, v := range last {
		if v > last[best] {
			best = i
		}
	}
	if greedy[0] != int32(best) {
		t.Fatalf("greedy first token %d, argmax %d", greedy[0], best)
	}
	stopped, _ := m.Generate(prompt, 10, model.SampleOptions{}, greedy[1])
	if len(stopped) != 2 {
		t.Fatalf("stop token %d: got %v", greedy[1], stopped)
	}
	if _, err := m.Generate([]int32{99}, 1, opt); !errors.Is(err, model.ErrInput) {
		t.Fatalf("bad prompt: %v", err)
	}
}

func TestSamplerTopK(t *testing.T) {
	logits := []float32{0, 5, 4.9, -1, 4.8}
	s := model.NewSampler(len(logits), model.SampleOptions{Temperature: 1, TopK: 2, Seed: 1})
	seen := map[int32]int{}
	for range 200 {
		seen[s.Sample(logits)]++
	}
	if len(seen) != 2 || seen[1] == 0 || seen[2] == 0 {
		t.Fatalf("top-2 sampling drew %v", seen)
	}
}

// The units AfterBackward reports are descending, contiguous and cover the
// gradient buffer, and each is final when reported.
func TestAfterBackwardRanges(t *testing.T) {
	for _, tied := range []bool{false, true} {
		cfg := model.Config{VocabSize: 50, Dim: 16, NLayers: 3, NHeads: 4, NKVHeads: 2, FFNHidden: 24, SeqLen: 8, RopeTheta: 10000, NormEps: 1e-5, TieEmbeddings: tied}
		m, err := model.New(cfg, tensor.Reference{})
		if err != nil {
			t.Fatal(err)
		}
		m.Init(3)
		a, _ := m.NewActs(2, 8)
		tokens := make([]int32, 16)
		for i := range tokens {
			tokens[i] = int32(i * 7 % 50)
		}
		snap := make([]float32, len(m.Grads))
		type rng struct{ lo, hi int }
		var got []rng
		us := m.Layout.Units()
		if _, err := m.ForwardBackwardHooks(context.Background(), a, tokens, tokens, 1, model.Hooks{AfterBackward: func(u int) error {
			lo, hi := us[u].Offset, us[u].End()
			got = append(got, rng{lo, hi})
			copy(snap[lo:hi], m.Grads[lo:hi])
			return nil
		}}); err != nil {
			t.Fatal(err)
		}
		end := m.Layout.Size
		for _, r := range got {
			if r.hi != end || r.lo >= r.hi {
				t.Fatalf("tied=%v: ranges %v not descending and contiguous", tied, got)
			}
			end = r.lo
		}
		if end != 0 || len(got) != cfg.NLayers+2 {
			t.Fatalf("tied=%v: ranges %v do not cover the buffer", tied, got)
		}
		for i := range snap {
			if snap[i] != m.Grads[i] {
				t.Fatalf("tied=%v: gradient %d changed after its range was reported", tied, i)
			}
		}
	}
}
