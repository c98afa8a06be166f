package schedule

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden schedules in testdata")

func TestActionRoundTrip(t *testing.T) {
	for k := range numKinds {
		for _, a := range []Action{{0, k, 0}, {3, k, 17}, {12, k, 105}} {
			got, err := Parse(a.String())
			if err != nil || got != a {
				t.Fatalf("Parse(%q) = %v, %v", a.String(), got, err)
			}
		}
	}
	if s := (Action{1, SendF, 3}).String(); s != "1SEND_F3" {
		t.Fatalf("SendF prints as %q", s)
	}
	for _, bad := range []string{"", "F3", "0F", "0X3", "03", "-1F3", "0F3x", "0send_f3"} {
		if _, err := Parse(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %v, want ErrSyntax", bad, err)
		}
	}
	as, err := ParseList(" 0F0  0SEND_F0\t1RECV_F0 1B0 ")
	if err != nil || FormatList(as) != "0F0 0SEND_F0 1RECV_F0 1B0" {
		t.Fatalf("ParseList: %v %v", as, err)
	}
}

// The golden schedules in testdata are what the generators and the
// communication pass produce, and their text form parses back to the same
// schedule. -update rewrites them.
func TestGolden(t *testing.T) {
	cases := []struct {
		name     string
		pp, v, m int
	}{
		{GPipe, 4, 1, 8}, {OneFOneB, 4, 1, 8}, {Interleaved, 4, 2, 8}, {ZBH1, 4, 1, 8},
		{OneFOneB, 1, 1, 4}, {Interleaved, 2, 3, 6}, {ZBH1, 2, 1, 8},
	}
	for _, c := range cases {
		file := fmt.Sprintf("%s-pp%d-v%d-m%d.txt", c.name, c.pp, c.v, c.m)
		t.Run(file, func(t *testing.T) {
			s, err := For(c.name, c.pp, c.v, c.m)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Simulate(s, Uniform(s.Stages(), 1, 1, 1, 0))
			if err != nil {
				t.Fatal(err)
			}
			text := s.String() + "\n# unit costs F=B=W=1:\n" + comment(Timeline(s, res, 1)) +
				fmt.Sprintf("# bubble %.4f, peak in-flight micro-batches per rank %v\n", res.Bubble, res.PeakInFlight)
			path := filepath.Join("testdata", file)
			if *update {
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./schedule -update)", err)
			}
			if string(want) != text {
				t.Fatalf("%s differs from the generated schedule (-update rewrites it):\n--- want\n%s\n--- got\n%s", path, want, text)
			}
			back, err := ParseSchedule(string(want))
			if err != nil {
				t.Fatal(err)
			}
			if back.String() != s.String() {
				t.Fatalf("parsed back:\n%s\nwant\n%s", back, s)
			}
		})
	}
}

func comment(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("# " + l + "\n")
	}
	return b.String()
}

// Every schedule, on every pp ≤ 8, micro-batch count ≤ 32 and (for the
// interleaved one) virtual stage count ≤ 4, is complete and deadlock-free
// under unit and random costs with latency, every forward of a stage and
// micro-batch precedes its backward (the simulator refuses otherwise),
// and holds no more activations than the schedule promises.
func TestPropertiesOverGrid(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	checked, refused := 0, 0
	for _, name := range Names() {
		for pp := 1; pp <= 8; pp++ {
			for m := 1; m <= 32; m++ {
				vs := []int{1}
				if name == Interleaved {
					vs = []int{1, 2, 3, 4}
				}
				for _, v := range vs {
					s, err := For(name, pp, v, m)
					if name == Interleaved && interleavedRound(pp, m) == 0 {
						if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "rounds") {
							t.Fatalf("%s pp %d v %d m %d: got %v, want the rounds refused", name, pp, v, m, err)
						}
						refused++
						continue
					}
					if err != nil {
						t.Fatalf("%s pp %d v %d m %d: %v", name, pp, v, m, err)
					}
					costs := []Costs{Uniform(s.Stages(), 1, 1, 1, 0)}
					for range 2 {
						c := Uniform(s.Stages(), 0, 0, 0, rng.Float64())
						for i := range s.Stages() {
							c.F[i], c.B[i], c.W[i] = 0.1+rng.Float64(), 0.1+2*rng.Float64(), 0.1+rng.Float64()
						}
						costs = append(costs, c)
					}
					for _, c := range costs {
						res, err := Simulate(s, c)
						if err != nil {
							t.Fatalf("%s pp %d v %d m %d: %v", name, pp, v, m, err)
						}
						checkPeaks(t, s, res)
						checkOrder(t, s, res)
						checked++
					}
				}
			}
		}
	}
	t.Logf("%d simulations; %d interleaved shapes refused (rounds do not divide the micro-batches)", checked, refused)
}

