package schedule

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
	return s.bounds()[r][src]
}

// bounds computes Buffers for every pair.
func (s *Schedule) bounds() [][]int {
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
	out := make([][]int, P)
	for r := range P {
		out[r] = make([]int, P)
		for i, x := range s.Ranks[r] {
			if x.Kind != RecvF && x.Kind != RecvB {
				continue
			}
			// Messages to r from each src that may be there when r reaches
			// step i and are taken at i or later.
			held := make([]int, P)
			for j := i; j < len(s.Ranks[r]); j++ {
				y := s.Ranks[r][j]
				if y.Kind != RecvF && y.Kind != RecvB {
					continue
				}
				p := pos[Match(y)]
				if vc[p[0]][p[1]][r] <= i { // the send does not follow step i
					held[p[0]]++
				}
			}
			for q, n := range held {
				out[r][q] = max(out[r][q], n)
			}
		}
	}
	return out
}
