package train

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// Progress prints step statistics as text lines for people or as one JSON
// object per step for scripts. It is not safe for concurrent use.
type Progress struct {
	w         io.Writer
	json      bool
	total     int
	start     time.Time
	lastPrint time.Time
	every     time.Duration
	tokens    int64
	// first is the first step reported: 1, or the one after a resume.
	first int
}

// NewProgress returns a printer for a run of total steps. format is "text"
// or "json"; text lines are printed at most every interval (and for the
// first and last step).
func NewProgress(w io.Writer, format string, total int, interval time.Duration) (*Progress, error) {
	switch format {
	case "text", "json":
	default:
		return nil, fmt.Errorf("--log-format %q: allowed: text, json", format)
	}
	now := time.Now()
	return &Progress{w: w, json: format == "json", total: total, start: now, every: interval}, nil
}

// record is the JSON form of one step.
type record struct {
	Stats
	ElapsedS float64 `json:"elapsed_s"`
	ETAS     float64 `json:"eta_s"`
}

// Report prints one step.
func (p *Progress) Report(s Stats) {
	now := time.Now()
	elapsed := now.Sub(p.start)
	p.tokens += int64(s.Tokens)
	if p.first == 0 {
		p.first = s.Step
	}
	eta := time.Duration(0)
	// The elapsed time covers the steps since the first one reported (a
	// resumed run starts after its checkpoint's step), not s.Step steps.
	if done := s.Step - p.first + 1; done > 0 {
		eta = time.Duration(float64(elapsed) / float64(done) * float64(p.total-s.Step))
	}
	if p.json {
		b, _ := json.Marshal(record{Stats: s, ElapsedS: elapsed.Seconds(), ETAS: eta.Seconds()})
		fmt.Fprintf(p.w, "%s\n", b)
		return
	}
	if s.Step != p.first && s.Step != p.total && s.ValLoss == 0 && now.Sub(p.lastPrint) < p.every {
		return
	}
	p.lastPrint = now
	avg := float64(p.tokens) / elapsed.Seconds()
	val := ""
	if s.ValLoss > 0 {
		val = fmt.Sprintf(" | val loss %.4f", s.ValLoss)
	}
	fmt.Fprintf(p.w, "step %*d/%d | loss %.4f%s | lr %.2e | grad norm %6.3f | %8.0f tok/s | elapsed %s | eta %s\n",
		len(fmt.Sprint(p.total)), s.Step, p.total, s.Loss, val, s.LR, s.GradNorm, avg,
		elapsed.Round(time.Second), eta.Round(time.Second))
}
