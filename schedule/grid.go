package schedule

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Grid prints the rank × step grid of s: one row per rank, one column per
// position in the lists, every action in its text form; the actions at
// marks are shown in brackets, [1RECV_F3], and a legend line says so.
func Grid(s *Schedule, marks []Pos) string {
	width := 1
	steps := 0
	for _, as := range s.Ranks {
		steps = max(steps, len(as))
		for _, a := range as {
			width = max(width, len(a.String()))
		}
	}
	width += 2 // room for the brackets of a marked cell
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", s.Header())
	fmt.Fprintf(&b, "%-8s", "step")
	for i := range steps {
		fmt.Fprintf(&b, " %-*d", width, i)
	}
	b.WriteByte('\n')
	for r, as := range s.Ranks {
		fmt.Fprintf(&b, "%-8s", fmt.Sprintf("rank %d", r))
		for i, a := range as {
			cell := " " + a.String() + " "
			if slices.Contains(marks, Pos{r, i}) {
				cell = "[" + a.String() + "]"
			}
			fmt.Fprintf(&b, " %-*s", width, cell)
		}
		b.WriteByte('\n')
	}
	if len(marks) > 0 {
		b.WriteString("[…] marks the failing actions\n")
	}
	return trimLines(b.String())
}

// trimLines drops the spaces that padding leaves at the end of lines.
func trimLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// Timeline prints res as a rank × time chart of the compute actions: one
// column per unit of time, each action's cells labelled with its kind and
// micro-batch (and stage, when ranks hold several), "." where the rank is
// idle. unit ≤ 0 picks the shortest compute action's duration.
func Timeline(s *Schedule, res *Result, unit float64) string {
	if unit <= 0 {
		unit = math.Inf(1)
		for _, spans := range res.Spans {
			for _, sp := range spans {
				if d := sp.End - sp.Start; sp.Action.Kind.Compute() && d > 0 {
					unit = math.Min(unit, d)
				}
			}
		}
		if math.IsInf(unit, 1) {
			unit = 1
		}
	}
	label := func(a Action) string {
		if s.Virtual > 1 {
			return fmt.Sprintf("%s%d.%d", a.Kind, a.MB, a.Stage)
		}
		return fmt.Sprintf("%s%d", a.Kind, a.MB)
	}
	width := 1
	for _, spans := range res.Spans {
		for _, sp := range spans {
			if sp.Action.Kind.Compute() {
				width = max(width, len(label(sp.Action)))
			}
		}
	}
	cols := int(math.Ceil(res.Makespan/unit - 1e-9))
	var b strings.Builder
	for r, spans := range res.Spans {
		row := make([]string, cols)
		for i := range row {
			row[i] = "."
		}
		for _, sp := range spans {
			if !sp.Action.Kind.Compute() {
				continue
			}
			lo := int(math.Round(sp.Start / unit))
			hi := max(lo+1, int(math.Round(sp.End/unit)))
			for c := lo; c < hi && c < cols; c++ {
				row[c] = label(sp.Action)
			}
		}
		fmt.Fprintf(&b, "%-8s", fmt.Sprintf("rank %d", r))
		for _, c := range row {
			fmt.Fprintf(&b, " %-*s", width, c)
		}
		b.WriteString("\n")
	}
	return trimLines(b.String())
}
