package plan

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/parallel"
	"github.com/loomtrain/loom/tensor"
)

var update = flag.Bool("update", false, "rewrite the golden plans in testdata")

func tinyConfig(dim, heads, kv int, tied bool) model.Config {
	return model.Config{VocabSize: 258, Dim: dim, NLayers: 2, NHeads: heads, NKVHeads: kv, FFNHidden: 64,
		SeqLen: 16, RopeTheta: 10000, NormEps: 1e-5, TieEmbeddings: tied}
}

func tinySpec(dp, tp, zero int, sp bool) api.JobSpec {
	s := api.DefaultSpec()
	s.Data.Path = "tok.bin"
	s.Model = api.ModelSpec{Arch: "llama", VocabSize: 259, Dim: 16, NLayers: 2, NHeads: 4, NKVHeads: 2,
		FFNHidden: 24, SeqLen: 9, RopeTheta: 10000, NormEps: 1e-5}
	s.Parallel.DP, s.Parallel.TP, s.Parallel.Zero, s.Parallel.SequenceParallel = dp, tp, zero, sp
	s.Train.GlobalBatch, s.Train.MicroBatch = 4*dp, 2
	return s
}

// Every element of every unit of every tensor-parallel rank's layout
// belongs to exactly one dp rank; chunks are aligned and agree with
// parallel.ShardRange over the padded unit; the chunk records of all ranks
// tile every global tensor exactly once (replicas and padding left out)
// and point at the right local elements.
func TestPartitionTilesGlobalTensors(t *testing.T) {
	for _, c := range []model.Config{tinyConfig(32, 4, 2, false), tinyConfig(30, 3, 1, true), tinyConfig(32, 4, 4, true)} {
		for _, tp := range []int{1, 2, 4} {
			if model.CheckSplit(c, tp) != nil {
				continue
			}
			for _, dp := range []int{1, 2, 3, 7} {
				for _, align := range []int{1, 16} {
					name := fmt.Sprintf("d%d/tp%d/dp%d/align%d", c.Dim, tp, dp, align)
					covered := map[string][]int{} // global element → times written
					for r := range tp {
						l, err := model.NewLocalLayout(c, model.Split{TP: tp, Rank: r})
						if err != nil {
							t.Fatal(err)
						}
						p, err := NewPartition(l, dp, Zero3, align)
						if err != nil {
							t.Fatal(err)
						}
						owner := make([]int, l.Size)
						for i := range owner {
							owner[i] = -1
						}
						// flat[i] encodes (view, global element) of local element i.
						type where struct {
							view string
							g    int
						}
						at := make([]where, l.Size)
						for _, v := range l.Views {
							for i := range v.Len() {
								at[v.Offset+i] = where{v.Name, -1}
							}
							v.Runs(func(lo, g, n int) {
								for j := range n {
									at[v.Offset+lo+j].g = g + j
								}
							})
						}
						for _, rs := range p.Ranks {
							local := make([]where, rs.LocalLen)
							for u, s := range rs.Slices {
								up := p.Units[u]
								if up.Chunk%align != 0 {
									t.Fatalf("%s: unit %s chunk %d not a multiple of %d", name, up.Name, up.Chunk, align)
								}
								off, n := parallel.ShardRange(up.Padded(dp), dp, rs.Index)
								if s.Len > 0 && (s.Offset-up.Offset != off || s.Len > n) {
									t.Fatalf("%s: dp %d unit %s slice %+v, ShardRange of padded unit [%d,+%d)", name, rs.Index, up.Name, s, off, n)
								}
								for i := s.Offset; i < s.End(); i++ {
									if owner[i] != -1 {
										t.Fatalf("%s: element %d on dp ranks %d and %d", name, i, owner[i], rs.Index)
									}
									owner[i] = rs.Index
								}
								copy(local[rs.Local[u]:], at[s.Offset:s.End()])
							}
							for _, ch := range rs.Chunks {
								g0 := 0
								stride := 1
								for d := len(ch.Start) - 1; d >= 0; d-- {
									g0 += ch.Start[d] * stride
									stride *= ch.Global[d]
								}
								if covered[ch.Name] == nil {
									covered[ch.Name] = make([]int, stride)
								}
								for j := range ch.Len() {
									g := g0 + j
									if len(ch.Size) == 2 {
										g = g0 + (j/ch.Size[1])*ch.Global[1] + j%ch.Size[1]
									}
									covered[ch.Name][g]++
									if w := local[ch.Local+j]; w.view != ch.Name || w.g != g {
										t.Fatalf("%s: tp %d dp %d chunk %s %s element %d: local holds %+v, want global element %d", name, r, rs.Index, ch.Name, model.ChunkString(ch.Start, ch.Size), j, w, g)
									}
									if f := at[ch.Flat+j]; f.view != ch.Name || f.g != g {
										t.Fatalf("%s: chunk %s Flat %d does not point at its elements", name, ch.Name, ch.Flat)
									}
								}
							}
						}
						for i, o := range owner {
							if o == -1 {
								t.Fatalf("%s: element %d has no owner", name, i)
							}
						}
					}
					whole, _ := model.NewLayout(c)
					for _, v := range whole.Views {
						for g, n := range covered[v.Name] {
							if n != 1 {
								t.Fatalf("%s: %s element %d written %d times", name, v.Name, g, n)
							}
						}
						if len(covered[v.Name]) != v.Len() {
							t.Fatalf("%s: %s: records cover %d of %d elements", name, v.Name, len(covered[v.Name]), v.Len())
						}
					}
				}
			}
		}
	}
}

