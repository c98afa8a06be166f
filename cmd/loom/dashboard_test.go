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

	coord, coordHTTP, etcdAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	// A long TTL: the stall stage stops the workers, and their leases must
	// outlive it (a hung job, not a lost one).
	startLoom(t, "coordinator", "--listen", coord, "--http", coordHTTP, "--ttl", "40s", "--etcd-listen", etcdAddr)
	slow := []string{"LOOM_TEST_SLOW_RANK=1:25ms"}
	w1 := startLoomEnv(t, slow, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")
	w2 := startLoomEnv(t, slow, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")

	// Prometheus with the generated scrape config and short-threshold rules.
	promAddr, dir := freeAddr(t), t.TempDir()
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
	var out, errb strings.Builder
	for {
		err = dispatch(ctx, &cmdEnv{stdout: &out, stderr: &errb}, []string{"submit", specPath, "--coordinator", coord, "--detach"})
		if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), coord) {
			break
		}
		out.Reset()
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("submit: %v\n%s\n%s", err, out.String(), errb.String())
	}
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
	actx, acancel := chromedp.NewExecAllocator(ctx, chromedp.ExecPath(chromium), chromedp.Headless, chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1900))
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	var (
		consoleMu sync.Mutex
		problems  []string
	)
	messages := chromedp.Console(bctx)
	if err := chromedp.Do(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
	}
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				consoleMu.Lock()
				problems = append(problems, fmt.Sprintf("%s %s:%d: %s", m.Type, m.URL, m.Line+1, m.Text))
				consoleMu.Unlock()
			}
		}
	}()
	eval := func(js string) int {
		n, err := chromedp.Run(bctx, chromedp.Evaluate[int](js))
		if err != nil {
			t.Fatalf("evaluate %s: %v", js, err)
		}
		return n
	}
	points := func(id string) int { return eval(`+(document.getElementById("` + id + `").dataset.points || 0)`) }
	screenshot := func(name string) {
		b, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		p := filepath.Join(artifactDir(t), name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
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
	if b, err := chromedp.Run(bctx, chromedp.Screenshot(chromedp.CSS("#ranks"))); err == nil {
		os.WriteFile(filepath.Join(artifactDir(t), "dashboard-straggler.png"), b, 0o644)
	}

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
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.getElementById("job-state").textContent`))
		return s == "SUCCEEDED", s
	})
	if n := eval(`document.querySelectorAll("#events li.checkpoint").length`); n == 0 {
		t.Errorf("no checkpoint events listed for a job checkpointing every 150 steps")
	}
	screenshot("dashboard-finished.png")

	// A coordinator started now (a standby taking over after the leader
	// went) shows the same history, loaded from what the leader persisted.
	late, lateHTTP := freeAddr(t), freeAddr(t)
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
	consoleMu.Lock()
	defer consoleMu.Unlock()
	if len(problems) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(problems, "\n"))
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
