package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/loomtrain/loom/deploy/grafana"

	"github.com/loomtrain/loom/internal/testnet"
)

// artifactDir is where tests leave screenshots: $LOOM_TEST_ARTIFACTS, else
// a loom-test-artifacts directory in the system's temporary directory.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("LOOM_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "loom-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startLoomEnv is startLoom with extra environment, returning the process
// (so a test can stop and continue it).
func startLoomEnv(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "LOOM_TEST_MAIN=1"), env...)
	logf, _ := os.Create(filepath.Join(t.TempDir(), "log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			logf.Seek(0, 0)
			b, _ := io.ReadAll(logf)
			t.Logf("loom %s:\n%s", strings.Join(args, " "), b)
		}
	})
	return cmd
}

func getJSON(ctx context.Context, u string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// until polls ok every 200 ms until it holds or ctx ends.
func until(t *testing.T, ctx context.Context, what string, ok func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		done, state := ok()
		if done {
			return
		}
		last = state
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s (last: %s)", what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDashboardsLive runs a real dp=2 job (a coordinator and two worker
// processes, rank 1 slowed on purpose with LOOM_TEST_SLOW_RANK) while a
// headless Chromium watches the coordinator's page and a real Prometheus
// scrapes it with Loom's rules loaded (thresholds shortened):
//   - the page's charts have points and grow, the per-rank view has one
//     row per rank, rank 1 is flagged as the straggler, the console stays
//     free of errors; screenshots of the live, straggler and finished
//     views are saved (artifactDir);
//   - every query of deploy/grafana's dashboard returns data;
//   - stopping both workers (SIGSTOP: a hung job) fires LoomJobStalled.
func TestDashboardsLive(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and a browser")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (scripts/setup.sh test installs Debian's)")
	}
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (scripts/setup.sh test installs Debian's)")
	}
	const job, steps = "dash", 900
	base, _ := fixture(t, "")
	src, _ := os.ReadFile(base)
	spec := strings.Replace(string(src), "name: t\n", "name: "+job+"\nparallel: {dp: 2}\n", 1)
	spec = strings.Replace(spec, "steps: 6,", "steps: "+strconv.Itoa(steps)+", eval_every: 100,", 1)
	spec = strings.Replace(spec, ".bin}\n", ".bin, validation: {fraction: 0.05}}\n", 1) // loom_val_loss
	spec = strings.Replace(spec, "checkpoint: {dir: ", "checkpoint: {every: 150, dir: ", 1)
	specPath := filepath.Join(filepath.Dir(base), "dash.yaml")
	os.WriteFile(specPath, []byte(spec), 0o644)

	addrs := testnet.FreeAddrs(t, 6) // every port this test's processes bind, in one call (see testnet.FreeAddrs)
	coord, coordHTTP, etcdAddr, promAddr, late, lateHTTP := addrs[0], addrs[1], addrs[2], addrs[3], addrs[4], addrs[5]
	// A long TTL: the stall stage stops the workers, and their leases must
	// outlive it (a hung job, not a lost one).
	startLoom(t, "coordinator", "--listen", coord, "--http", coordHTTP, "--ttl", "40s", "--etcd-listen", etcdAddr)
	slow := []string{"LOOM_TEST_SLOW_RANK=1:25ms"}
	w1 := startLoomEnv(t, slow, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")
	w2 := startLoomEnv(t, slow, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")

	// Prometheus with the generated scrape config and short-threshold rules.
	dir := t.TempDir()
	cfg, err := grafana.ScrapeConfig([]string{coordHTTP}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := grafana.RulesYAML(grafana.RuleOptions{StallAfter: 3 * time.Second, StallFor: time.Second,
		StragglerFor: time.Second, RestartWindow: time.Minute, EvaluationInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, grafana.ScrapeFile), cfg, 0o644)
	os.WriteFile(filepath.Join(dir, grafana.RulesFile), rules, 0o644)
	pcmd := exec.Command(prom, "--config.file="+filepath.Join(dir, grafana.ScrapeFile),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr)
	plog, _ := os.Create(filepath.Join(dir, "prom.log"))
	pcmd.Stdout, pcmd.Stderr = plog, plog
	if err := pcmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { pcmd.Process.Kill(); pcmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	submitJob(t, ctx, specPath, coord)
	start := time.Now()
	page := "http://" + coordHTTP + "/"
	type jobJSON struct {
		State string `json:"state"`
		Step  int64  `json:"step"`
	}
	jobState := func() jobJSON {
		var j jobJSON
		getJSON(ctx, page+"api/jobs/"+job, &j)
		return j
	}
	until(t, ctx, "the job's first steps", func() (bool, string) { j := jobState(); return j.Step > 5, fmt.Sprint(j) })

	// The browser.
	b := newBrowser(t, ctx, chromium)
	b.open(page)
	eval, points, screenshot := b.eval, b.points, b.screenshot
	charts := []string{"chart-loss", "chart-throughput", "chart-ranks", "chart-split"}
	until(t, ctx, "the page to select the job and draw its charts", func() (bool, string) {
		n := points("chart-loss")
		return n > 0, fmt.Sprintf("%d points", n)
	})
	first := map[string]int{}
	for _, c := range charts {
		first[c] = points(c)
		if first[c] == 0 {
			t.Errorf("chart %s has no points", c)
		}
	}
	until(t, ctx, "every chart to grow without a reload", func() (bool, string) {
		var s []string
		for _, c := range charts {
			if points(c) <= first[c] {
				s = append(s, fmt.Sprintf("%s %d", c, points(c)))
			}
		}
		return len(s) == 0, strings.Join(s, ", ")
	})
	// The job validates every 100 steps: the loss chart draws those points
	// beside the training loss, and the card shows the latest.
	until(t, ctx, "validation loss on the loss chart", func() (bool, string) {
		n := eval(`+(document.getElementById("chart-loss").dataset.valPoints || 0)`)
		return n > 0, fmt.Sprintf("%d validation points", n)
	})
	if s := b.evalString(`document.querySelector("#chart-loss .u-legend").textContent`); !strings.Contains(s, "validation loss") {
		t.Errorf("the loss chart's legend %q has no validation loss", s)
	}
	if s := b.evalString(`document.querySelector('[data-card="validation loss"] .value').textContent`); !strings.Contains(s, "(step ") {
		t.Errorf("validation loss card %q", s)
	}
	if n := eval(`document.querySelectorAll("#ranks tbody tr").length`); n != 2 {
		t.Errorf("per-rank view has %d rows, want one per rank (2)", n)
	}
	until(t, ctx, "rank 1 flagged as the straggler", func() (bool, string) {
		ok := eval(`document.querySelectorAll('#ranks tbody tr.straggler[data-rank="1"]').length`) == 1 &&
			eval(`document.querySelectorAll('#ranks tbody tr.straggler').length`) == 1
		return ok, "straggler rows: " + strconv.Itoa(eval(`document.querySelectorAll('#ranks tbody tr.straggler').length`))
	})
	if eval(`document.querySelector('#ranks tbody tr').dataset.rank === "1" ? 1 : 0`) != 1 {
		t.Errorf("the slowest rank (1) is not listed first")
	}
	screenshot("dashboard-live.png")
	// `loom top` shows the same view in a terminal.
	var top strings.Builder
	if err := dispatch(ctx, &cmdEnv{stdout: &top, stderr: &top}, []string{"top", job, "--coordinator", coord, "--once"}); err != nil {
		t.Fatalf("loom top: %v\n%s", err, top.String())
	}
	lines := strings.Split(top.String(), "\n")
	var rankLines []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 2 && strings.HasPrefix(f[1], "(") && f[0] != "RANK" {
			rankLines = append(rankLines, l)
		}
	}
	if len(rankLines) != 2 || !strings.HasPrefix(strings.TrimSpace(rankLines[0]), "1 ") || !strings.Contains(rankLines[0], "STRAGGLER") ||
		strings.Contains(rankLines[1], "STRAGGLER") {
		t.Errorf("loom top: want rank 1 first and flagged, rank 0 unflagged:\n%s", top.String())
	}
	if !strings.Contains(top.String(), "val loss ") {
		t.Errorf("loom top shows no validation loss:\n%s", top.String())
	}
	b.screenshotOf("#ranks", "dashboard-straggler.png")

	// Every query of the Grafana dashboard returns data from Prometheus.
	dash, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", grafana.DashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	queries, err := grafana.Queries(dash)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range queries {
		// Restarts are not staged here: that annotation must only run.
		mustHaveData := !strings.Contains(q, "loom_job_restarts_total") || !strings.Contains(q, "changes(")
		e := grafana.Expand(q, job, "15s")
		until(t, ctx, "data for the dashboard query "+e, func() (bool, string) {
			n, err := promRange(ctx, promAddr, e, start)
			if err != nil {
				return false, err.Error()
			}
			return n > 0 || !mustHaveData, fmt.Sprintf("%d series", n)
		})
	}

	// The coordinator exports every metric docs/metrics.md documents for it.
	checkDocumentedMetrics(t, ctx, page+"metrics")

	// Stage a stall: stop both workers, see LoomJobStalled fire, go on.
	for _, w := range []*exec.Cmd{w1, w2} {
		w.Process.Signal(syscall.SIGSTOP)
	}
	until(t, ctx, "LoomJobStalled to fire", func() (bool, string) {
		var r struct {
			Data struct {
				Alerts []struct {
					Labels map[string]string `json:"labels"`
					State  string            `json:"state"`
				} `json:"alerts"`
			} `json:"data"`
		}
		if err := getJSON(ctx, "http://"+promAddr+"/api/v1/alerts", &r); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, a := range r.Data.Alerts {
			seen = append(seen, a.Labels["alertname"]+"="+a.State)
			if a.Labels["alertname"] == "LoomJobStalled" && a.Labels["job"] == job && a.State == "firing" {
				return true, ""
			}
		}
		return false, strings.Join(seen, " ")
	})
	for _, w := range []*exec.Cmd{w1, w2} {
		w.Process.Signal(syscall.SIGCONT)
	}

	// The finished job keeps its page.
	until(t, ctx, "the job to finish", func() (bool, string) { j := jobState(); return j.State == "SUCCEEDED", fmt.Sprint(j) })
	until(t, ctx, "the page to show the finished job", func() (bool, string) {
		s := b.evalString(`document.getElementById("job-state").textContent`)
		return s == "SUCCEEDED", s
	})
	if n := eval(`document.querySelectorAll("#events li.checkpoint").length`); n == 0 {
		t.Errorf("no checkpoint events listed for a job checkpointing every 150 steps")
	}
	screenshot("dashboard-finished.png")

	// A coordinator started now (a standby taking over after the leader
	// went) shows the same history, loaded from what the leader persisted.
	startLoom(t, "coordinator", "--listen", late, "--http", lateHTTP, "--etcd", "http://"+etcdAddr, "--ttl", "40s")
	type histJSON struct {
		Points struct {
			Step []int64   `json:"step"`
			Loss []float64 `json:"loss"`
		} `json:"points"`
		Ranks  []json.RawMessage `json:"ranks"`
		Events []json.RawMessage `json:"events"`
	}
	var want histJSON
	if err := getJSON(ctx, page+"api/jobs/"+job+"/history", &want); err != nil {
		t.Fatal(err)
	}
	until(t, ctx, "the late coordinator to show the leader's history", func() (bool, string) {
		var got histJSON
		if err := getJSON(ctx, "http://"+lateHTTP+"/api/jobs/"+job+"/history", &got); err != nil {
			return false, err.Error()
		}
		same := fmt.Sprint(got.Points) == fmt.Sprint(want.Points) && len(got.Ranks) == len(want.Ranks) && len(got.Events) == len(want.Events)
		return same, fmt.Sprintf("%d points, %d ranks, %d events; the leader has %d, %d, %d",
			len(got.Points.Step), len(got.Ranks), len(got.Events), len(want.Points.Step), len(want.Ranks), len(want.Events))
	})
	b.checkConsole()
}

// submitJob submits the job spec at path to the coordinator at coord,
// retrying while the coordinator is still starting.
func submitJob(t *testing.T, ctx context.Context, path, coord string) {
	t.Helper()
	var out, errb strings.Builder
	for {
		err := dispatch(ctx, &cmdEnv{stdout: &out, stderr: &errb}, []string{"submit", path, "--coordinator", coord, "--detach"})
		if err == nil {
			return
		}
		if ctx.Err() != nil || !strings.Contains(err.Error(), coord) {
			t.Fatalf("submit: %v\n%s\n%s", err, out.String(), errb.String())
		}
		out.Reset()
		time.Sleep(200 * time.Millisecond)
	}
}

// browser is a headless Chromium driven over the DevTools protocol, with
// the console's errors and exceptions collected.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	problems []string
}

// newBrowser starts Debian's chromium (headless, a fresh profile, no
// network services of its own); it stops when ctx ends or the test does.
func newBrowser(t *testing.T, ctx context.Context, chromium string) *browser {
	t.Helper()
	actx, acancel := chromedp.NewExecAllocator(ctx, chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1900))
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(func() { bcancel(); acancel() })
	return &browser{t: t, ctx: bctx}
}

