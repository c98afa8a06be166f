package schedule

import (
	"bufio"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Schedule names, as the job spec's parallel.schedule spells them.
const (
	GPipe       = "gpipe"            // every forward, then every backward (Huang et al. 2019)
	OneFOneB    = "1f1b"             // warm-up forwards, then one forward one backward (PipeDream-Flush, Megatron)
	Interleaved = "interleaved-1f1b" // 1F1B over virtual stages, several per rank (Narayanan et al. 2021)
	ZBH1        = "zb-h1"            // 1F1B with weight gradients split off to fill the bubble (Qi et al. 2024)
)

// Names lists every schedule.
func Names() []string { return []string{GPipe, OneFOneB, Interleaved, ZBH1} }

// ErrInvalid is the class of errors about schedule arguments and broken
// schedules.
var ErrInvalid = errors.New("invalid pipeline schedule")

// Schedule is every rank's ordered list of actions for one optimizer step
// of Micro micro-batches through PP·Virtual (virtual) stages. Stage s runs
// on rank s mod PP (the looping placement of interleaved schedules: rank r
// holds stages r, r+PP, r+2·PP, …), so with Virtual = 1 stage s is rank s.
// A Schedule is a plain value; it is not modified after it is built.
type Schedule struct {
	Name    string
	PP      int // ranks (pipeline stages of the mesh)
	Virtual int // stages per rank
	Micro   int // micro-batches per step
	Ranks   [][]Action
}

// Stages is the number of (virtual) stages, PP·Virtual.
func (s *Schedule) Stages() int { return s.PP * s.Virtual }

// RankOf is the rank that runs stage.
func (s *Schedule) RankOf(stage int) int { return stage % s.PP }

// StagesOf lists the stages rank r runs, in model order.
func (s *Schedule) StagesOf(r int) []int {
	var out []int
	for v := range s.Virtual {
		out = append(out, r+v*s.PP)
	}
	return out
}

// Split reports whether the backward of (stage, mb) is split into a B
// (input gradient) and a W (weight gradients): whether the schedule lists
// that W.
func (s *Schedule) Split(stage, mb int) bool {
	for _, a := range s.Ranks[s.RankOf(stage)] {
		if a.Kind == W && a.Stage == stage && a.MB == mb {
			return true
		}
	}
	return false
}

// Header is the first line of the text form: the schedule's name and
// shape.
func (s *Schedule) Header() string {
	return fmt.Sprintf("schedule %s pp %d virtual %d micro %d", s.Name, s.PP, s.Virtual, s.Micro)
}

// String prints the schedule as its text form: the header, then one line
// per rank, "rank R: ACTION ACTION …". Parse reads it back.
func (s *Schedule) String() string {
	var b strings.Builder
	b.WriteString(s.Header())
	b.WriteByte('\n')
	for r, as := range s.Ranks {
		fmt.Fprintf(&b, "rank %d: %s\n", r, FormatList(as))
	}
	return b.String()
}

// ParseSchedule reads the text form String prints (blank lines and lines
// starting with # are skipped).
func ParseSchedule(text string) (*Schedule, error) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<24)
	var s *Schedule
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if s == nil {
			s = &Schedule{}
			if n, err := fmt.Sscanf(t, "schedule %s pp %d virtual %d micro %d", &s.Name, &s.PP, &s.Virtual, &s.Micro); n != 4 || err != nil {
				return nil, fmt.Errorf("schedule: line %d: %q: want %q: %w", line, t, "schedule NAME pp P virtual V micro M", ErrSyntax)
			}
			if s.PP < 1 || s.Virtual < 1 || s.Micro < 1 {
				return nil, fmt.Errorf("schedule: line %d: pp, virtual and micro must be ≥ 1: %w", line, ErrSyntax)
			}
			continue
		}
		var r int
		head, rest, ok := strings.Cut(t, ":")
		if n, err := fmt.Sscanf(head, "rank %d", &r); !ok || n != 1 || err != nil || r != len(s.Ranks) {
			return nil, fmt.Errorf("schedule: line %d: %q: want \"rank %d: ACTIONS\": %w", line, head, len(s.Ranks), ErrSyntax)
		}
		as, err := ParseList(rest)
		if err != nil {
			return nil, fmt.Errorf("schedule: line %d (rank %d): %w", line, r, err)
		}
		s.Ranks = append(s.Ranks, as)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if s == nil {
		return nil, fmt.Errorf("schedule: empty text: %w", ErrSyntax)
	}
	if len(s.Ranks) != s.PP {
		return nil, fmt.Errorf("schedule: %d rank lines for pp %d: %w", len(s.Ranks), s.PP, ErrSyntax)
	}
	return s, nil
}