// checkPeaks holds each schedule to its activation bound.
func checkPeaks(t *testing.T, s *Schedule, res *Result) {
	t.Helper()
	for r, peak := range res.PeakInFlight {
		var bound int
		switch s.Name {
		case GPipe:
			bound = s.Micro
		case OneFOneB:
			bound = min(s.PP-r, s.Micro)
		case ZBH1:
			bound = min(s.PP, s.Micro)
		case Interleaved:
			g := interleavedRound(s.PP, s.Micro)
			bound = min((s.Virtual-1)*g+2*(s.PP-r-1)+1, s.Micro*s.Virtual)
		}
		if peak > bound || (s.Name != Interleaved && peak != bound) {
			t.Fatalf("%s: rank %d holds %d micro-batches at its peak, the schedule's bound is %d\n%s", s.Header(), r, peak, bound, Grid(s, nil))
		}
	}
}

// checkOrder verifies the simulated spans against the dependencies
// directly: a forward after its input's forward, a backward after its
// forward and after the next stage's backward, a W after its B.
func checkOrder(t *testing.T, s *Schedule, res *Result) {
	t.Helper()
	end := map[key]float64{}
	start := map[key]float64{}
	for _, spans := range res.Spans {
		for _, sp := range spans {
			end[keyOf(sp.Action)] = sp.End
			start[keyOf(sp.Action)] = sp.Start
		}
	}
	last := s.Stages() - 1
	for k, st := range start {
		var deps []key
		switch k.kind {
		case F:
			if k.stage > 0 {
				deps = append(deps, key{k.stage - 1, F, k.mb})
			}
		case B:
			deps = append(deps, key{k.stage, F, k.mb})
			if k.stage < last {
				deps = append(deps, key{k.stage + 1, B, k.mb})
			}
		case W:
			deps = append(deps, key{k.stage, B, k.mb})
		}
		for _, d := range deps {
			if e, ok := end[d]; !ok || e > st+1e-9 {
				t.Fatalf("%s: %v starts at %g before %v ends (%g)", s.Header(), Action{k.stage, k.kind, k.mb}, st, Action{d.stage, d.kind, d.mb}, e)
			}
		}
	}
}

// With equal costs the simulated bubbles are the textbook ones: GPipe and
// 1F1B (p−1)/(m+p−1); interleaved with m a multiple of p, (p−1)/(v·m+p−1);
// ZB-H1 with F = B = W, a bubble of (p−1)(F+B−W) beside 1F1B's (p−1)(F+B+W).
func TestBubbleFormulas(t *testing.T) {
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-9 }
	for pp := 1; pp <= 8; pp++ {
		for m := pp; m <= 32; m++ {
			want := float64(pp-1) / float64(m+pp-1)
			for _, name := range []string{GPipe, OneFOneB} {
				s, _ := For(name, pp, 1, m)
				res, err := Simulate(s, Uniform(pp, 1, 1, 1, 0))
				if err != nil {
					t.Fatal(err)
				}
				if !near(res.Bubble, want) {
					t.Errorf("%s pp %d m %d: bubble %.4f, want %.4f", name, pp, m, res.Bubble, want)
				}
			}
			s, _ := For(ZBH1, pp, 1, m)
			res, err := Simulate(s, Uniform(pp, 1, 1, 1, 0))
			if err != nil {
				t.Fatal(err)
			}
			if span := float64(3*m + pp - 1); !near(res.Makespan, span) {
				t.Errorf("zb-h1 pp %d m %d: makespan %g, want 3m + (p−1) = %g\n%s", pp, m, res.Makespan, span, Timeline(s, res, 1))
			}
			if m%pp == 0 {
				for v := 2; v <= 4; v++ {
					s, _ := For(Interleaved, pp, v, m)
					res, err := Simulate(s, Uniform(pp*v, 1, 1, 1, 0))
					if err != nil {
						t.Fatal(err)
					}
					if want := float64(pp-1) / float64(v*m+pp-1); !near(res.Bubble, want) {
						t.Errorf("interleaved pp %d v %d m %d: bubble %.4f, want %.4f", pp, v, m, res.Bubble, want)
					}
				}
			}
		}
	}
}

