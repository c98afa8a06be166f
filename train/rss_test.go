package train

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	"github.com/loomtrain/loom/plan"
	"github.com/loomtrain/loom/tensor"
)

// rssSpec is the configuration whose peak RSS TestZeroPeakRSS measures:
// about 5.3M parameters, so model states (85 MB at stage 0) dominate the
// runtime allowance.
func rssSpec(path string, dim, stage, dp int) api.JobSpec {
	s := api.DefaultSpec()
	s.Name = "rss"
	s.Data.Path = path
	s.Model = api.ModelSpec{Arch: "llama", VocabSize: 4096, Dim: dim, NLayers: 4, NHeads: 4, NKVHeads: 4,
		FFNHidden: 688 * dim / 256, SeqLen: 32, RopeTheta: 10000, NormEps: 1e-5}
	s.Parallel.DP, s.Parallel.Zero = dp, stage
	s.Train.GlobalBatch, s.Train.MicroBatch, s.Train.Steps, s.Train.WarmupSteps = dp, 1, 3, 1
	return s
}

// rssResult is what a helper rank prints.
type rssResult struct {
	Rank      int
	PeakBytes int64 // VmHWM after the last step
	Counted   plan.Memory
	Last      Stats // the last step's statistics
}

// TestZeroPeakRSSHelper is one rank of TestZeroPeakRSS, run in its own
// process by re-executing the test binary.
func TestZeroPeakRSSHelper(t *testing.T) {
	env := os.Getenv("LOOM_RSS_HELPER")
	if env == "" {
		t.Skip("helper process of TestZeroPeakRSS")
	}
	var a struct {
		Path             string
		Dim, Stage, Rank int
		Peers            []string
		Ckpt             string
	}
	if err := json.Unmarshal([]byte(env), &a); err != nil {
		t.Fatal(err)
	}
	spec := rssSpec(a.Path, a.Dim, a.Stage, len(a.Peers))
	spec.Checkpoint.Dir = a.Ckpt
	ln, err := net.Listen("tcp", a.Peers[a.Rank])
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res := rssResult{Rank: a.Rank}
	_, err = RunRank(ctx, RankConfig{
		Spec: spec, Job: "rss", Generation: 1, Rank: a.Rank, Peers: a.Peers, Listener: ln, Kernels: tensor.Reference{},
		OnMemory: func(m plan.Memory) { res.Counted = m },
	}, func(st Stats) {
		if st.Step == spec.Train.Steps {
			res.PeakBytes = vmHWM(t)
			res.Last = st
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	fmt.Printf("RSS_RESULT %s\n", b)
}

// vmHWM is this process's peak resident set size.
func vmHWM(t *testing.T) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Skip("no VmHWM")
	return 0
}

// runRSS runs dp helper processes of one configuration and returns their
// results by rank.
func runRSS(t *testing.T, path string, dim, stage, dp int) []rssResult {
	t.Helper()
	peers := make([]string, dp)
	for i := range peers {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		peers[i] = ln.Addr().String()
		ln.Close()
	}
	out := make([]rssResult, dp)
	errs := make([]error, dp)
	var wg sync.WaitGroup
	for r := range dp {
		wg.Add(1)
		go func() {
			defer wg.Done()
			arg, _ := json.Marshal(map[string]any{"Path": path, "Dim": dim, "Stage": stage, "Rank": r, "Peers": peers, "Ckpt": t.TempDir()})
			cmd := exec.Command(os.Args[0], "-test.run=^TestZeroPeakRSSHelper$", "-test.v")
			cmd.Env = append(os.Environ(), "LOOM_RSS_HELPER="+string(arg))
			b, err := cmd.CombinedOutput()
			if err != nil {
				errs[r] = fmt.Errorf("%v\n%s", err, b)
				return
			}
			for _, line := range strings.Split(string(b), "\n") {
				if js, ok := strings.CutPrefix(line, "RSS_RESULT "); ok {
					errs[r] = json.Unmarshal([]byte(js), &out[r])
					return
				}
			}
			errs[r] = fmt.Errorf("no result:\n%s", b)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out
}

// zero.Estimate — what `loom plan` prints — is within 10% of the peak RSS
// of real worker processes (RunRank over loopback gRPC) at every stage.
// It starts 2 processes per stage and takes about a minute on two cores, so
// it runs only with LOOM_RSS_TEST=1.
func TestZeroPeakRSS(t *testing.T) {
	if os.Getenv("LOOM_RSS_TEST") == "" {
		t.Skip("set LOOM_RSS_TEST=1 to measure peak RSS of worker processes")
	}
	path := corpus(t)
	const dp, dim = 2, 256
	for stage := 0; stage <= 3; stage++ {
		spec := rssSpec(path, dim, stage, dp)
		mc := checkpoint.ModelConfig(spec.Model)
		p, err := plan.New(spec, dp)
		if err != nil {
			t.Fatal(err)
		}
		est := p.Memory(0)
		start := time.Now()
		res := runRSS(t, path, dim, stage, dp)
		for _, r := range res {
			rel := float64(r.PeakBytes-est.Total()) / float64(est.Total())
			t.Logf("stage %d rank %d: Ψ %d, peak RSS %s, estimate %s (%+.1f%%), counted states %s (%s), last step: %.0f tokens/s, %d bytes sent; %.1fs",
				stage, r.Rank, mc.NumParams(), plan.MiB(r.PeakBytes), plan.MiB(est.Total()), 100*rel,
				plan.MiB(r.Counted.ModelStates()), r.Counted, r.Last.TokensPerSec, r.Last.CommBytes, time.Since(start).Seconds())
			if math.Abs(rel) > 0.10 {
				t.Errorf("stage %d rank %d: peak RSS %s vs estimate %s: off by %.1f%%", stage, r.Rank, plan.MiB(r.PeakBytes), plan.MiB(est.Total()), 100*rel)
			}
		}
	}
}