// Clone returns a deep copy (tests break copies of good schedules).
func (s *Schedule) Clone() *Schedule {
	c := *s
	c.Ranks = make([][]Action, len(s.Ranks))
	for r, as := range s.Ranks {
		c.Ranks[r] = slices.Clone(as)
	}
	return &c
}

// CheckArgs reports why (name, pp, virtual, micro) has no schedule; each
// problem names the job spec's field.
func CheckArgs(name string, pp, virtual, micro int) error {
	var errs []error
	if !slices.Contains(Names(), name) {
		errs = append(errs, fmt.Errorf("parallel.schedule %q: allowed: %s", name, strings.Join(Names(), ", ")))
	}
	if pp < 1 {
		errs = append(errs, fmt.Errorf("parallel.pp %d: must be ≥ 1", pp))
	}
	if micro < 1 {
		errs = append(errs, fmt.Errorf("micro-batches %d: must be ≥ 1", micro))
	}
	if virtual < 1 {
		errs = append(errs, fmt.Errorf("parallel.virtual_stages %d: must be ≥ 1", virtual))
	} else if virtual > 1 && name != Interleaved {
		errs = append(errs, fmt.Errorf("parallel.virtual_stages %d: only %s runs several stages per rank (use 1 with %s)", virtual, Interleaved, name))
	}
	if name == Interleaved && pp >= 1 && micro >= 1 && interleavedRound(pp, micro) == 0 {
		lo, hi := micro-1, micro+1
		for interleavedRound(pp, lo) == 0 {
			lo--
		}
		for interleavedRound(pp, hi) == 0 {
			hi++
		}
		errs = append(errs, fmt.Errorf("%s runs the micro-batches in ⌊m/pp⌋ rounds of equal size (at least pp = %d): %d micro-batches do not split into %d rounds; use %d or %d (or any count ≤ %d)",
			Interleaved, pp, micro, micro/pp, lo, hi, 2*pp-1))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("schedule: %w: %w", err, ErrInvalid)
	}
	return nil
}

// Generate returns the compute-only schedule (F, B and W actions; no sends
// or receives) of name for pp ranks, virtual stages per rank and micro
// micro-batches. AddComm adds the communication; For does both.
func Generate(name string, pp, virtual, micro int) (*Schedule, error) {
	if err := CheckArgs(name, pp, virtual, micro); err != nil {
		return nil, err
	}
	s := &Schedule{Name: name, PP: pp, Virtual: virtual, Micro: micro, Ranks: make([][]Action, pp)}
	for r := range pp {
		switch name {
		case GPipe:
			s.Ranks[r] = gpipe(r, micro)
		case OneFOneB:
			s.Ranks[r] = oneFOneB(r, pp, micro)
		case Interleaved:
			s.Ranks[r] = interleaved(r, pp, virtual, micro)
		case ZBH1:
			s.Ranks[r] = zbH1(r, pp, micro)
		}
	}
	return s, nil
}

// For is the schedule the executor runs: Generate, then AddComm.
func For(name string, pp, virtual, micro int) (*Schedule, error) {
	s, err := Generate(name, pp, virtual, micro)
	if err != nil {
		return nil, err
	}
	return AddComm(s), nil
}

