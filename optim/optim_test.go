package optim

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/loomtrain/loom/tensor"
)

func randVec(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

var testSegs = []Segment{{0, 10, true}, {10, 3, false}, {13, 20, true}, {33, 4, false}}

// Updating two ZeRO shards separately equals updating the whole buffer.
func TestAdamWShardsMatchWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := 37
	params := randVec(rng, n)
	k := tensor.Reference{}
	whole, err := NewAdamW(k, DefaultAdamW(), testSegs, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := NewAdamW(k, DefaultAdamW(), testSegs, 0, 12)
	if err != nil {
		t.Fatal(err)
	}
	hi, err := NewAdamW(k, DefaultAdamW(), testSegs, 12, n-12)
	if err != nil {
		t.Fatal(err)
	}
	sharded := slices.Clone(params)
	for step := range 4 {
		g := randVec(rng, n)
		lr := 1e-2 * float64(step+1)
		if err := whole.Step(params, g, lr); err != nil {
			t.Fatal(err)
		}
		lo.Step(sharded[:12], g[:12], lr)
		hi.Step(sharded[12:], g[12:], lr)
	}
	if !slices.Equal(params, sharded) {
		t.Fatalf("sharded update differs:\n%v\n%v", params, sharded)
	}
}

func TestAdamWDecayOnlyOnDecaySegments(t *testing.T) {
	n := 37
	params := make([]float32, n)
	for i := range params {
		params[i] = 1
	}
	o, _ := NewAdamW(tensor.Reference{}, AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.5}, testSegs, 0, n)
	o.Step(params, make([]float32, n), 0.1) // zero gradient: only decay moves parameters
	for _, s := range testSegs {
		want := float32(1)
		if s.Decay {
			want = float32(1 - 0.1*0.5)
		}
		for i := s.Offset; i < s.Offset+s.Len; i++ {
			if params[i] != want {
				t.Fatalf("param %d (decay=%v) = %v, want %v", i, s.Decay, params[i], want)
			}
		}
	}
}

func TestAdamWSegmentErrors(t *testing.T) {
	k := tensor.Reference{}
	for _, tc := range []struct {
		segs        []Segment
		off, length int
	}{
		{[]Segment{{0, 5, true}, {6, 4, true}}, 0, 10},  // gap
		{[]Segment{{0, 6, true}, {5, 5, false}}, 0, 10}, // overlap
		{[]Segment{{0, 5, true}}, 0, 10},                // short
		{testSegs, -1, 3},
	} {
		if _, err := NewAdamW(k, DefaultAdamW(), tc.segs, tc.off, tc.length); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v [%d,+%d): want ErrInvalid, got %v", tc.segs, tc.off, tc.length, err)
		}
	}
	if _, err := NewAdamW(k, AdamWConfig{Beta1: 1, Beta2: -1, Eps: 0, WeightDecay: -1}, testSegs, 0, 37); err == nil {
		t.Error("bad hyperparameters accepted")
	}
	o, _ := NewAdamW(k, DefaultAdamW(), testSegs, 0, 37)
	if err := o.Step(make([]float32, 36), make([]float32, 37), 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("short params: %v", err)
	}
}

func TestAdamWStateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	k := tensor.Reference{}
	a, _ := NewAdamW(k, DefaultAdamW(), testSegs, 0, 37)
	pa := randVec(rng, 37)
	g := randVec(rng, 37)
	a.Step(pa, g, 1e-3)
	m, v, step := a.State()
	b, _ := NewAdamW(k, DefaultAdamW(), testSegs, 0, 37)
	if err := b.SetState(m, v, step); err != nil {
		t.Fatal(err)
	}
	pb := slices.Clone(pa)
	a.Step(pa, g, 1e-3)
	b.Step(pb, g, 1e-3)
	if !slices.Equal(pa, pb) {
		t.Fatal("restored optimizer diverges")
	}
	if err := b.SetState(m[:3], v, 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short state accepted: %v", err)
	}
}

func TestSchedule(t *testing.T) {
	s := Schedule{MaxLR: 1, MinLR: 0.1, WarmupSteps: 4, TotalSteps: 8}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		step int
		want float64
	}{
		{0, 0.25}, {1, 0.5}, {3, 1}, {4, 1}, {6, 0.55}, {8, 0.1}, {100, 0.1},
	} {
		if got := s.LR(tc.step); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("LR(%d) = %v, want %v", tc.step, got, tc.want)
		}
	}
	noWarm := Schedule{MaxLR: 2, MinLR: 0, TotalSteps: 2}
	if noWarm.LR(0) != 2 || math.Abs(noWarm.LR(1)-1) > 1e-12 || noWarm.LR(2) != 0 {
		t.Errorf("no warm-up: %v %v %v", noWarm.LR(0), noWarm.LR(1), noWarm.LR(2))
	}
	if err := (Schedule{MaxLR: 0, MinLR: 1, WarmupSteps: 5, TotalSteps: 3}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad schedule: %v", err)
	}
}

func TestClipGradNorm(t *testing.T) {
	k := tensor.Reference{}
	g := []float32{3, 4}
	if norm := ClipGradNorm(k, g, 10); norm != 5 || g[0] != 3 || g[1] != 4 {
		t.Fatalf("no clip expected: norm %v, grads %v", norm, g)
	}
	norm := ClipGradNorm(k, g, 1)
	coef := 1 / (5 + 1e-6)
	if norm != 5 || math.Abs(float64(g[0])-3*coef) > 1e-7 || math.Abs(float64(g[1])-4*coef) > 1e-7 {
		t.Fatalf("clip to 1: norm %v, grads %v", norm, g)
	}
	if ClipCoef(5, 0) != 1 {
		t.Fatal("maxNorm 0 must disable clipping")
	}
}