// open navigates to u and collects the page's console errors from then on.
func (b *browser) open(u string) {
	b.t.Helper()
	messages := chromedp.Console(b.ctx)
	if err := chromedp.Do(b.ctx, chromedp.Navigate(u)); err != nil {
		b.t.Fatalf("open %s: %v", u, err)
	}
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				b.mu.Lock()
				b.problems = append(b.problems, fmt.Sprintf("%s %s:%d: %s", m.Type, m.URL, m.Line+1, m.Text))
				b.mu.Unlock()
			}
		}
	}()
}

func (b *browser) eval(js string) int {
	b.t.Helper()
	n, err := chromedp.Run(b.ctx, chromedp.Evaluate[int](js))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return n
}

func (b *browser) evalString(js string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return s
}

// points is how many points the page says chart id draws.
func (b *browser) points(id string) int {
	return b.eval(`+(document.getElementById("` + id + `").dataset.points || 0)`)
}

// screenshot saves the whole page as name in artifactDir.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	b.save(name, png)
}

// screenshotOf saves the element sel as name in artifactDir.
func (b *browser) screenshotOf(sel, name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.Screenshot(chromedp.CSS(sel)))
	if err != nil {
		b.t.Errorf("screenshot of %s: %v", sel, err)
		return
	}
	b.save(name, png)
}

