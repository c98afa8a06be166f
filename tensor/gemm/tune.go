package gemm

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/loomtrain/loom/internal/version"
)

// Autotuning. The blocking chooseBlocks derives from the cache sizes is a
// model of the machine; the machine itself may disagree (a VM reports its
// host's L3, a core's L2 may be shared). So on the first call of each large
// shape an Engine with Options.Tune searches micro-kernels, cache blocks
// and the thread grid for that shape, keeps the fastest, and records it in
// a JSON file keyed by the CPU, its features, its caches, the thread count
// and the Loom version. Later engines on the same machine read the file
// and do not search again.
//
// Tuning never changes results: every candidate computes each element as
// the same FMA chain (see Engine.Sgemm), so a tuned and an untuned run
// give the same bits. When the cache directory cannot be written, tuning
// is off and the derived blocking is used (TuneStatus says why).

// TuneOptions configure autotuning.
type TuneOptions struct {
	// CacheDir holds the tuned plans ("": os.UserCacheDir()/loom/gemm,
	// which is $XDG_CACHE_HOME/loom/gemm or ~/.cache/loom/gemm on Linux).
	CacheDir string
	// Budget bounds the time one engine spends searching, over all its
	// shapes (0: 10 s). A shape met after the budget is spent keeps the
	// derived blocking for this run and is tuned by a later one.
	Budget time.Duration
	// PerShape bounds the search for one shape (0: 1.5 s).
	PerShape time.Duration
	// MinFLOPs: smaller shapes are never tuned (0: 32 MFLOP).
	MinFLOPs float64
	// Retune ignores plans already in the cache and replaces them.
	Retune bool
}

// tuneFormat versions the cache file, the search and the kernels' timing:
// a change to any makes old files ignored (4: the kernels prefetch the
// next tile's C, which changed which blockings win; 5: verify keeps a
// plan only when it wins every interleaved round, so plans kept on noise
// by the old rule are searched again; 6: operands in place are no longer
// searched, so cached in-place plans are dropped; 7: bf16 pairs are
// packed in assembly, with KC doubled and searched up to 1024, which
// moved the best bf16 blockings).
const tuneFormat = 7

// tuneFile is the JSON cache.
type tuneFile struct {
	Format int             `json:"format"`
	Key    tuneKey         `json:"key"`
	Plans  map[string]Plan `json:"plans"` // by precision and Shape.String(): "fp32 nt 4096x768x3072"
}

// tuneKey identifies the machine and build a plan was measured on.
type tuneKey struct {
	CPU      string `json:"cpu"`      // /proc/cpuinfo model name
	CPUID    string `json:"cpuid"`    // family/model/stepping
	Features string `json:"features"` // the vector features the kernels depend on
	Caches   string `json:"caches"`   // L1d/L2/L3 bytes as the engine read them
	Threads  int    `json:"threads"`
	Loom     string `json:"loom"`
	GOARCH   string `json:"goarch"`
}

type tuner struct {
	e      *Engine
	o      TuneOptions
	path   string
	key    tuneKey
	cached map[string]Plan
	tried  map[Shape]bool
	spent  time.Duration
	status string
	off    bool
}

// newTuner prepares tuning for e: it reads the cache file if there is one
// and checks that the directory is writable; if not, tuning is off.
func newTuner(e *Engine, o TuneOptions) (*tuner, error) {
	if o.Budget < 0 || o.PerShape < 0 || o.MinFLOPs < 0 {
		return nil, fmt.Errorf("gemm: tune options: Budget %v, PerShape %v and MinFLOPs %g must be ≥ 0", o.Budget, o.PerShape, o.MinFLOPs)
	}
	if o.Budget == 0 {
		o.Budget = 10 * time.Second
	}
	if o.PerShape == 0 {
		o.PerShape = 1500 * time.Millisecond
	}
	if o.MinFLOPs == 0 {
		o.MinFLOPs = 32 << 20
	}
	t := &tuner{e: e, o: o, key: machineKey(e.threads, e.caches), cached: map[string]Plan{}, tried: map[Shape]bool{}}
	dir := o.CacheDir
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			t.disable(fmt.Sprintf("no cache directory (%v): using derived blocks", err))
			return t, nil
		}
		dir = filepath.Join(base, "loom", "gemm")
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%d %+v", tuneFormat, t.key))
	t.path = filepath.Join(dir, "tune-"+hex.EncodeToString(sum[:8])+".json")
	if err := checkWritable(dir); err != nil {
		t.disable(fmt.Sprintf("cache %s not writable (%v): using derived blocks", dir, err))
		return t, nil
	}
	if b, err := os.ReadFile(t.path); err == nil {
		var f tuneFile
		if json.Unmarshal(b, &f) == nil && f.Format == tuneFormat && f.Key == t.key && !o.Retune {
			t.cached = f.Plans
		}
	}
	t.status = fmt.Sprintf("tuning on, cache %s (%d plans)", t.path, len(t.cached))
	return t, nil
}

