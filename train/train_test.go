package train

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/data"
	"github.com/loomtrain/loom/tensor"
)

// corpus writes a small token file of repetitive text and returns its path.
func corpus(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	for i := 0; i < 400; i++ {
		b.WriteString("func add(a, b int) int { return a + b }\n")
	}
	src := filepath.Join(dir, "src.txt")
	if err := os.WriteFile(src, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "tok.bin")
	if _, _, err := data.Prep(context.Background(), data.PrepConfig{Inputs: []string{src}, Out: out, Tokenizer: data.ByteTokenizer{}, Workers: 1}); err != nil {
		t.Fatal(err)
	}
	return out
}

func tinySpec(path string) api.JobSpec {
	s := api.DefaultSpec()
	s.Data.Path = path
	s.Model = api.ModelSpec{Arch: "llama", VocabSize: 258, Dim: 32, NLayers: 2, NHeads: 4, NKVHeads: 2,
		FFNHidden: 64, SeqLen: 16, RopeTheta: 10000, NormEps: 1e-5}
	s.Train.GlobalBatch, s.Train.MicroBatch, s.Train.Steps, s.Train.WarmupSteps = 8, 8, 30, 3
	return s
}

func newTrainer(t *testing.T, s api.JobSpec) *Trainer {
	t.Helper()
	f, err := data.Open(s.Data.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l, err := data.NewLoader(f, data.LoaderConfig{SeqLen: s.Model.SeqLen, Shuffle: s.Data.Shuffle, Seed: s.Data.Seed})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := New(Config{Spec: s, Kernels: tensor.Reference{}, Loader: l})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func losses(t *testing.T, tr *Trainer) []float64 {
	var out []float64
	if err := tr.Run(context.Background(), func(s Stats) { out = append(out, s.Loss) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLossFalls(t *testing.T) {
	s := tinySpec(corpus(t))
	l := losses(t, newTrainer(t, s))
	if len(l) != s.Train.Steps {
		t.Fatalf("%d steps reported, want %d", len(l), s.Train.Steps)
	}
	if first, last := l[0], l[len(l)-1]; !(first > math.Log(258)-0.5 && last < first-1.5) {
		t.Fatalf("loss did not fall: first %.3f last %.3f", first, last)
	}
}

// Accumulating 4 micro-batches of 2 must follow the same trajectory as one
// batch of 8: the loss is a mean over equal-sized micro-batches.
func TestAccumulationMatchesFullBatch(t *testing.T) {
	path := corpus(t)
	full := tinySpec(path)
	full.Train.Steps = 5
	acc := full
	acc.Train.MicroBatch = 2
	a, b := losses(t, newTrainer(t, full)), losses(t, newTrainer(t, acc))
	for i := range a {
		if rel := math.Abs(a[i]-b[i]) / a[i]; rel > 1e-5 {
			t.Fatalf("step %d: full batch loss %.7f, accumulated %.7f (rel %.2g)", i+1, a[i], b[i], rel)
		}
	}
}

func TestDeterministic(t *testing.T) {
	s := tinySpec(corpus(t))
	s.Train.Steps = 3
	a, b := losses(t, newTrainer(t, s)), losses(t, newTrainer(t, s))
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("step %d: %v vs %v", i+1, a[i], b[i])
		}
	}
}

func TestVocabTooSmall(t *testing.T) {
	s := tinySpec(corpus(t))
	s.Model.VocabSize = 200
	f, _ := data.Open(s.Data.Path)
	defer f.Close()
	l, _ := data.NewLoader(f, data.LoaderConfig{SeqLen: 16})
	_, err := New(Config{Spec: s, Kernels: tensor.Reference{}, Loader: l})
	if err == nil || !strings.Contains(err.Error(), "model.vocab_size = 200") || !strings.Contains(err.Error(), "258") {
		t.Fatalf("got %v", err)
	}
}

func TestSchedules(t *testing.T) {
	tr := api.TrainSpec{LR: 1, MinLR: 0.1, WarmupSteps: 2, Steps: 12, Schedule: "linear"}
	s := lrSchedule(tr)
	if got := s.LR(0); got != 0.5 {
		t.Fatalf("warm-up lr %v", got)
	}
	if got := s.LR(7); math.Abs(got-0.55) > 1e-12 {
		t.Fatalf("linear mid lr %v, want 0.55", got)
	}
	tr.Schedule = "constant"
	if got := lrSchedule(tr).LR(11); got != 1 {
		t.Fatalf("constant lr %v", got)
	}
	tr.Schedule = "cosine"
	if got := lrSchedule(tr).LR(7); math.Abs(got-0.55) > 1e-12 {
		t.Fatalf("cosine mid lr %v, want 0.55", got)
	}
}