func TestPartitionErrors(t *testing.T) {
	l, _ := model.NewLayout(tinyConfig(32, 4, 2, false))
	if _, err := NewPartition(l, 0, ZeroStage(4), 0); err == nil || !strings.Contains(err.Error(), "dp = 0") || !strings.Contains(err.Error(), "stage = 4") {
		t.Fatalf("want both errors, got %v", err)
	}
}

// The partition's memory follows the ZeRO formulas within 5% for every rank.
func TestPartitionMemoryFormulas(t *testing.T) {
	l, _ := model.NewLayout(tinyConfig(32, 4, 2, false))
	psi := float64(l.Size)
	for _, dp := range []int{2, 4, 8} {
		N := float64(dp)
		for s := Zero0; s <= Zero3; s++ {
			p, _ := NewPartition(l, dp, s, 0)
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

// The mesh puts tp fastest; every group lists the ranks sharing the other
// coordinates; kv groups split a tp group into the ranks sharing a head.
func TestMeshAndGroups(t *testing.T) {
	m := Mesh{DP: 3, TP: 4, PP: 2}
	for r := range m.World() {
		if m.Rank(m.Coord(r)) != r {
			t.Fatalf("rank %d → %v → %d", r, m.Coord(r), m.Rank(m.Coord(r)))
		}
	}
	if c := m.Coord(5); c != (Coord{DP: 1, TP: 1, PP: 0}) {
		t.Fatalf("rank 5 at %v", c)
	}
	s := tinySpec(2, 4, 1, false)
	s.Model.NKVHeads = 2 // 2 kv heads over 4 ranks: 2 copies each
	p, err := New(s, 8)
	if err != nil {
		t.Fatal(err)
	}
	r6 := p.Rank(6) // dp 1, tp 2
	if fmt.Sprint(r6.TP.Ranks, r6.DP.Ranks, r6.KV.Ranks) != "[4 5 6 7] [2 6] [6 7]" || r6.DPIndex != 1 {
		t.Fatalf("rank 6: tp %v dp %v kv %v dp index %d", r6.TP.Ranks, r6.DP.Ranks, r6.KV.Ranks, r6.DPIndex)
	}
	if err := p.CheckCoord(6, Coord{DP: 1, TP: 2}); err != nil {
		t.Fatal(err)
	}
	if err := p.CheckCoord(6, Coord{DP: 2, TP: 2}); err == nil || !strings.Contains(err.Error(), "rank 6 was assigned") {
		t.Fatalf("wrong coordinates: %v", err)
	}
}

// Plans refuse what cannot run, every problem naming its field.
func TestPlanValidation(t *testing.T) {
	for _, c := range []struct {
		mut   func(*api.JobSpec)
		world int
		want  []string
	}{
		{func(s *api.JobSpec) { s.Parallel.TP = 3 }, 3, []string{"parallel.tp", "model.n_heads (4)", "model.n_kv_heads (2)"}},
		{func(s *api.JobSpec) { s.Parallel.TP, s.Model.FFNHidden = 4, 30 }, 4, []string{"parallel.tp", "model.ffn_hidden (30)"}},
		{func(s *api.JobSpec) { s.Parallel.TP, s.Model.NKVHeads, s.Model.NHeads = 4, 3, 12 }, 4, []string{"parallel.tp", "model.n_kv_heads (3)"}},
		{func(s *api.JobSpec) { s.Parallel.TP, s.Parallel.SequenceParallel, s.Train.MicroBatch = 2, true, 1 }, 2, []string{"parallel.sequence_parallel", "1 × 9"}},
		{func(s *api.JobSpec) { s.Parallel.PP = 3 }, 3, []string{"parallel.pp", "must not exceed model.n_layers (2)"}},
		{func(s *api.JobSpec) { s.Parallel.PP, s.Parallel.Schedule = 2, "looped-bfs" }, 2, []string{"parallel.schedule", "looped-bfs"}},
		{func(s *api.JobSpec) {}, 3, []string{"parallel", "world size 3"}},
	} {
		s := tinySpec(1, 1, 0, false)
		c.mut(&s)
		_, err := New(s, c.world)
		if err == nil {
			t.Fatalf("%+v: no error", s.Parallel)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q lacks %q", err, w)
			}
		}
	}
}

// ActivationBytes is exactly what the model allocates for a micro-batch
// (plus the trainer's token buffers), on every rank of every layout.
func TestActivationBytesMatchAllocation(t *testing.T) {
	for _, c := range []struct {
		dp, tp int
		sp     bool
		kv     int
	}{{1, 1, false, 2}, {2, 1, false, 2}, {1, 2, false, 2}, {1, 2, true, 1}, {2, 4, true, 2}, {1, 4, false, 4}} {
		s := tinySpec(c.dp, c.tp, 0, c.sp)
		s.Model.NKVHeads = c.kv
		s.Train.MicroBatch = 4
		s.Train.GlobalBatch = 4 * c.dp
		p, err := New(s, c.dp*c.tp)
		if err != nil {
			t.Fatal(err)
		}
		for r, rp := range p.Ranks {
			cm := model.Comms{SequenceParallel: p.SequenceParallel}
			if rp.TP.Size() > 1 {
				cm.TP = fakeComm{size: rp.TP.Size(), index: rp.TP.Index(r)}
			}
			if rp.KV.Size() > 1 {
				cm.KV = fakeComm{size: rp.KV.Size(), index: rp.KV.Index(r)}
			}
			m, err := model.NewUnbound(rp.Layout, tensor.Reference{}, cm)
			if err != nil {
				t.Fatal(err)
			}
			a, err := m.NewActs(p.MicroBatch, p.SeqLen)
			if err != nil {
				t.Fatal(err)
			}
			got := a.Bytes() + 2*4*int64(p.MicroBatch*p.SeqLen)
			if want := p.ActivationBytes(r, p.MicroBatch, p.SeqLen); got != want {
				t.Fatalf("%+v rank %d: allocated %d, ActivationBytes %d", c, r, got, want)
			}
		}
	}
}

// fakeComm has a size and an index and nothing else: enough to build a
// model whose activations are counted.
type fakeComm struct {
	parallel.Comm
	size, index int
}

func (f fakeComm) Size() int  { return f.size }
func (f fakeComm) Index() int { return f.index }

// The printed plan is golden: it changes only on purpose (go test ./plan
// -update rewrites testdata).
func TestPlanGolden(t *testing.T) {
	for _, c := range []struct {
		name         string
		dp, tp, zero int
		sp           bool
		kv           int
		pp           int
		sched        string
		v            int
	}{{"dp2-zero1", 2, 1, 1, false, 2, 1, "1f1b", 1}, {"dp2-tp2-zero3-sp", 2, 2, 3, true, 2, 1, "1f1b", 1}, {"tp4-kv2", 1, 4, 0, false, 2, 1, "1f1b", 1},
		{"dp2-tp2-pp2-zero1-tied", 2, 2, 1, false, 2, 2, "1f1b", 1}, {"pp2-v2-interleaved", 1, 1, 0, false, 2, 2, "interleaved-1f1b", 2}} {
		s := tinySpec(c.dp, c.tp, c.zero, c.sp)
		s.Model.NKVHeads = c.kv
		s.Parallel.PP, s.Parallel.Schedule, s.Parallel.VirtualStages = c.pp, c.sched, c.v
		if c.pp > 1 {
			s.Model.NLayers, s.Model.TieEmbeddings = 4, c.v == 1
			s.Train.MicroBatch = 1
		}
		p, err := New(s, c.dp*c.tp*c.pp)
		if err != nil {
			t.Fatal(err)
		}
		got := p.String()
		path := filepath.Join("testdata", c.name+".plan")
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./plan -update to create it)", err)
		}
		if got != string(want) {
			gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
			for i := range min(len(gl), len(wl)) {
				if gl[i] != wl[i] {
					t.Fatalf("%s: line %d differs:\n got %s\nwant %s\n(go test ./plan -update rewrites it)", path, i+1, gl[i], wl[i])
				}
			}
			t.Fatalf("%s: %d lines, golden %d (go test ./plan -update rewrites it)", path, len(gl), len(wl))
		}
	}
}

