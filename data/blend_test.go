package data

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/api"
)

// tokenFileIn writes a token file of n tokens whose ids encode the source
// (id = base + position mod 1000), so a window tells where it came from.
func tokenFileIn(t *testing.T, dir, name string, n int, base uint32, edit func(*Meta)) string {
	t.Helper()
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = base + uint32(i%1000)
	}
	sub := filepath.Join(dir, name)
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	return writeTokenFile(t, sub, ids, 4000, edit)
}

func TestBlendWeightsAndInterleave(t *testing.T) {
	dir := t.TempDir()
	a, _ := Open(tokenFileIn(t, dir, "a", 8001, 0, nil))
	b, _ := Open(tokenFileIn(t, dir, "b", 4001, 1000, nil))
	c, _ := Open(tokenFileIn(t, dir, "c", 2001, 2000, nil))
	defer a.Close()
	defer b.Close()
	defer c.Close()
	l, err := NewBlendLoader([]Source{{File: a, Weight: 5}, {File: b, Weight: 3}, {File: c, Weight: 2}}, LoaderConfig{SeqLen: 8, Shuffle: true, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	count := make([]int, 3)
	for j := range 3 * BlendBlock {
		src, w := l.Sample(j)
		count[src]++
		if w < 0 || w >= int(NumWindows(l.SourceFile(src).Len(), 8)) {
			t.Fatalf("sample %d: window %d outside source %d", j, w, src)
		}
		// Every prefix of a block stays within 2 samples of the weights.
		if j%BlendBlock == BlendBlock-1 || j%97 == 0 {
			n := float64(j%BlendBlock + 1)
			for d, share := range []float64{0.5, 0.3, 0.2} {
				got := float64(count[d] - (j/BlendBlock)*int(math.Round(share*BlendBlock)))
				if math.Abs(got-share*n) > 2 {
					t.Fatalf("after %d samples of block %d source %d has %v, want %.1f", int(n), j/BlendBlock, d, got, share*n)
				}
			}
		}
	}
	if count[0] != 3*2048 || count[1] != 3*1229 || count[2] != 3*819 {
		t.Fatalf("per-block counts %v, want 2048/1229/819 per block", count)
	}
	// A source's epoch visits each of its windows once.
	seen := map[int]int{}
	for j, k := 0, 0; k < 250; j++ { // source 2 has 250 windows
		if src, w := l.Sample(j); src == 2 {
			seen[w]++
			k++
		}
	}
	for w, n := range seen {
		if n != 1 {
			t.Fatalf("source 2 window %d seen %d times in its first epoch", w, n)
		}
	}
}

// A step's windows are a pure function of (seed, step): a fresh loader
// (a resumed run) sees the same windows as one that walked every step
// before, and data-parallel ranks of any size split the same global batch.
func TestBlendResumeAndReshard(t *testing.T) {
	dir := t.TempDir()
	a, _ := Open(tokenFileIn(t, dir, "a", 3001, 0, nil))
	b, _ := Open(tokenFileIn(t, dir, "b", 5001, 1000, nil))
	defer a.Close()
	defer b.Close()
	srcs := []Source{{File: a, Weight: 1}, {File: b, Weight: 2}}
	cfg := LoaderConfig{SeqLen: 16, Shuffle: true, Seed: 99}
	const G, T, steps = 12, 16, 700 // crosses epochs of both sources and several blocks
	walked, _ := NewBlendLoader(srcs, cfg)
	var uninterrupted [][]int32
	for s := range steps {
		in, tg := make([]int32, G*T), make([]int32, G*T)
		if err := walked.FillStep(s, G, 0, G, in, tg); err != nil {
			t.Fatal(err)
		}
		uninterrupted = append(uninterrupted, in)
	}
	for _, resume := range []int{1, 333, 699} {
		for _, dp := range []int{1, 2, 4} {
			fresh, _ := NewBlendLoader(srcs, cfg)
			for s := resume; s < steps; s += 37 {
				got := make([]int32, 0, G*T)
				for r := range dp {
					lo, hi := r*G/dp, (r+1)*G/dp
					in, tg := make([]int32, (hi-lo)*T), make([]int32, (hi-lo)*T)
					if err := fresh.FillStep(s, G, lo, hi, in, tg); err != nil {
						t.Fatal(err)
					}
					got = append(got, in...)
				}
				if !equal32(got, uninterrupted[s]) {
					t.Fatalf("resumed at %d with dp %d: step %d's windows differ from the uninterrupted run", resume, dp, s)
				}
			}
		}
	}
	other, _ := NewBlendLoader(srcs, LoaderConfig{SeqLen: 16, Shuffle: true, Seed: 100})
	if equalInts(other.StepWindows(5, G), walked.StepWindows(5, G)) {
		t.Fatal("another seed gave the same windows")
	}
}

func equal32(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBlendRefusesTinyWeight(t *testing.T) {
	dir := t.TempDir()
	a, _ := Open(tokenFileIn(t, dir, "a", 3001, 0, nil))
	defer a.Close()
	_, err := NewBlendLoader([]Source{{File: a, Weight: 1e6}, {File: a, Weight: 1}}, LoaderConfig{SeqLen: 8})
	if err == nil || !strings.Contains(err.Error(), "never be sampled") {
		t.Fatalf("tiny weight: %v", err)
	}
}

// OpenDataset: a validation fraction holds out each source's last windows
// (training never reaches them, nor the window before), a validation path
// is its own source, and sources prepared with different tokenizers are
// refused naming the field.
func TestOpenDatasetValidation(t *testing.T) {
	dir := t.TempDir()
	pa := tokenFileIn(t, dir, "a", 1601, 0, nil)    // 100 windows of 16
	pb := tokenFileIn(t, dir, "b", 3201, 1000, nil) // 200
	spec := api.DataSpec{Sources: []api.DataSource{{Path: pa, Weight: 1}, {Path: pb, Weight: 1}},
		Validation: api.ValidationSpec{Fraction: 0.1}, Shuffle: true, Seed: 3}
	ds, err := OpenDataset(spec, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	held := map[[2]int]bool{}
	for j := range 20 { // 10 windows of each source, weights 1:1
		src, w := ds.Validation.Sample(j)
		held[[2]int{src, w}] = true
	}
	if len(held) != 20 {
		t.Fatalf("validation samples repeat: %d distinct of 20", len(held))
	}
	for j := range 20000 {
		src, w := ds.Train.Sample(j)
		limit := []int{100 - 10 - 1, 200 - 20 - 1}[src]
		if w >= limit {
			t.Fatalf("training sample %d uses window %d of source %d, at or past the held-out range (from %d)", j, w, src, limit)
		}
	}
	for k := range held {
		if lo := []int{90, 180}[k[0]]; k[1] < lo {
			t.Fatalf("validation window %v is not in the held-out range", k)
		}
	}

	pv := tokenFileIn(t, dir, "v", 801, 3000, nil)
	ds2, err := OpenDataset(api.DataSpec{Path: pa, Validation: api.ValidationSpec{Path: pv}}, 16)
	if err != nil {
		t.Fatal(err)
	}
	if ds2.Validation.NumWindows() != 50 || ds2.Train.NumWindows() != 100 {
		t.Fatalf("windows: validation %d train %d", ds2.Validation.NumWindows(), ds2.Train.NumWindows())
	}
	ds2.Close()

	pc := tokenFileIn(t, dir, "c", 1601, 0, func(m *Meta) { m.Tokenizer = "other" })
	_, err = OpenDataset(api.DataSpec{Sources: []api.DataSource{{Path: pa, Weight: 1}, {Path: pc, Weight: 1}}}, 16)
	if err == nil || !strings.Contains(err.Error(), "data.sources[1].path") || !strings.Contains(err.Error(), "same tokenizer") {
		t.Fatalf("mixed tokenizers: %v", err)
	}
	_, err = OpenDataset(api.DataSpec{Path: pa, Validation: api.ValidationSpec{Fraction: 0.5}}, 800)
	if err == nil || !strings.Contains(err.Error(), "data.validation.fraction") {
		t.Fatalf("too few windows: %v", err)
	}
}

func TestEvalSamplesCoverSameWindows(t *testing.T) {
	const G = 12
	for _, dp := range []int{1, 2, 3, 4} {
		seen := map[int]bool{}
		for b := range 3 {
			for r := range dp {
				first, n := EvalSamples(b, r, dp, G)
				for j := first; j < first+n; j++ {
					seen[j] = true
				}
			}
		}
		if len(seen) != 3*G {
			t.Fatalf("dp %d: a pass covers %d samples, want %d", dp, len(seen), 3*G)
		}
		for j := range 3 * G {
			if !seen[j] {
				t.Fatalf("dp %d misses sample %d", dp, j)
			}
		}
	}
}
