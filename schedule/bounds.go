package schedule

import "slices"

// InFlight is, per stage, the most micro-batches whose activations the
// stage holds at once along its rank's list (from the forward to the last
// backward pass of each): how many activation slots the executor gives
// the stage. It is the same under any timing.
func (s *Schedule) InFlight() []int {
	split := s.splits()
	live := make([]int, s.Stages())
	peak := make([]int, s.Stages())
	for _, as := range s.Ranks {
		for _, a := range as {
			switch {
			case a.Kind == F:
				live[a.Stage]++
				peak[a.Stage] = max(peak[a.Stage], live[a.Stage])
			case a.Kind == W, a.Kind == B && !split[a.Stage*s.Micro+a.MB]:
				live[a.Stage]--
			}
		}
	}
	return peak
}

// Buffers is, for each pair of ranks, the most messages from src that rank
// r can hold between their arrival and the receive that takes them, under
// any timing: when r reaches a receive x, every message whose send does
// not causally follow x may already be there (Lamport's happens-before,
// tracked with vector clocks over program order and send → receive). An
// executor that receives from src ahead, in src's send order, into
// Buffers(r, src) buffers never runs out: a further message would be one
// more that can be there at once. s must be valid (Check).
func (s *Schedule) Buffers(r, src int) int {
	return s.AllBuffers()[r][src]
}

// AllBuffers is Buffers for every pair at once, [r][src]: one pass over
// the lists instead of one per pair.
func (s *Schedule) AllBuffers() [][]int {
	P := s.PP
	// Vector clocks: vc[r][i][q] = how many of rank q's actions happen
	// before or at action i of rank r (for q = r: i+1).
	vc := make([][][]int, P)
	for r := range P {
		vc[r] = make([][]int, len(s.Ranks[r]))
	}
	pos := map[Action][2]int{} // every executed action: rank, index
	pc := make([]int, P)
	cur := make([][]int, P)
	for r := range P {
		cur[r] = make([]int, P)
	}
	for progress := true; progress; {
		progress = false
		for r := range P {
			for pc[r] < len(s.Ranks[r]) {
				a := s.Ranks[r][pc[r]]
				if a.Kind == RecvF || a.Kind == RecvB {
					p, ok := pos[Match(a)]
					if !ok {
						break
					}
					for q, n := range vc[p[0]][p[1]] {
						cur[r][q] = max(cur[r][q], n)
					}
				}
				cur[r][r] = pc[r] + 1
				vc[r][pc[r]] = append([]int(nil), cur[r]...)
				pos[a] = [2]int{r, pc[r]}
				pc[r]++
				progress = true
			}
		}
	}
	// Message j to r is there at r's step i when its send does not follow
	// step i (vc of the send on r is ≤ i) and its receive is at i or
	// later: i in [known_j, recv_j]. The most at once is the deepest
	// overlap of those intervals, which a sweep finds (the deepest point
	// is some interval's end, a receive).
	type ev struct{ at, d int }
	out := make([][]int, P)
	for r := range P {
		out[r] = make([]int, P)
		evs := make([][]ev, P)
		for i, y := range s.Ranks[r] {
			if y.Kind != RecvF && y.Kind != RecvB {
				continue
			}
			p := pos[Match(y)]
			evs[p[0]] = append(evs[p[0]], ev{vc[p[0]][p[1]][r], 1}, ev{i + 1, -1})
		}
		for q, e := range evs {
			slices.SortFunc(e, func(a, b ev) int {
				if a.at != b.at {
					return a.at - b.at
				}
				return a.d - b.d
			})
			n := 0
			for _, x := range e {
				n += x.d
				out[r][q] = max(out[r][q], n)
			}
		}
	}
	return out
}