func (t *tuner) disable(why string) { t.off, t.status = true, why }

func checkWritable(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// TuneStatus says whether the engine tunes, where its cache is, or why
// tuning is off.
func (e *Engine) TuneStatus() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tuner == nil {
		return "tuning off: derived blocks"
	}
	return e.tuner.status
}

func (t *tuner) cacheName(s Shape) string { return t.e.precision.String() + " " + s.String() }

// wants reports whether s should be looked up or tuned now. It answers
// true at most once per shape and engine, so a shape left untuned costs
// one map lookup per call and never allocates after its first call.
func (t *tuner) wants(s Shape) bool {
	if t.off || t.tried[s] {
		return false
	}
	t.tried[s] = true
	if _, ok := t.cached[t.cacheName(s)]; ok {
		return true
	}
	return 2*float64(s.M)*float64(s.N)*float64(s.K) >= t.o.MinFLOPs && t.spent < t.o.Budget
}

// tune installs the cached plan for s, or searches one and records it.
// The caller holds e.mu.
func (t *tuner) tune(s Shape) {
	t.tried[s] = true
	if p, ok := t.cached[t.cacheName(s)]; ok {
		if ip, ok := t.e.fromPublic(p); ok {
			t.e.setPlan(s, ip)
			return
		}
	}
	start := time.Now()
	deadline := start.Add(min(t.o.PerShape, t.o.Budget-t.spent))
	best := t.search(s, deadline)
	t.spent += time.Since(start)
	t.e.setPlan(s, best)
	t.cached[t.cacheName(s)] = best.public(true)
	if err := t.save(); err != nil {
		t.disable(fmt.Sprintf("writing %s failed (%v): tuning off for the rest of this run", t.path, err))
		return
	}
	t.status = fmt.Sprintf("tuning on, cache %s (%d plans, %.1f s spent searching)", t.path, len(t.cached), t.spent.Seconds())
}

