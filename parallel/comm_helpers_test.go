package parallel

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// cluster is n transports on loopback, one per rank.
type cluster struct {
	ts    []*Transport
	addrs map[int]string
}

func newCluster(t testing.TB, n int, opts TransportOptions) *cluster {
	return newClusterAt(t, n, opts, func(int) string { return "127.0.0.1:0" })
}

// newUnixCluster is newCluster over Unix sockets.
func newUnixCluster(t testing.TB, n int, opts TransportOptions) *cluster {
	dir := t.TempDir()
	return newClusterAt(t, n, opts, func(r int) string { return fmt.Sprintf("unix://%s/r%d.sock", dir, r) })
}

func newClusterAt(t testing.TB, n int, opts TransportOptions, listen func(rank int) string) *cluster {
	t.Helper()
	c := &cluster{addrs: map[int]string{}}
	for r := range n {
		o := opts
		o.ListenAddr = listen(r)
		if o.shmByRefMin == 0 { // by-reference paths from 64 KiB on any host
			o.shmByRefMin = 64 << 10
		}
		tr, err := NewTransport(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		c.ts = append(c.ts, tr)
		c.addrs[r] = tr.Addr()
	}
	t.Cleanup(func() {
		// Every link the test opened used the transport it asked for (auto
		// may choose either bulk link).
		want := opts.Mode.String()
		for r, tr := range c.ts {
			for _, li := range tr.Links() {
				if li.Transport != want && opts.Mode != ModeAuto {
					t.Errorf("rank %d's link to %s is %s (%s), want %s", r, li.Peer, li.Transport, li.Reason, want)
				}
			}
			tr.Close()
		}
	})
	return c
}

// testModes are the transports the behavioural tests run on.
func testModes() []TransportMode {
	if runtime.GOOS != "linux" {
		return []TransportMode{ModeGRPC, ModeTCP}
	}
	return []TransportMode{ModeGRPC, ModeTCP, ModeShm}
}

// forModes runs f once per transport, as a subtest named after it.
func forModes(t *testing.T, f func(t *testing.T, opts TransportOptions)) {
	for _, m := range testModes() {
		t.Run(m.String(), func(t *testing.T) { f(t, TransportOptions{Mode: m}) })
	}
}

// groups creates the group of the given ranks on each of them that has a
// transport here, indexed by position in ranks.
func (c *cluster) groups(t testing.TB, spec GroupSpec) []*Group {
	t.Helper()
	gs := make([]*Group, len(spec.Ranks))
	for i, r := range spec.Ranks {
		if r >= len(c.ts) {
			continue // another process's rank
		}
		s := spec
		s.MyRank = r
		s.Addrs = c.addrs
		if s.Job == "" {
			s.Job = "test"
		}
		g, err := c.ts[r].NewGroup(s)
		if err != nil {
			t.Fatal(err)
		}
		gs[i] = g
	}
	return gs
}

func seq(n int) []int {
	r := make([]int, n)
	for i := range r {
		r[i] = i
	}
	return r
}

// each runs f for every member concurrently and returns the errors.
func each(n int, f func(i int) error) []error {
	errs := make([]error, n)
	done := make(chan int, n)
	for i := range n {
		go func() {
			errs[i] = f(i)
			done <- i
		}()
	}
	for range n {
		<-done
	}
	return errs
}

func noErrors(t testing.TB, what string, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: member %d: %v", what, i, err)
		}
	}
}

func randBuf(rng *rand.Rand, n int) []float32 {
	b := make([]float32, n)
	for i := range b {
		b[i] = float32(rng.NormFloat64())
	}
	return b
}

// refReduce is the reference reduction over inputs, computed in float64.
func refReduce(in [][]float32, op ReduceOp) []float64 {
	out := make([]float64, len(in[0]))
	for i := range out {
		switch op {
		case Max:
			out[i] = math.Inf(-1)
			for _, b := range in {
				out[i] = math.Max(out[i], float64(b[i]))
			}
		default:
			for _, b := range in {
				out[i] += float64(b[i])
			}
			if op == Mean {
				out[i] /= float64(len(in))
			}
		}
	}
	return out
}

// closeTo checks got against want with a tolerance for float32 sums of
// ranks terms.
func closeTo(got []float32, want []float64, ranks int) error {
	if len(got) != len(want) {
		return fmt.Errorf("length %d, want %d", len(got), len(want))
	}
	tol := 1e-5 * float64(ranks)
	worst, at := 0.0, -1
	for i := range got {
		d := math.Abs(float64(got[i])-want[i]) / (1 + math.Abs(want[i]))
		if d > worst || math.IsNaN(d) {
			worst, at = d, i
		}
	}
	if worst > tol || (at >= 0 && math.IsNaN(worst)) {
		return fmt.Errorf("largest relative difference %.3g at [%d]: got %v, want %v", worst, at, got[at], want[at])
	}
	return nil
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
