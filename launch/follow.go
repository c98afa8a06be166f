package launch

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/loomtrain/loom/api"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Follow streams a job's progress to w — a line per status change and a
// line per step of rank 0 — until the job finishes, and returns its final
// status. totalSteps (0: unknown) is shown as "step 12/100".
func Follow(ctx context.Context, c *api.Client, job string, totalSteps int, w io.Writer) (*loomv1.JobStatus, error) {
	var lastMsg string
	return c.Watch(ctx, job, func(ev *loomv1.JobEvent) error {
		if s := ev.GetStatus(); s != nil {
			line := fmt.Sprintf("%s: %s — %s", s.Name, StateName(s.State), s.Message)
			if line != lastMsg {
				fmt.Fprintln(w, line)
				lastMsg = line
			}
			return nil
		}
		p := ev.GetProgress()
		if p == nil || p.Rank != 0 {
			return nil
		}
		for _, s := range p.Steps {
			fmt.Fprintln(w, FormatStep(s, totalSteps))
		}
		return nil
	})
}

// FormatStep renders one step as a progress line.
func FormatStep(s *loomv1.StepStats, totalSteps int) string {
	var b strings.Builder
	if totalSteps > 0 {
		fmt.Fprintf(&b, "step %d/%d", s.Step, totalSteps)
	} else {
		fmt.Fprintf(&b, "step %d", s.Step)
	}
	fmt.Fprintf(&b, " | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | %s/step",
		s.Loss, s.Lr, s.GradNorm, s.TokensPerSec, time.Duration(s.StepSeconds*float64(time.Second)).Round(time.Microsecond))
	if s.StepSeconds > 0 && s.CommSeconds > 0 {
		fmt.Fprintf(&b, " (comm %.0f%%)", 100*s.CommSeconds/s.StepSeconds)
	}
	return b.String()
}

// StateName is a job state without its enum prefix ("RUNNING").
func StateName(s loomv1.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}