// save writes the cache file atomically (temp file, fsync, rename).
func (t *tuner) save() error {
	b, err := json.MarshalIndent(tuneFile{Format: tuneFormat, Key: t.key, Plans: t.cached}, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(t.path), ".tune-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), t.path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// fromPublic turns a cached Plan back into a plan, if this engine has its
// kernel and the blocks are well formed.
func (e *Engine) fromPublic(p Plan) (plan, bool) {
	i := slices.IndexFunc(e.kernels, func(k kernel) bool { return k.name == p.Kernel })
	if i < 0 {
		return plan{}, false
	}
	k := e.kernels[i]
	if p.MC < k.mr || p.MC%k.mr != 0 || p.KC < 4 || p.KC%4 != 0 || p.KC > 4096 || p.NC < k.nr || p.NC%k.nr != 0 ||
		p.MC*p.KC > 1<<24 || p.NC*p.KC > 1<<26 || p.GridM < 0 || p.GridN < 0 || p.MaxThreads < 0 {
		return plan{}, false
	}
	inA, okA := parseOperandMode(p.A)
	inB, okB := parseOperandMode(p.B)
	if !okA || !okB {
		return plan{}, false
	}
	b := e.def.blocks
	b.mc, b.kc, b.nc = p.MC, p.KC, p.NC
	return plan{kern: k, blocks: b, tm: p.GridM, tn: p.GridN, maxParts: p.MaxThreads, inA: inA, inB: inB}, true
}

// search times candidate plans for s by coordinate descent from the
// derived plan — kernel, then KC, MC, NC, the L3 cap, packed or in-place
// operands, the thread grid — keeping a
// change only when it is at least 2% faster, until the deadline. Timed
// calls use at most ~0.6 GFLOP (M is cut, never N or K) and each
// candidate's time is the minimum of three calls.
//
// The descent's winner is then checked on a problem nearer the real one
// (see verify). Two reasons. A plan that wins with M cut to a few hundred
// rows can lose with all of them (its MC or its thread grid suits the
// short problem). And on a shared VM, run-to-run noise on one plan (±15%
// seen) is far above the 2% the descent decides on, so some of its picks
// are noise: with a fresh cache on the Xeon VM (model 207) it once chose
// the AVX2 kernel for 3072×640×1728 (80 GFLOP/s; the derived AVX-512 plan
// ran 135) and for 4096×768×3072 on 2 threads a plan at 197 (derived 284).
// verify times the candidates interleaved, on ~6× the FLOPs, and keeps the
// derived plan unless another clearly beats it.
func (t *tuner) search(s Shape, deadline time.Time) plan {
	e := t.e
	prob := t.problem(s, 0.6e9)
	timeOf := func(p plan) time.Duration { return prob.time(e, p, 3) }
	cur := e.def
	curT := timeOf(cur)
	var visited []plan // the plans the descent moved away from, in order
	try := func(p plan) {
		if time.Now().After(deadline) {
			return
		}
		if pt := timeOf(p); float64(pt) < 0.98*float64(curT) {
			visited = append(visited, cur)
			cur, curT = p, pt
		}
	}
	for _, k := range e.kernels[1:] {
		if k.family() != e.def.kern.family() || strings.HasPrefix(k.name, "generic") {
			continue // other arithmetic; the portable kernels are never faster than assembly
		}
		try(plan{kern: k, blocks: chooseBlocks(e.caches, k, e.threads)})
	}
	base := cur
	kcs := []int{96, 128, 160, 256, 320, 384, 512}
	if cur.kern.pairs() { // AMX too: every KC here spans whole TDPBF16PS blocks (kcStep)
		// A bf16 pair panel holds a KC of twice the float32 one in the
		// same bytes: the same cache footprints, counted in elements.
		kcs = []int{128, 192, 256, 320, 384, 512, 640, 768, 1024}
	}
	for _, kc := range kcs {
		if kc == base.blocks.kc {
			continue
		}
		p := base
		p.blocks.kc = kc
		p.blocks.mc = max(base.blocks.mc*base.blocks.kc/kc/p.kern.mr*p.kern.mr, p.kern.mr)
		try(p)
	}
	base = cur
	for _, f := range []float64{0.25, 0.5, 2, 4} {
		p := base
		p.blocks.mc = max(int(float64(base.blocks.mc)*f)/p.kern.mr*p.kern.mr, p.kern.mr)
		if p.blocks.mc*p.blocks.kc <= 1<<24 {
			try(p)
		}
	}
	base = cur
	for _, nc := range []int{512, 1024, 2048, 4096, 8192} {
		p := base
		p.blocks.nc = nc / p.kern.nr * p.kern.nr
		if p.blocks.nc != base.blocks.nc && nc < 2*roundUp(s.N, p.kern.nr) {
			try(p)
		}
	}
	if p := base; p.blocks.cmax > 0 {
		p.blocks.cmax = 0
		try(p)
	}
	// Operands in place are not searched: the tuner times a shape on
	// operands hot in cache from its own previous call, where reading them
	// in place wins (tn 128×128×2048 at 1 thread: 130 against 103
	// GFLOP/s), but in a training step each GEMM meets operands another
	// op just wrote, and there packing won every paired round (`tiny` at
	// 1 thread, Sapphire Rapids: MFU 43–45% in place, 47–54% packed).
	if e.threads > 1 {
		base = cur
		for tm := 1; tm <= e.threads; tm++ {
			if e.threads%tm == 0 {
				p := base
				p.tm, p.tn = tm, e.threads/tm
				try(p)
			}
		}
		p := base
		p.maxParts = 1
		try(p)
	}
	return t.verify(s, cur, visited)
}

// verifyFLOPs bounds the problem verify times: the whole shape up to this,
// else M cut to fit (~30 ms a call at 1 thread on an AVX-512 core).
const verifyFLOPs = 4e9

// verifyRounds is how many interleaved rounds verify times each candidate.
const verifyRounds = 5

// verify times the descent's winner, the plans it passed through and the
// derived plan on a problem of up to verifyFLOPs (the whole shape where it
// fits), one call each in turn for verifyRounds rounds, and keeps the
// derived plan unless another beats it in every round and by 2% in the
// median of the rounds' ratios; among those, the lowest median wins.
//
// Pairing each candidate's call with the derived plan's call of the same
// round cancels the slow drift of a shared VM (its clock and its
// neighbours' load move every plan's speed ±15% over seconds), and a
// candidate that wins all 5 rounds by chance when it is no faster does
// so one time in 32: a fixed 2% margin on the best of three calls kept
// plans that were slower (on a Xeon VM, model 207, 3072×1728×640 tn at
// one thread: MC 2016 KC 128 NC 512 at 122 GFLOP/s against the derived
// plan's 143). It runs after the search's deadline: at most 4 plans ×
// verifyRounds calls of ≤ verifyFLOPs.
func (t *tuner) verify(s Shape, winner plan, visited []plan) plan {
	e := t.e
	cands := []plan{e.def}
	for _, p := range append(visited, winner) {
		if !slices.ContainsFunc(cands, func(q plan) bool { return samePlan(p, q) }) {
			cands = append(cands, p)
		}
	}
	if len(cands) > 4 { // the derived plan, the winner and the two before it
		cands = append(cands[:1], cands[len(cands)-3:]...)
	}
	if len(cands) == 1 {
		return e.def
	}
	prob := t.problem(s, verifyFLOPs)
	ratios := make([][]float64, len(cands)) // per candidate: its time ÷ the derived plan's, per round
	for range verifyRounds {
		var t0 time.Duration
		for i, p := range cands {
			d := prob.time(e, p, 1)
			if i == 0 {
				t0 = d
				continue
			}
			ratios[i] = append(ratios[i], float64(d)/float64(max(t0, 1)))
		}
	}
	return cands[pickVerified(ratios)]
}

// pickVerified returns the index of the candidate verify keeps, given
// each candidate's per-round time ratios to candidate 0 (the derived
// plan, whose own entry is ignored): 0 unless one is below 1 in every
// round and below 0.98 in the median; of those, the lowest median.
func pickVerified(ratios [][]float64) int {
	best, bestMed := 0, 0.98
	for i := 1; i < len(ratios); i++ {
		r := slices.Clone(ratios[i])
		if len(r) == 0 || slices.Max(r) >= 1 {
			continue
		}
		slices.Sort(r)
		if med := r[len(r)/2]; med < bestMed {
			best, bestMed = i, med
		}
	}
	return best
}

// samePlan reports whether two plans block and thread a call alike.
func samePlan(a, b plan) bool {
	return a.kern.name == b.kern.name && a.blocks == b.blocks && a.tm == b.tm && a.tn == b.tn &&
		a.maxParts == b.maxParts && a.inA == b.inA && a.inB == b.inB
}

// tuneProblem is a call of shape s with M cut so that it costs at most a
// given number of FLOPs (never below 256 rows), on deterministic data.
type tuneProblem struct {
	s       Shape
	m       int
	a, b, c []float32
	lda     int
	ldb     int
}

func (t *tuner) problem(s Shape, flops float64) *tuneProblem {
	m := s.M
	if rows := int(flops / (2 * float64(s.N) * float64(s.K))); rows < m {
		m = min(m, max(rows, 256))
	}
	ar, ac := m, s.K
	if s.TransA {
		ar, ac = s.K, m
	}
	br, bc := s.K, s.N
	if s.TransB {
		br, bc = s.N, s.K
	}
	p := &tuneProblem{s: s, m: m, a: make([]float32, ar*ac), b: make([]float32, br*bc), c: make([]float32, m*s.N), lda: ac, ldb: bc}
	for i := range p.a {
		p.a[i] = float32(i%7) * 0.125
	}
	for i := range p.b {
		p.b[i] = float32(i%5) * 0.25
	}
	return p
}

// time returns the least cost (see timeJob) of reps calls of p's problem
// with plan pl.
func (p *tuneProblem) time(e *Engine, pl plan, reps int) time.Duration {
	for _, w := range e.workers {
		w.grow(&pl)
	}
	best := time.Duration(1 << 62)
	for range reps {
		e.cur = pl
		j := job{transA: p.s.TransA, transB: p.s.TransB, m: p.m, n: p.s.N, k: p.s.K, alpha: 1, pre: 1,
			a: p.a, lda: p.lda, b: p.b, ldb: p.ldb, c: p.c, ldc: p.s.N, plan: &e.cur}
		best = min(best, e.timeJob(&j))
	}
	return best
}

// timeJob runs j and returns its cost: the longest CPU time of one of its
// parts, each measured on the thread that ran it, where the platform has
// per-thread clocks (else the wall time). On a machine shared with other
// work the wall clock counts the time a thread waited for a core, which
// has nothing to do with the plan being timed — by the wall clock a plan
// once won on a loaded 2-core VM with the AVX2 kernel over AVX-512 — while
// the slowest part's CPU time is the call's duration on a machine of its
// own, load imbalance and memory contention included. A part whose clock
// reading fails or runs backwards (its goroutine moved to another thread
// mid-part) makes the wall time the cost.
func (e *Engine) timeJob(j *job) time.Duration {
	e.timing = true
	t0 := time.Now()
	parts := e.runJob(j)
	wall := time.Since(t0)
	e.timing = false
	var worst time.Duration
	for _, d := range e.partCPU[:parts] {
		if d <= 0 || d > 2*wall {
			return wall
		}
		worst = max(worst, d)
	}
	return worst
}

// machineKey names this machine and build for the cache.
func machineKey(threads int, cs cacheSizes) tuneKey {
	k := tuneKey{Threads: threads, Loom: version.Version, GOARCH: runtime.GOARCH,
		Caches: fmt.Sprintf("%d/%d/%d", cs.l1, cs.l2, cs.l3)}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		fields := map[string]string{}
		sc := bufio.NewScanner(f)
		for sc.Scan() && sc.Text() != "" { // the first processor's block
			if name, val, ok := strings.Cut(sc.Text(), ":"); ok {
				fields[strings.TrimSpace(name)] = strings.TrimSpace(val)
			}
		}
		f.Close()
		k.CPU = fields["model name"]
		k.CPUID = fields["cpu family"] + "/" + fields["model"] + "/" + fields["stepping"]
	}
	var feats []string
	for _, f := range []struct {
		name string
		on   bool
	}{
		{"avx", cpu.X86.HasAVX}, {"avx2", cpu.X86.HasAVX2}, {"fma", cpu.X86.HasFMA},
		{"avx512f", cpu.X86.HasAVX512F}, {"avx512vl", cpu.X86.HasAVX512VL},
		{"avx512bf16", cpu.X86.HasAVX512BF16}, {"amxbf16", cpu.X86.HasAMXBF16}, {"amxtile", cpu.X86.HasAMXTile},
	} {
		if f.on {
			feats = append(feats, f.name)
		}
	}
	k.Features = strings.Join(feats, ",")
	if k.CPU == "" {
		k.CPU = "unknown"
	}
	return k
}

// errNoTune is returned by Tune when the engine was built without tuning.
var errNoTune = errors.New("gemm: engine built without Options.Tune")

// Tune tunes each shape now (as its first Sgemm call would), within the
// engine's budget, and returns the plans in use afterwards.
func (e *Engine) Tune(shapes []Shape) ([]Plan, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tuner == nil {
		return nil, errNoTune
	}
	out := make([]Plan, len(shapes))
	for i, s := range shapes {
		if e.tuner.wants(s) {
			e.tuner.tune(s)
		}
		p, ok := e.plans[s]
		if !ok {
			p = e.def
		}
		out[i] = p.public(ok)
	}
	return out, nil
}

// ShapePlan is one tuned shape and its plan.
type ShapePlan struct {
	Shape string `json:"shape"`
	Plan
}

// Grid is the thread grid as "2x1", "auto" when chosen per call, with
// "≤N" when the plan caps the threads.
func (p Plan) Grid() string {
	g := "auto"
	if p.GridM > 0 {
		g = fmt.Sprintf("%dx%d", p.GridM, p.GridN)
	}
	if p.MaxThreads > 0 {
		g += fmt.Sprintf("≤%d", p.MaxThreads)
	}
	return g
}

// Plans lists the shapes with a tuned plan in this engine, sorted.
func (e *Engine) Plans() []ShapePlan {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []ShapePlan
	for s, p := range e.plans {
		out = append(out, ShapePlan{Shape: s.String(), Plan: p.public(true)})
	}
	slices.SortFunc(out, func(a, b ShapePlan) int { return strings.Compare(a.Shape, b.Shape) })
	return out
}
