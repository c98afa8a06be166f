package zero

import (
	"fmt"
	"strings"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/tensor"
)

func tinyConfig(dim, heads, kv int, tied bool) model.Config {
	return model.Config{VocabSize: 258, Dim: dim, NLayers: 2, NHeads: heads, NKVHeads: kv, FFNHidden: 64,
		SeqLen: 16, RopeTheta: 10000, NormEps: 1e-5, TieEmbeddings: tied}
}

// Every element of every unit belongs to exactly one rank; chunks are
// aligned and agree with parallel.ShardRange over the padded unit; ranks
// differ by at most Align elements per unit; tensor records tile every
// tensor exactly once and point at the right local elements.
func TestPlanPartition(t *testing.T) {
	for _, c := range []model.Config{tinyConfig(32, 4, 2, false), tinyConfig(30, 3, 1, true), tinyConfig(6, 3, 3, false)} {
		l, err := model.NewLayout(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, dp := range []int{1, 2, 3, 4, 7} {
			for _, align := range []int{1, 16} {
				name := fmt.Sprintf("d%d/dp%d/align%d", c.Dim, dp, align)
				p, err := NewPlan(l, dp, Stage3, align)
				if err != nil {
					t.Fatal(err)
				}
				owner := make([]int, l.Size)
				for i := range owner {
					owner[i] = -1
				}
				flat := make([]float32, l.Size)
				for i := range flat {
					flat[i] = float32(i)
				}
				for _, rp := range p.Ranks {
					local := make([]float32, rp.LocalLen)
					for u, s := range rp.Slices {
						up := p.Units[u]
						if up.Chunk%align != 0 {
							t.Fatalf("%s: unit %s chunk %d not a multiple of %d", name, up.Name, up.Chunk, align)
						}
						off, n := parallel.ShardRange(up.Padded(dp), dp, rp.Rank)
						if s.Len > 0 && (s.Offset-up.Offset != off || s.Len > n) {
							t.Fatalf("%s: rank %d unit %s slice %+v, ShardRange of padded unit [%d,+%d)", name, rp.Rank, up.Name, s, off, n)
						}
						if up.Len >= dp*align && (up.Chunk-s.Len) > align*dp {
							t.Fatalf("%s: rank %d unit %s holds %d of chunk %d", name, rp.Rank, up.Name, s.Len, up.Chunk)
						}
						for i := s.Offset; i < s.End(); i++ {
							if owner[i] != -1 {
								t.Fatalf("%s: element %d on ranks %d and %d", name, i, owner[i], rp.Rank)
							}
							owner[i] = rp.Rank
						}
						copy(local[rp.Local[u]:], flat[s.Offset:s.End()])
					}
					for _, ts := range rp.Tensors {
						for j := range ts.Len {
							if got, want := local[ts.Local+j], float32(ts.Offset+ts.Start+j); got != want {
								t.Fatalf("%s: rank %d %s element %d: local holds flat %v, want %v", name, rp.Rank, ts.Name, ts.Start+j, got, want)
							}
						}
					}
				}
				for i, o := range owner {
					if o == -1 {
						t.Fatalf("%s: element %d has no owner", name, i)
					}
				}
				covered := map[string]int{}
				for _, rp := range p.Ranks {
					for _, ts := range rp.Tensors {
						covered[ts.Name] += ts.Len
					}
				}
				for _, v := range l.Views {
					if covered[v.Name] != v.Len() {
						t.Fatalf("%s: %s: records cover %d of %d elements", name, v.Name, covered[v.Name], v.Len())
					}
				}
			}
		}
	}
}

func TestPlanErrors(t *testing.T) {
	l, _ := model.NewLayout(tinyConfig(32, 4, 2, false))
	if _, err := NewPlan(l, 0, Stage(4), 0); err == nil || !strings.Contains(err.Error(), "dp = 0") || !strings.Contains(err.Error(), "stage = 4") {
		t.Fatalf("want both errors, got %v", err)
	}
}

// The plan's memory follows the ZeRO formulas within 5% for every rank.
func TestPlanMemoryFormulas(t *testing.T) {
	c := tinyConfig(32, 4, 2, false)
	l, _ := model.NewLayout(c)
	psi := float64(l.Size)
	for _, dp := range []int{2, 4, 8} {
		N := float64(dp)
		for s := Stage0; s <= Stage3; s++ {
			p, _ := NewPlan(l, dp, s, 0)
			want := [4]float64{16 * psi, 8*psi + 8*psi/N, 4*psi + 12*psi/N, 16 * psi / N}[s]
			for r := range dp {
				got := float64(p.Memory(r, false).ModelStates())
				if d := (got - want) / want; d > 0.05 || d < -0.05 {
					t.Errorf("dp %d stage %d rank %d: %v bytes, formula %v", dp, s, r, got, want)
				}
			}
		}
	}
}

// ActivationBytes is exactly what model.NewActs allocates (plus the
// trainer's token buffers).
func TestActivationBytes(t *testing.T) {
	for _, c := range []model.Config{tinyConfig(32, 4, 2, false), tinyConfig(30, 3, 1, true)} {
		m, err := model.New(c, tensor.Reference{})
		if err != nil {
			t.Fatal(err)
		}
		a, _ := m.NewActs(3, 7)
		n := func(xs ...[]float32) (s int64) {
			for _, x := range xs {
				s += 4 * int64(len(x))
			}
			return s
		}
		got := n(a.DResid) + n(a.Resid...) + n(a.Head.Norm, a.Head.Rstd, a.Head.Logits, a.Head.DNorm)
		sc := a.Scratch
		got += n(sc.DAtt, sc.DQ, sc.DK, sc.DV, sc.DGate, sc.DUp, sc.DNorm)
		for _, b := range a.Blocks {
			got += n(b.AttnIn, b.AttnRstd, b.Q, b.K, b.V, b.Att, b.LSE, b.H, b.MLPIn, b.MLPRstd, b.Gate, b.Up, b.Act)
		}
		got += 2 * 4 * 3 * 7
		if want := ActivationBytes(c, 3, 7); got != want {
			t.Fatalf("d %d: allocated %d, ActivationBytes %d", c.Dim, got, want)
		}
	}
}

func TestPlanString(t *testing.T) {
	l, _ := model.NewLayout(tinyConfig(32, 4, 2, false))
	p, _ := NewPlan(l, 2, Stage2, 0)
	s := p.String()
	for _, want := range []string{"zero stage 2, dp 2", "unit block.1", "rank 1:", "lm_head.weight"} {
		if !strings.Contains(s, want) {
			t.Fatalf("plan string lacks %q:\n%s", want, s)
		}
	}
}