// A hand-broken 1F1B — rank 0 waits for the first output gradient before
// it sends the first activation (a swapped pair) — is a deadlock, and the
// error prints the whole grid with the stuck actions marked.
func TestSwappedPairDeadlocks(t *testing.T) {
	s, err := For(OneFOneB, 4, 1, 8)
	if err != nil {
		t.Fatal(err)
	}
	bad := s.Clone()
	l := bad.Ranks[0]
	i := indexOf(l, Action{0, SendF, 0})
	j := indexOf(l, Action{0, RecvB, 0})
	l[i], l[j] = l[j], l[i]
	_, err = Simulate(bad, Uniform(4, 1, 1, 1, 0))
	var se *Error
	if !errors.As(err, &se) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v, want a *schedule.Error", err)
	}
	if !strings.Contains(se.Reason, "deadlock") || !strings.Contains(se.Reason, "rank 0 waits at step") {
		t.Fatalf("reason %q does not say rank 0 deadlocks", se.Reason)
	}
	if !strings.Contains(se.Grid, "[0RECV_B0]") || !strings.Contains(se.Grid, "[1RECV_F0]") {
		t.Fatalf("the grid does not mark the stuck receives:\n%s", se.Grid)
	}
	for r := range 4 {
		if !strings.Contains(err.Error(), fmt.Sprintf("\nrank %d ", r)) {
			t.Fatalf("the error does not print rank %d's row:\n%v", r, err)
		}
	}
	t.Logf("%v", err)
}

func indexOf(as []Action, a Action) int {
	for i, b := range as {
		if b == a {
			return i
		}
	}
	panic(fmt.Sprintf("%v not in the list", a))
}