func (b *browser) save(name string, png []byte) {
	b.t.Helper()
	p := filepath.Join(artifactDir(b.t), name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", p)
}

// checkConsole fails the test for every error the page logged.
func (b *browser) checkConsole() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.problems) > 0 {
		b.t.Errorf("the page logged errors:\n%s", strings.Join(b.problems, "\n"))
	}
}

// checkDocumentedMetrics fails for each metric of docs/metrics.md's
// tables (workers-only ones aside) that the coordinator at u does not
// export, and for missing Go runtime and process collectors.
func checkDocumentedMetrics(t *testing.T, ctx context.Context, u string) {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(l, "| `loom_") || strings.Contains(l, "Workers only") {
			continue
		}
		want = append(want, strings.Trim(strings.Fields(l)[1], "`"))
	}
	if len(want) < 30 {
		t.Fatalf("found %d metrics in docs/metrics.md's tables", len(want))
	}
	want = append(want, "go_goroutines", "process_resident_memory_bytes")
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	have := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "# TYPE ") {
			have[strings.Fields(l)[2]] = true
		}
	}
	for _, m := range want {
		if !have[m] {
			t.Errorf("docs/metrics.md documents %s but the coordinator does not export it", m)
		}
	}
}

// promRange runs a range query over [start, now] at a 1 s resolution and
// returns how many series have points.
func promRange(ctx context.Context, addr, q string, start time.Time) (int, error) {
	v := url.Values{"query": {q}, "start": {strconv.FormatInt(start.Unix(), 10)},
		"end": {strconv.FormatInt(time.Now().Unix()+1, 10)}, "step": {"1"}}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Values [][]any `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/api/v1/query_range?"+v.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("prometheus: %s", r.Error)
	}
	n := 0
	for _, s := range r.Data.Result {
		if len(s.Values) > 0 {
			n++
		}
	}
	return n, nil
}

// TestDashboardTimeline runs a real pipelined job (pp=2, ZB-H1: two worker
// processes, 8 micro-batches) while headless Chromium has its page open:
// while it runs the timeline panel names the schedule and says why there
// is no timeline yet; once the ranks have saved theirs at the end of the
// run the page draws it without a reload — one row per rank with forward,
// backward and weight-gradient boxes labelled by micro-batch, the measured
// bubble, and a link to the merged Chrome trace, which the coordinator
// serves. The console stays free of errors; a screenshot is saved.
func TestDashboardTimeline(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and a browser")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (scripts/setup.sh test installs Debian's)")
	}
	const job = "pipe"
	spec, _ := tpFixture(t, job, "parallel: {pp: 2, schedule: zb-h1}\n")
	src, _ := os.ReadFile(spec)
	y := strings.Replace(string(src), "steps: 10", "steps: 200", 1)
	os.WriteFile(spec, []byte(strings.Replace(y, "micro_batch: 2", "micro_batch: 1", 1)), 0o644)

	addrs := testnet.FreeAddrs(t, 2)
	coord, coordHTTP := addrs[0], addrs[1]
	startLoom(t, "coordinator", "--listen", coord, "--http", coordHTTP)
	startLoom(t, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")
	startLoom(t, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	b := newBrowser(t, ctx, chromium)
	b.open("about:blank")
	submitJob(t, ctx, spec, coord)
	page := "http://" + coordHTTP + "/"
	state := func() string {
		var j struct{ State string }
		getJSON(ctx, page+"api/jobs/"+job, &j)
		return j.State
	}
	until(t, ctx, "the job to be scheduled", func() (bool, string) { s := state(); return s == "RUNNING" || s == "SUCCEEDED", s })
	b.open(page + "#job=" + job)
	info := func() string { return b.evalString(`document.getElementById("timeline-info").textContent`) }
	until(t, ctx, "the timeline panel", func() (bool, string) {
		return b.eval(`document.getElementById("timeline-section").hidden ? 0 : 1`) == 1, info()
	})
	if s := info(); !strings.Contains(s, "zb-h1, pp 2") || !strings.Contains(s, "8 micro-batches") {
		t.Errorf("timeline panel: %q, want the schedule and its shape", s)
	}
	if strings.Contains(info(), "no timeline yet") {
		t.Logf("the page opened while the job ran: %q", info())
	}
	until(t, ctx, "the job to finish", func() (bool, string) { s := state(); return s == "SUCCEEDED", s })
	until(t, ctx, "the page to draw the timeline of every rank", func() (bool, string) {
		n := b.eval(`document.querySelectorAll("#timeline g.tl-rank").length`)
		return n == 2, fmt.Sprintf("%d rank rows; %s", n, info())
	})
	for r := 0; r < 2; r++ {
		row := fmt.Sprintf(`#timeline g.tl-rank[data-rank="%d"]`, r)
		for _, kind := range []string{"F", "B", "W"} {
			if n := b.eval(`document.querySelectorAll('` + row + ` rect.tl-` + kind + `').length`); n != 8 {
				t.Errorf("rank %d: %d %s boxes, want one per micro-batch (8)", r, n, kind)
			}
		}
		if n := b.eval(`document.querySelectorAll('` + row + ` rect.tl-send, ` + row + ` rect.tl-recv').length`); n == 0 {
			t.Errorf("rank %d: no send or receive boxes", r)
		}
		// Every pass names its micro-batch (its tooltip; its text where the
		// box is wide enough).
		if n := b.eval(`[...document.querySelectorAll('` + row + ` rect.tl-F title')].filter(e => /micro-batch [0-7]/.test(e.textContent)).length`); n != 8 {
			t.Errorf("rank %d: %d forward boxes name their micro-batch, want 8", r, n)
		}
		t.Logf("rank %d: %d boxes wide enough for their label", r,
			b.eval(`[...document.querySelectorAll('`+row+` text.tl-text')].filter(e => /^[FBW][0-7]$/.test(e.textContent)).length`))
	}
	if s := info(); !strings.Contains(s, "bubble") || !strings.Contains(s, "measured") || !strings.Contains(s, "Chrome trace") {
		t.Errorf("timeline info %q: want the measured bubble and the trace link", s)
	}
	href := b.evalString(`document.querySelector('#timeline-info a[download]').href`)
	var trace struct {
		TraceEvents []json.RawMessage `json:"traceEvents"`
	}
	if err := getJSON(ctx, href, &trace); err != nil || len(trace.TraceEvents) == 0 {
		t.Errorf("the page's Chrome trace link %s: %v, %d events", href, err, len(trace.TraceEvents))
	}
	b.screenshotOf("#timeline-section", "dashboard-timeline.png")
	b.checkConsole()
}
