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

// OpenDataset: a validation fraction holds out chunks spread over each
// source (training never visits them, nor the window before each, so no
// training target is a validation input), a validation path is its own
// source, and sources prepared with different tokenizers are refused naming
// the field.
func TestOpenDatasetValidation(t *testing.T) {
	dir := t.TempDir()
	pa := tokenFileIn(t, dir, "a", 16001, 0, nil)    // 1,000 windows of 16
	pb := tokenFileIn(t, dir, "b", 32001, 1000, nil) // 2,000
	spec := api.DataSpec{Sources: []api.DataSource{{Path: pa, Weight: 1}, {Path: pb, Weight: 1}},
		Validation: api.ValidationSpec{Fraction: 0.1}, Shuffle: true, Seed: 3}
	ds, err := OpenDataset(spec, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	nwin := []int{1000, 2000}
	train := []map[int]bool{{}, {}}
	val := []map[int]bool{{}, {}}
	for j := range 3 * ds.Train.NumWindows() {
		src, w := ds.Train.Sample(j)
		train[src][w] = true
	}
	for j := range 2 * ds.Validation.NumWindows() {
		src, w := ds.Validation.Sample(j)
		val[src][w] = true
	}
	for d := range 2 {
		if len(train[d])+len(val[d]) > nwin[d] || len(val[d]) == 0 {
			t.Fatalf("source %d: %d training and %d validation windows of %d", d, len(train[d]), len(val[d]), nwin[d])
		}
		if f := float64(len(val[d])) / float64(nwin[d]); f < 0.07 || f > 0.1 {
			t.Fatalf("source %d: %.3f of the windows held out, want about 0.1", d, f)
		}
		lo, hi := nwin[d], 0
		for w := range val[d] {
			if train[d][w] {
				t.Fatalf("source %d: window %d is both training and validation", d, w)
			}
			if train[d][w-1] {
				t.Fatalf("source %d: training window %d's last target is validation window %d's first input", d, w-1, w)
			}
			lo, hi = min(lo, w), max(hi, w)
		}
		if lo > nwin[d]/4 || hi < nwin[d]/2 {
			t.Fatalf("source %d: validation windows span [%d, %d], not spread over the file", d, lo, hi)
		}
	}
	if len(train[0])+len(val[0]) < 900 {
		t.Fatalf("source 0: only %d of 1000 windows used", len(train[0])+len(val[0]))
	}

	pv := tokenFileIn(t, dir, "v", 801, 3000, nil)
	ds2, err := OpenDataset(api.DataSpec{Path: pa, Validation: api.ValidationSpec{Path: pv}}, 16)
	if err != nil {
		t.Fatal(err)
	}
	if ds2.Validation.NumWindows() != 50 || ds2.Train.NumWindows() != 1000 {
		t.Fatalf("windows: validation %d train %d", ds2.Validation.NumWindows(), ds2.Train.NumWindows())
	}
	ds2.Close()

	pc := tokenFileIn(t, dir, "c", 1601, 0, func(m *Meta) { m.Tokenizer = "other" })
	_, err = OpenDataset(api.DataSpec{Sources: []api.DataSource{{Path: pa, Weight: 1}, {Path: pc, Weight: 1}}}, 16)
	if err == nil || !strings.Contains(err.Error(), "data.sources[1].path") || !strings.Contains(err.Error(), "same tokenizer") {
		t.Fatalf("mixed tokenizers: %v", err)
	}
	_, err = OpenDataset(api.DataSpec{Path: pa, Validation: api.ValidationSpec{Fraction: 0.5}}, 5000)
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

// A split's training and validation parts are disjoint, within the file,
// each index a distinct window, and together they leave out only the
// first window of every held-out chunk.
func TestSplitPartition(t *testing.T) {
	for _, n := range []int{8, 9, 40, 99, 1000, 12345} {
		for _, f := range []float64{0.5, 0.1, 0.01, 0.003} {
			sp, ok := NewSplit(n, f)
			if !ok {
				continue
			}
			seen := map[int]string{}
			for _, part := range []bool{false, true} {
				sp.Validation = part
				for i := range sp.count(n) {
					w := sp.window(i, n)
					if w < 0 || w >= n || seen[w] != "" {
						t.Fatalf("n %d f %g split %+v: index %d → window %d (seen as %q)", n, f, sp, i, w, seen[w])
					}
					seen[w] = map[bool]string{false: "train", true: "val"}[part]
				}
			}
			k := n / (sp.Chunk * sp.Period)
			if len(seen) != n-k {
				t.Fatalf("n %d f %g: %d windows used, want %d", n, f, len(seen), n-k)
			}
			for w, p := range seen {
				if p == "val" && seen[w-1] == "train" {
					t.Fatalf("n %d f %g: training window %d precedes validation window %d", n, f, w-1, w)
				}
			}
		}
	}
}
