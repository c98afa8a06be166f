package coordinator

// A series keeps a bounded history of per-step points: the newest steps at
// full resolution, and the whole run downsampled into uniform buckets
// whose width doubles whenever they fill (an RRD-style overview). Memory is
// O(overview + 2·recent) points however many steps a run takes.

// point is a value a series can downsample: merged returns the weighted
// mean of two consecutive points (the receiver older), covering both.
type point[P any] interface {
	merged(newer P) P
	steps() int      // steps the point covers
	lastStep() int64 // the last step it covers
}

// series is not safe for concurrent use; its owner locks.
type series[P point[P]] struct {
	capOverview, capRecent int

	overview []P // uniform buckets of width steps each
	width    int
	acc      P   // the bucket being filled
	accSteps int // steps in acc (0: empty)
	recent   []P // the newest points, at most 2·capRecent
}

func newSeries[P point[P]](capOverview, capRecent int) series[P] {
	return series[P]{capOverview: capOverview, capRecent: capRecent, width: 1}
}

// add appends the point of a step newer than every point held.
func (s *series[P]) add(p P) {
	s.recent = append(s.recent, p)
	if len(s.recent) >= 2*s.capRecent {
		n := copy(s.recent, s.recent[len(s.recent)-s.capRecent:])
		s.recent = s.recent[:n]
	}
	if s.accSteps == 0 {
		s.acc = p
	} else {
		s.acc = s.acc.merged(p)
	}
	s.accSteps += p.steps()
	if s.accSteps < s.width {
		return
	}
	s.overview = append(s.overview, s.acc)
	s.accSteps = 0
	if len(s.overview) < s.capOverview {
		return
	}
	// Full: halve the resolution of the whole overview.
	half := s.overview[:0]
	for i := 0; i+1 < len(s.overview); i += 2 {
		half = append(half, s.overview[i].merged(s.overview[i+1]))
	}
	if len(s.overview)%2 == 1 {
		half = append(half, s.overview[len(s.overview)-1])
	}
	s.overview = half
	s.width *= 2
}

// points returns the history oldest first: overview buckets before the
// first recent step, then the recent points (a new slice).
func (s *series[P]) points() []P {
	recent := s.recent
	if len(recent) > s.capRecent {
		recent = recent[len(recent)-s.capRecent:]
	}
	var out []P
	first := int64(1<<63 - 1)
	if len(recent) > 0 {
		first = recent[0].lastStep() - int64(recent[0].steps()) + 1
	}
	for _, p := range s.overview {
		if p.lastStep() < first {
			out = append(out, p)
		}
	}
	return append(out, recent...)
}

// since returns the recent points after step (for live updates).
func (s *series[P]) since(step int64) []P {
	var out []P
	for _, p := range s.recent {
		if p.lastStep() > step {
			out = append(out, p)
		}
	}
	return out
}

// truncate drops every point that covers a step ≥ from (a restarted
// generation replays those steps).
func (s *series[P]) truncate(from int64) {
	keep := func(ps []P) []P {
		out := ps[:0]
		for _, p := range ps {
			if p.lastStep() < from {
				out = append(out, p)
			}
		}
		return out
	}
	s.recent = keep(s.recent)
	s.overview = keep(s.overview)
	if s.accSteps > 0 && s.acc.lastStep() >= from {
		var zero P
		s.acc, s.accSteps = zero, 0
	}
}

// len is the number of points held (for memory accounting and tests).
func (s *series[P]) len() int { return len(s.overview) + len(s.recent) + 1 }

// seriesState is a series as persisted.
type seriesState[P any] struct {
	Width    int `json:"width"`
	Overview []P `json:"overview"`
	Acc      *P  `json:"acc,omitempty"`
	AccSteps int `json:"acc_steps,omitempty"`
	Recent   []P `json:"recent"`
}

func (s *series[P]) state() seriesState[P] {
	st := seriesState[P]{Width: s.width, Overview: s.overview, AccSteps: s.accSteps, Recent: s.recent}
	if len(st.Recent) > s.capRecent {
		st.Recent = st.Recent[len(st.Recent)-s.capRecent:]
	}
	if s.accSteps > 0 {
		acc := s.acc
		st.Acc = &acc
	}
	return st
}

func (s *series[P]) restore(st seriesState[P]) {
	s.width = max(1, st.Width)
	s.overview = append([]P(nil), st.Overview...)
	s.recent = append([]P(nil), st.Recent...)
	if len(s.overview) > s.capOverview {
		s.overview = s.overview[len(s.overview)-s.capOverview:]
	}
	if len(s.recent) > s.capRecent {
		s.recent = s.recent[len(s.recent)-s.capRecent:]
	}
	s.accSteps = 0
	if st.Acc != nil && st.AccSteps > 0 {
		s.acc, s.accSteps = *st.Acc, st.AccSteps
	}
}