// Candidates covers every dp × tp of the workers the model allows, and
// Recommend takes the smallest tp, then the lowest stage, that fits.
func TestCandidatesAndRecommend(t *testing.T) {
	s := tinySpec(1, 1, 0, false)
	s.Train.GlobalBatch = 8
	cs, err := Candidates(s, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range cs {
		seen[fmt.Sprintf("dp%d.tp%d", c.Spec.Parallel.DP, c.Spec.Parallel.TP)] = true
	}
	if !seen["dp4.tp1"] || !seen["dp2.tp2"] || !seen["dp1.tp4"] {
		t.Fatalf("candidates %v", seen)
	}
	best := cs[Recommend(cs)]
	if best.Spec.Parallel.TP != 1 || best.Spec.Parallel.Zero != 0 {
		t.Fatalf("recommended %+v", best.Spec.Parallel)
	}
	seen = map[string]bool{}
	for _, c := range cs {
		seen[fmt.Sprintf("dp%d.tp%d.pp%d", c.Spec.Parallel.DP, c.Spec.Parallel.TP, c.Spec.Parallel.PP)] = true
		if c.Spec.Parallel.PP > 1 && c.Bubble <= 0 {
			t.Fatalf("pipelined candidate %+v: bubble %v", c.Spec.Parallel, c.Bubble)
		}
	}
	if !seen["dp2.tp1.pp2"] || !seen["dp1.tp2.pp2"] || seen["dp1.tp1.pp4"] {
		t.Fatalf("candidates %v: want pp 2 with dp or tp 2, and no pp 4 for 2 layers", seen)
	}
	// A budget only model parallelism (tp or pp) meets: the recommendation
	// fits and no fitting layout has a smaller tp, or the same tp and a
	// smaller pp.
	small := int64(0)
	for _, c := range cs {
		if c.Spec.Parallel.DP == 1 && (small == 0 || c.Memory.Total() < small) {
			small = c.Memory.Total()
		}
	}
	cs, _ = Candidates(s, 4, small)
	i := Recommend(cs)
	if i < 0 || cs[i].Spec.Parallel.DP != 1 {
		t.Fatalf("with %d bytes recommended %d", small, i)
	}
	for _, c := range cs {
		p, q := c.Spec.Parallel, cs[i].Spec.Parallel
		if c.Fits && (p.TP < q.TP || p.TP == q.TP && p.PP < q.PP) {
			t.Fatalf("recommended %+v over %+v", q, p)
		}
	}
}

// BalanceStages finds the cut a brute force over every cut finds: the
// least maximum stage cost, counting the embedding first and the head
// last.
func TestBalanceStagesIsOptimal(t *testing.T) {
	for _, c := range []struct{ L, V, n int }{{8, 4096, 2}, {8, 4096, 4}, {7, 258, 3}, {12, 50000, 4}, {5, 100, 5}, {6, 32000, 3}} {
		cfg := model.Config{VocabSize: c.V, Dim: 64, NLayers: c.L, NHeads: 4, NKVHeads: 4, FFNHidden: 172, SeqLen: 128, RopeTheta: 1e4, NormEps: 1e-5}
		cost := func(cut []int) float64 {
			worst, first := 0.0, 0
			for i, n := range cut {
				st := Stage{Index: i, First: first, End: first + n, Embed: i == 0, Head: i == len(cut)-1}
				worst = max(worst, StageCost(cfg, 128, st).Total())
				first += n
			}
			return worst
		}
		var best float64 = -1
		var enum func(prefix []int, left int)
		enum = func(prefix []int, left int) {
			if len(prefix) == c.n-1 {
				if left >= 1 {
					if w := cost(append(prefix, left)); best < 0 || w < best {
						best = w
					}
				}
				return
			}
			for k := 1; k <= left-(c.n-1-len(prefix)); k++ {
				enum(append(append([]int(nil), prefix...), k), left-k)
			}
		}
		enum(nil, c.L)
		got := BalanceStages(cfg, 128, c.n)
		sum := 0
		for _, n := range got {
			sum += n
		}
		if sum != c.L || len(got) != c.n || math.Abs(cost(got)-best) > 1e-6*best {
			t.Errorf("%+v: cut %v costs %g, best %g", c, got, cost(got), best)
		}
	}
	// small at pp 2: the head weighs as much as a block or so.
	cfg := ModelConfig(api.ModelSpec{VocabSize: 4096, Dim: 512, NLayers: 8, NHeads: 8, NKVHeads: 8, FFNHidden: 1376, SeqLen: 256})
	if cut := BalanceStages(cfg, 256, 2); fmt.Sprint(cut) != "[4 4]" {
		t.Errorf("small at pp 2: cut %v", cut)
	}
}

// A pipelined plan: stages in model order on their ranks, an uneven
// explicit cut, the embedding group of a tied model on the first and last
// pipeline ranks, each rank's layout holding exactly its stages' units,
// and the schedule every rank runs.
func TestPipelinePlan(t *testing.T) {
	s := tinySpec(2, 1, 1, false)
	s.Model.NLayers, s.Model.TieEmbeddings = 6, true
	s.Parallel.PP, s.Parallel.Stages = 3, []int{3, 2, 1}
	s.Train.MicroBatch = 1
	p, err := New(s, 6)
	if err != nil {
		t.Fatal(err)
	}
	if p.Balanced || fmt.Sprint(p.Stages) != "[{0 0 0 3 true false} {1 1 3 5 false false} {2 2 5 6 false true}]" {
		t.Fatalf("stages %v (balanced %v)", p.Stages, p.Balanced)
	}
	if p.Accum != 4 || p.Schedule.Micro != 4 || p.Schedule.PP != 3 {
		t.Fatalf("accum %d, schedule %s", p.Accum, p.Schedule.Header())
	}
	r := p.Rank(5) // pp 2, dp 1
	if r.Coord != (Coord{DP: 1, PP: 2}) || fmt.Sprint(r.PP.Ranks, r.Emb.Ranks, r.DP.Ranks) != "[1 3 5] [1 5] [4 5]" {
		t.Fatalf("rank 5: %v pp %v emb %v dp %v", r.Coord, r.PP.Ranks, r.Emb.Ranks, r.DP.Ranks)
	}
	if p.Rank(3).Emb.Size() != 0 {
		t.Fatalf("a middle stage is in the embedding group %v", p.Rank(3).Emb)
	}
	for _, rp := range p.Ranks {
		l := rp.Layout
		for _, st := range rp.Stages {
			for i := st.First; i < st.End; i++ {
				if l.BlockUnit(i) < 0 {
					t.Fatalf("rank %d lacks block %d of its stage %d", rp.Rank, i, st.Index)
				}
			}
		}
		if n := len(l.Units()); n != rp.Stages[0].Blocks()+map[bool]int{true: 1}[rp.Stages[0].Embed]+map[bool]int{true: 2}[rp.Stages[0].Head] {
			t.Fatalf("rank %d holds %d units for stage %+v", rp.Rank, n, rp.Stages[0])
		}
	}
	if got := p.Rank(5).Layout.TiedUnit(); got < 0 {
		t.Fatal("the last stage of a tied model has no copy of the embedding")
	}
	bal := s
	bal.Parallel.Stages = nil
	q, err := New(bal, 6)
	if err != nil || !q.Balanced {
		t.Fatalf("balanced: %v", err)
	}
	res, err := q.Bubble()
	if err != nil || res.Bubble <= 0 || res.Bubble >= 1 {
		t.Fatalf("bubble %+v %v", res, err)
	}
}

// Pipelined ranks' activations are the schedule's in-flight micro-batches
// per stage times what model.NewStageActs allocates per micro-batch, plus
// one scratch — exactly.
func TestPipelineActivationBytesMatchAllocation(t *testing.T) {
	for _, c := range []struct {
		sched     string
		v, tp     int
		sp, rec   bool
		tied      bool
		stageCuts []int
	}{{"1f1b", 1, 1, false, false, false, nil}, {"gpipe", 1, 2, true, false, true, nil}, {"zb-h1", 1, 2, false, false, false, []int{1, 3}},
		{"interleaved-1f1b", 2, 1, false, false, true, nil}, {"1f1b", 1, 2, true, true, false, nil}} {
		s := tinySpec(1, c.tp, 0, c.sp)
		s.Model.NLayers, s.Model.TieEmbeddings = 4, c.tied
		s.Parallel.PP, s.Parallel.Schedule, s.Parallel.VirtualStages, s.Parallel.Stages = 2, c.sched, c.v, c.stageCuts
		s.Train.MicroBatch, s.Train.GlobalBatch, s.Train.Recompute = 2, 8, c.rec
		p, err := New(s, 2*c.tp)
		if err != nil {
			t.Fatal(err)
		}
		in := p.Schedule.InFlight()
		for r, rp := range p.Ranks {
			cm := model.Comms{SequenceParallel: p.SequenceParallel}
			if rp.TP.Size() > 1 {
				cm.TP = fakeComm{size: rp.TP.Size(), index: rp.TP.Index(r)}
			}
			m, err := model.NewUnbound(rp.Layout, tensor.Reference{}, cm)
			if err != nil {
				t.Fatal(err)
			}
			scr := m.NewScratch(p.MicroBatch, p.SeqLen, p.SequenceParallel)
			var got int64
			for _, st := range rp.Stages {
				a, err := m.NewStageActs(p.MicroBatch, p.SeqLen, model.ActsOptions{First: st.First, End: st.End, Embed: st.Embed, Head: st.Head,
					Split: p.Schedule.Split(st.Index, 0), Recompute: p.Recompute, Scratch: scr})
				if err != nil {
					t.Fatal(err)
				}
				tokens := 0
				if st.Embed {
					tokens++
				}
				if st.Head {
					tokens++
				}
				got += int64(in[st.Index]) * (a.SlotBytes() + 4*int64(tokens*p.MicroBatch*p.SeqLen))
			}
			got += scr.Bytes() + 4*int64(p.MicroBatch*p.SeqLen) // the spare token buffer of a first or last stage
			if want := p.ActivationBytes(r, p.MicroBatch, p.SeqLen); got != want {
				t.Fatalf("%+v rank %d: allocated %d, ActivationBytes %d", c, r, got, want)
			}
		}
	}
}