// Lists that are not schedules of their shape are refused before they
// run, naming the action.
func TestStaticErrors(t *testing.T) {
	base, _ := For(OneFOneB, 2, 1, 4)
	cases := []struct {
		name   string
		break_ func(s *Schedule)
		want   string
	}{
		{"backward before forward", func(s *Schedule) {
			l := s.Ranks[1]
			i, j := indexOf(l, Action{1, F, 2}), indexOf(l, Action{1, B, 2})
			l[i], l[j] = l[j], l[i]
		}, "before its forward"},
		{"missing backward", func(s *Schedule) {
			s.Ranks[0] = remove(s.Ranks[0], Action{0, B, 3})
		}, "never runs 0B3"},
		{"duplicate", func(s *Schedule) { s.Ranks[0] = append(s.Ranks[0], Action{0, F, 1}) }, "appears twice"},
		{"wrong rank", func(s *Schedule) { s.Ranks[0] = append(s.Ranks[0], Action{1, W, 0}) }, "belongs to rank 1"},
		{"send without receive", func(s *Schedule) {
			s.Ranks[1] = remove(s.Ranks[1], Action{1, RecvF, 0})
		}, "has no matching"},
		{"micro-batch out of range", func(s *Schedule) { s.Ranks[0] = append(s.Ranks[0], Action{0, W, 4}) }, "micro-batch 4 of 4"},
		{"send before compute", func(s *Schedule) {
			l := s.Ranks[0]
			i, j := indexOf(l, Action{0, F, 0}), indexOf(l, Action{0, SendF, 0})
			l[i], l[j] = l[j], l[i]
		}, "before the forward it sends"},
	}
	for _, c := range cases {
		s := base.Clone()
		c.break_(s)
		err := Check(s)
		var se *Error
		if !errors.As(err, &se) || !strings.Contains(se.Reason, c.want) {
			t.Errorf("%s: got %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

func remove(as []Action, a Action) []Action {
	i := indexOf(as, a)
	return append(as[:i:i], as[i+1:]...)
}

func TestArgs(t *testing.T) {
	for _, c := range []struct {
		name     string
		pp, v, m int
		want     string
	}{
		{"pipedream", 2, 1, 4, `parallel.schedule "pipedream"`},
		{OneFOneB, 2, 2, 4, "only interleaved-1f1b"},
		{Interleaved, 4, 2, 9, "do not split"},
		{GPipe, 0, 1, 4, "parallel.pp 0"},
		{GPipe, 2, 1, 0, "micro-batches 0"},
	} {
		_, err := For(c.name, c.pp, c.v, c.m)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("For(%s, %d, %d, %d) = %v, want %q", c.name, c.pp, c.v, c.m, err, c.want)
		}
	}
}

// Incoming lists a pair's messages in the sender's order; Peer and Match
// agree with it.
func TestIncoming(t *testing.T) {
	s, _ := For(Interleaved, 2, 2, 4)
	in := s.Incoming(1, 0)
	if len(in) == 0 {
		t.Fatal("rank 1 receives nothing from rank 0")
	}
	for _, a := range in {
		if _, r := s.Peer(a); r != 1 {
			t.Fatalf("%v goes to rank %d", a, r)
		}
		m := Match(a)
		if indexOf(s.Ranks[1], m) < 0 || Match(m) != a {
			t.Fatalf("%v's match %v", a, m)
		}
	}
	fwd, bwd := 0, 0
	for _, a := range in {
		if a.Kind == SendF {
			fwd++
		} else {
			bwd++
		}
	}
	// Rank 0 sends stage 0's and stage 2's activations (8) and stage 2's
	// input gradients (4) to rank 1.
	if fwd != 8 || bwd != 4 {
		t.Fatalf("rank 0 → 1: %d activations and %d gradients, want 8 and 4", fwd, bwd)
	}
}

// The buffer bound holds whatever the timing: under random costs the
// simulator never finds more messages waiting for their receive than
// Buffers allows, and the bound is reached (it is not loose) under some
// costs for 1F1B's first link, where GPipe needs a buffer per micro-batch.
func TestBuffersBoundTheSimulator(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		name     string
		pp, v, m int
	}{{GPipe, 4, 1, 8}, {OneFOneB, 4, 1, 8}, {Interleaved, 2, 2, 4}, {Interleaved, 4, 2, 8}, {ZBH1, 3, 1, 7}, {OneFOneB, 1, 1, 3}} {
		s, err := For(c.name, c.pp, c.v, c.m)
		if err != nil {
			t.Fatal(err)
		}
		bound := make([]int, s.PP)
		for r := range s.PP {
			for src := range s.PP {
				bound[r] += s.Buffers(r, src)
			}
		}
		for range 200 {
			costs := Uniform(s.Stages(), 0, 0, 0, 3*rng.Float64())
			for i := range s.Stages() {
				costs.F[i], costs.B[i], costs.W[i] = 0.01+rng.Float64()*float64(1+i%3), 0.01+rng.Float64(), 0.01+rng.Float64()
			}
			res, err := Simulate(s, costs)
			if err != nil {
				t.Fatal(err)
			}
			for r, n := range res.PeakBuffered {
				if n > bound[r] {
					t.Fatalf("%s: rank %d held %d messages, the bound is %d", s.Header(), r, n, bound[r])
				}
			}
		}
	}
	g, _ := For(GPipe, 4, 1, 8)
	if b := g.Buffers(1, 0); b != 8 {
		t.Errorf("gpipe pp 4 m 8: rank 1 buffers %d activations from rank 0, want all 8", b)
	}
	o, _ := For(OneFOneB, 4, 1, 8)
	if b := o.Buffers(3, 2); b > 2 {
		t.Errorf("1f1b pp 4 m 8: the last rank buffers %d activations, want ≤ 2", b)
	}
	for stage, n := range o.InFlight() {
		if want := 4 - stage; n != want {
			t.Errorf("1f1b pp 4 m 8: stage %d holds %d micro-batches, want %d", stage, n, want)
		}
	}
}

// AllBuffers' sweep counts what its definition counts: at each receive x
// of rank r, the messages to r whose send does not causally follow x and
// whose receive is x or later (a direct count over every pair of
// receives), over a grid of shapes.
func TestBuffersSweepMatchesDefinition(t *testing.T) {
	for _, name := range Names() {
		for pp := 1; pp <= 4; pp++ {
			for m := 1; m <= 9; m += 2 {
				v := 1
				if name == Interleaved {
					v = 2
					if interleavedRound(pp, m) == 0 {
						continue
					}
				}
				s, err := For(name, pp, v, m)
				if err != nil {
					t.Fatal(err)
				}
				got := s.AllBuffers()
				// Happens-before by brute force: the transitive closure of
				// program order and send → receive.
				type pos struct{ r, i int }
				index := map[Action]pos{}
				for r, as := range s.Ranks {
					for i, a := range as {
						index[a] = pos{r, i}
					}
				}
				memo := map[[2]pos]bool{}
				var before func(a, b pos) bool // a happens before (or is) b
				before = func(a, b pos) bool {
					if a == b || a.r == b.r && a.i <= b.i {
						return true
					}
					k := [2]pos{a, b}
					if v, ok := memo[k]; ok {
						return v
					}
					res := false
					for i := b.i; i >= 0 && !res; i-- {
						if x := s.Ranks[b.r][i]; x.Kind == RecvF || x.Kind == RecvB {
							res = before(a, index[Match(x)])
						}
					}
					memo[k] = res
					return res
				}
				for r, as := range s.Ranks {
					want := make([]int, s.PP)
					for i, x := range as {
						if x.Kind != RecvF && x.Kind != RecvB {
							continue
						}
						held := make([]int, s.PP)
						for j := i; j < len(as); j++ {
							y := as[j]
							if y.Kind != RecvF && y.Kind != RecvB {
								continue
							}
							if sp := index[Match(y)]; !before(pos{r, i}, sp) {
								held[sp.r]++
							}
						}
						for q, n := range held {
							want[q] = max(want[q], n)
						}
					}
					if fmt.Sprint(want) != fmt.Sprint(got[r]) {
						t.Fatalf("%s rank %d: buffers %v, by definition %v", s.Header(), r, got[r], want)
					}
				}
			}
		}
	}
}