// gpipe: every forward, then every backward, in micro-batch order.
func gpipe(r, m int) []Action {
	var as []Action
	for i := range m {
		as = append(as, Action{r, F, i})
	}
	for i := range m {
		as = append(as, Action{r, B, i})
	}
	return as
}

// oneFOneB: pp−r−1 warm-up forwards, then alternate one forward and one
// backward, then the remaining backwards. Rank r holds at most pp−r
// micro-batches' activations.
func oneFOneB(r, pp, m int) []Action {
	warm := min(pp-r-1, m)
	var as []Action
	for i := range warm {
		as = append(as, Action{r, F, i})
	}
	for i := range m - warm {
		as = append(as, Action{r, F, warm + i}, Action{r, B, i})
	}
	for i := m - warm; i < m; i++ {
		as = append(as, Action{r, B, i})
	}
	return as
}

// zbH1 is 1F1B with each backward split into B (input gradient, on the
// critical path) and W (weight gradients, which nothing waits for): rank r
// runs W as soon as more than r of them are pending, so the later ranks,
// which 1F1B leaves with spare activation memory, defer up to r weight
// passes into the cool-down, where 1F1B idles. Every rank then holds at
// most pp micro-batches — 1F1B's peak, on its first rank — and with equal
// F, B and W costs the bubble shrinks from (pp−1)(F+B+W) to (pp−1)(F+B−W)
// (Qi et al. 2024, ZB-H1).
func zbH1(r, pp, m int) []Action {
	warm := min(pp-r-1, m)
	var as []Action
	for i := range warm {
		as = append(as, Action{r, F, i})
	}
	f, w := warm, 0
	for b := range m {
		if f < m {
			as = append(as, Action{r, F, f})
			f++
		}
		as = append(as, Action{r, B, b})
		if b+1-w > r {
			as = append(as, Action{r, W, w})
			w++
		}
	}
	for ; w < m; w++ {
		as = append(as, Action{r, W, w})
	}
	return as
}

// interleaved is the interleaved 1F1B of Megatron-LM over v stages per
// rank, with PyTorch pipelining's rounds so that the micro-batch count
// need not be a multiple of pp: the m micro-batches go in r = max(1, ⌊m/pp⌋)
// rounds of g = m/r (≥ pp when m ≥ pp; r must divide m). For each round,
// every stage of the rank in model order runs the round's forwards;
// backwards visit the stages in reverse. Rank i warms up with
// (v−1)·g + 2(pp−i−1) forwards, then alternates one forward and one
// backward, then cools down.
func interleaved(r, pp, v, m int) []Action {
	g := interleavedRound(pp, m)
	type slot struct{ mb, chunk int }
	var order []slot // k-th forward of the rank
	for lo := 0; lo < m; lo += g {
		for c := range v {
			for i := lo; i < lo+g; i++ {
				order = append(order, slot{i, c})
			}
		}
	}
	total := m * v
	warm := min((v-1)*g+2*(pp-r-1), total)
	fwd := func(k int) Action { o := order[k]; return Action{r + o.chunk*pp, F, o.mb} }
	bwd := func(k int) Action { o := order[k]; return Action{r + (v-1-o.chunk)*pp, B, o.mb} }
	var as []Action
	for k := range warm {
		as = append(as, fwd(k))
	}
	for k := range total - warm {
		as = append(as, fwd(warm+k), bwd(k))
	}
	for k := total - warm; k < total; k++ {
		as = append(as, bwd(k))
	}
	return as
}

// interleavedRound is the micro-batches per round of the interleaved
// schedule: m / max(1, ⌊m/pp⌋), or 0 when the rounds do not divide m.
func interleavedRound(pp, m int) int {
	rounds := max(1, m/pp)
	if m%rounds != 0 {
		return 0
	}
	return m / rounds
}
