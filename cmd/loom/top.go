package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/loomtrain/loom/coordinator"
	"github.com/loomtrain/loom/internal/security"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// cmdTop is `loom top [JOB]`: the dashboard's per-rank view as a table
// that refreshes in the terminal.
func cmdTop(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "top", "[JOB] [--coordinator ADDR] [flags]\n\n"+
		"Shows a job's progress and, for every rank, where its step time goes\n"+
		"(compute, exposed communication, waiting for slower ranks, data loading),\n"+
		"slowest first, with stragglers flagged; refreshes until interrupted.\n"+
		"Without JOB it follows the running job (or lists the jobs). It reads the\n"+
		"coordinator's JSON API, found through --coordinator or given with --http.")
	var addr string
	coordinatorFlag(fs, &addr)
	secFlags := clientSecurity(fs)
	httpAddr := fs.String("http", "", "the coordinator's dashboard `ADDR` (default: ask the coordinator)")
	interval := fs.Duration("interval", 2*time.Second, "refresh every `DURATION`")
	once := fs.Bool("once", false, "print once and exit (for scripts)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fs.Usage()
		return errors.New("top: at most one JOB")
	}
	if *interval < 100*time.Millisecond {
		return fmt.Errorf("top: --interval %v: must be at least 100ms", *interval)
	}
	sec, err := secFlags()
	if err != nil {
		return fmt.Errorf("top: %w", err)
	}
	base := *httpAddr
	if base == "" {
		if base, err = dashboardAddr(ctx, addr, sec); err != nil {
			return fmt.Errorf("top: %w", err)
		}
	}
	job := ""
	if len(pos) == 1 {
		job = pos[0]
	}
	for {
		var b strings.Builder
		err := renderTop(ctx, sec.HTTPClient(), &b, sec.Scheme()+"://"+base, job)
		if *once {
			io.WriteString(env.stdout, b.String())
			return err
		}
		// Home the cursor and clear the screen, then draw.
		fmt.Fprint(env.stdout, "\x1b[H\x1b[2J", b.String())
		if err != nil {
			fmt.Fprintf(env.stdout, "\n%v\n", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
	}
}

// dashboardAddr asks the coordinator at addr where it serves its
// dashboard.
func dashboardAddr(ctx context.Context, addr string, sec *security.Setup) (string, error) {
	c, err := dialCoordinator(ctx, addr, sec)
	if err != nil {
		return "", err
	}
	defer c.Close()
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := c.RPC().Info(ictx, &loomv1.InfoRequest{})
	if err != nil {
		return "", fmt.Errorf("ask %s for its dashboard address: %w", addr, err)
	}
	if info.HttpAddr == "" {
		return "", fmt.Errorf("the coordinator at %s serves no dashboard: start it with --http ADDR, or pass --http", addr)
	}
	return info.HttpAddr, nil
}

func fetchJSON(ctx context.Context, hc *http.Client, u string, v any) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, "GET", u, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("dashboard API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("GET %s: %s", u, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// renderTop writes one screen: job JOB's view, or with job "" the running
// job's (or the job list when none runs).
func renderTop(ctx context.Context, hc *http.Client, w io.Writer, base, job string) error {
	if job == "" {
		var jobs []coordinator.JobSummary
		if err := fetchJSON(ctx, hc, base+"/api/jobs", &jobs); err != nil {
			return err
		}
		for _, j := range jobs {
			if j.State == "RUNNING" {
				job = j.Name
				break
			}
		}
		if job == "" {
			writeJobList(w, jobs)
			return nil
		}
	}
	var d coordinator.JobDetail
	if err := fetchJSON(ctx, hc, base+"/api/jobs/"+url.PathEscape(job), &d); err != nil {
		return err
	}
	writeTop(w, &d)
	return nil
}

func writeJobList(w io.Writer, jobs []coordinator.JobSummary) {
	if len(jobs) == 0 {
		fmt.Fprintln(w, "no jobs")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTATE\tSTEP\tTOK/S\tMFU\tRESTARTS\tMESSAGE")
	for _, j := range jobs {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%.0f\t%s\t%d\t%s\n", j.Name, j.State, j.Step, j.TotalSteps, j.TokensPerSec, pct(j.MFU), j.Restarts, j.Message)
	}
	tw.Flush()
}

func pct(v float64) string {
	if v == 0 {
		return "-"
	}
	if v < 0.01 {
		return fmt.Sprintf("%.2g%%", 100*v)
	}
	return fmt.Sprintf("%.1f%%", 100*v)
}

func ms(s float64) string { return fmt.Sprintf("%.1fms", 1e3*s) }

// writeTop renders a job's per-rank view: slowest rank first.
func writeTop(w io.Writer, d *coordinator.JobDetail) {
	eta := "-"
	if d.ETASeconds > 0 {
		eta = (time.Duration(d.ETASeconds) * time.Second).String()
	}
	val := ""
	if d.ValStep > 0 {
		val = fmt.Sprintf("  val loss %.4f (step %d)", d.ValLoss, d.ValStep)
	}
	fmt.Fprintf(w, "%s  %s  gen %d  step %d/%d (%.1f%%)  eta %s  %.0f tok/s  MFU %s of %.1f GFLOP/s  loss %.4f%s  restarts %d\n",
		d.Name, d.State, d.Generation, d.Step, d.TotalSteps, 100*d.Progress, eta, d.TokensPerSec, pct(d.MFU), d.PeakFLOPS/1e9, d.Loss, val, d.Restarts)
	if d.Message != "" {
		fmt.Fprintf(w, "%s\n", d.Message)
	}
	fmt.Fprintln(w)
	rows := append([]coordinator.RankRow(nil), d.Ranks...)
	sort.SliceStable(rows, func(a, b int) bool { return rows[a].Order < rows[b].Order })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "RANK\t(DP,PP,TP)\tADDRESS\tSTEP\tSTEP TIME\tCOMPUTE\tCOMM\tWAIT\tDATA\tSLOWDOWN\tMEMORY\t\t")
	for _, r := range rows {
		flag := ""
		if r.Straggler {
			flag = "STRAGGLER"
		}
		var mem int64
		for _, b := range r.Memory {
			mem += b
		}
		fmt.Fprintf(tw, "%d\t(%d,%d,%d)\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%.1fMiB\t%s\t\n", r.Rank, r.DP, r.PP, r.TP, r.Addr, r.Step,
			ms(r.StepS), ms(r.ComputeS), ms(r.CommS), ms(r.WaitS), ms(r.DataS), r.Slowdown, float64(mem)/(1<<20), flag)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nmean of each rank's latest %d steps; a rank busy (compute + data) > %.1fx the median is a straggler\n",
		coordinator.StragglerWindow, d.StragglerRatio)
}
