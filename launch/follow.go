package launch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/loomtrain/loom/api"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Follow streams a job's progress to w — a line per status change and a
// line per step of rank 0 — until the job finishes, and returns its final
// status. totalSteps (0: unknown) is shown as "step 12/100". With jsonLines
// every line is one JSON object instead: {"job","state","message"} for a
// status change, and for a step the keys `loom run --log-format json`
// prints for a single worker (step, loss, lr, grad_norm, tokens_per_sec,
// step_s, comm_s, elapsed_s).
func Follow(ctx context.Context, c *api.Client, job string, totalSteps int, w io.Writer, jsonLines bool) (*loomv1.JobStatus, error) {
	var lastMsg string
	start := time.Now()
	var lastStep time.Time
	var pace stepPace
	return c.Watch(ctx, job, func(ev *loomv1.JobEvent) error {
		if s := ev.GetStatus(); s != nil {
			line := fmt.Sprintf("%s: %s — %s", s.Name, StateName(s.State), s.Message)
			if jsonLines {
				b, _ := json.Marshal(map[string]any{"job": s.Name, "state": StateName(s.State), "message": s.Message})
				line = string(b)
			}
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
			first := pace.steps == 0
			eta := pace.observe(s, totalSteps, time.Now())
			if jsonLines {
				rec := map[string]any{"step": s.Step, "loss": s.Loss, "lr": s.Lr, "grad_norm": s.GradNorm,
					"tokens_per_sec": s.TokensPerSec, "step_s": s.StepSeconds, "comm_s": s.CommSeconds,
					"elapsed_s": time.Since(start).Seconds(), "eta_s": eta.Seconds()}
				if s.ValLoss > 0 {
					rec["val_loss"] = s.ValLoss
				}
				b, _ := json.Marshal(rec)
				fmt.Fprintf(w, "%s\n", b)
				continue
			}
			// Text lines: the first step seen (1, or the one after a
			// resume), the last, validations, and at most one a second.
			if !first && int(s.Step) != totalSteps && s.ValLoss == 0 && time.Since(lastStep) < time.Second {
				continue
			}
			lastStep = time.Now()
			line := FormatStep(s, totalSteps)
			if totalSteps > 0 && s.Step > 0 {
				line += fmt.Sprintf(" | elapsed %s | eta %s", time.Since(start).Round(time.Second), eta.Round(time.Second))
			}
			fmt.Fprintln(w, line)
		}
		return nil
	})
}

// stepPace estimates the time to the last step from the steps seen so far.
// A run resumed from a checkpoint starts at a later step, and the wait
// before the first step (scheduling, loading) is not training: the pace is
// the time between the steps seen, not the elapsed time over the step
// number. Not safe for concurrent use.
type stepPace struct {
	firstStep int64
	firstAt   time.Time
	steps     int // steps seen
}

// observe records step s seen at now and returns the estimated time to
// step total (0 when unknown or done).
func (p *stepPace) observe(s *loomv1.StepStats, total int, now time.Time) time.Duration {
	p.steps++
	if p.steps == 1 {
		p.firstStep, p.firstAt = s.Step, now
	}
	left := int64(total) - s.Step
	if total <= 0 || left <= 0 {
		return 0
	}
	per := time.Duration(s.StepSeconds * float64(time.Second)) // one step's own time until two are seen
	if done := s.Step - p.firstStep; done > 0 {
		per = now.Sub(p.firstAt) / time.Duration(done)
	}
	return per * time.Duration(left)
}

// FormatStep renders one step as a progress line.
func FormatStep(s *loomv1.StepStats, totalSteps int) string {
	var b strings.Builder
	if totalSteps > 0 {
		fmt.Fprintf(&b, "step %d/%d", s.Step, totalSteps)
	} else {
		fmt.Fprintf(&b, "step %d", s.Step)
	}
	fmt.Fprintf(&b, " | loss %.4f", s.Loss)
	if s.ValLoss > 0 {
		fmt.Fprintf(&b, " | val loss %.4f", s.ValLoss)
	}
	fmt.Fprintf(&b, " | lr %.2e | gnorm %.3f | %.0f tok/s | %s/step",
		s.Lr, s.GradNorm, s.TokensPerSec, time.Duration(s.StepSeconds*float64(time.Second)).Round(time.Microsecond))
	if s.StepSeconds > 0 && s.CommSeconds > 0 {
		fmt.Fprintf(&b, " (comm %.0f%%)", 100*s.CommSeconds/s.StepSeconds)
	}
	return b.String()
}

// StateName is a job state without its enum prefix ("RUNNING").
func StateName(s loomv1.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}
