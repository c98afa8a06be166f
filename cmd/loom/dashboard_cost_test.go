package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/performance"
	"github.com/chromedp/chromedp"

	"github.com/loomtrain/loom/internal/testnet"
)

// TestDashboardCost measures what an open dashboard page costs the machine
// it runs on: the CPU seconds per second of every Chromium process (the
// browser, its renderer, GPU and utility processes; from /proc) while the
// page follows a live dp=2 job, less the same browser's idle cost on
// about:blank, and the renderer's main-thread split (script, layout,
// style; the DevTools Performance domain). It asserts nothing: it is a
// measurement, run by hand or by the lead in a quiet window:
//
//	LOOM_DASHBOARD_COST=1 go test ./cmd/loom -run TestDashboardCost -v -count=1
//
// LOOM_DASHBOARD_COST_WINDOW (default 40s) is the measured window and
// LOOM_DASHBOARD_COST_QUERY is appended to the page's URL (e.g.
// "?interval=1s").
func TestDashboardCost(t *testing.T) {
	if os.Getenv("LOOM_DASHBOARD_COST") == "" {
		t.Skip("a measurement: set LOOM_DASHBOARD_COST=1 to run it")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (scripts/setup.sh test installs Debian's)")
	}
	window := 40 * time.Second
	if s := os.Getenv("LOOM_DASHBOARD_COST_WINDOW"); s != "" {
		if window, err = time.ParseDuration(s); err != nil {
			t.Fatalf("LOOM_DASHBOARD_COST_WINDOW=%s: %v", s, err)
		}
	}
	const job = "cost"
	base, _ := fixture(t, "")
	src, _ := os.ReadFile(base)
	spec := strings.Replace(string(src), "name: t\n", "name: "+job+"\nparallel: {dp: 2}\n", 1)
	spec = strings.Replace(spec, "steps: 6,", "steps: 1000000, eval_every: 200,", 1)
	spec = strings.Replace(spec, ".bin}\n", ".bin, validation: {fraction: 0.05}}\n", 1)
	specPath := filepath.Join(filepath.Dir(base), "cost.yaml")
	os.WriteFile(specPath, []byte(spec), 0o644)
	addrs := testnet.FreeAddrs(t, 2)
	coord, coordHTTP := addrs[0], addrs[1]
	startLoom(t, "coordinator", "--listen", coord, "--http", coordHTTP)
	// Rank 1 sleeps in every step: ~20 steps/s that leave the cores mostly
	// to the browser, as a real job's steps would be far longer.
	slow := []string{"LOOM_TEST_SLOW_RANK=1:45ms"}
	startLoomEnv(t, slow, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")
	startLoomEnv(t, slow, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--threads", "1")

	ctx, cancel := context.WithTimeout(context.Background(), 3*window+2*time.Minute)
	defer cancel()
	submitJob(t, ctx, specPath, coord)
	page := "http://" + coordHTTP + "/" + os.Getenv("LOOM_DASHBOARD_COST_QUERY")
	until(t, ctx, "the job's first steps", func() (bool, string) {
		var j struct{ Step int64 }
		getJSON(ctx, "http://"+coordHTTP+"/api/jobs/"+job, &j)
		return j.Step > 5, fmt.Sprint(j.Step)
	})

	b := newBrowser(t, ctx, chromium)
	b.open("about:blank")
	proc := chromedp.FromContext(b.ctx).Browser.Process()
	if proc == nil {
		t.Fatal("no browser process")
	}
	time.Sleep(5 * time.Second)
	idle := measureCPU(t, proc.Pid, window/2)
	t.Logf("idle (about:blank): %s", idle)

	b.open(page)
	until(t, ctx, "the page to draw the job", func() (bool, string) {
		n := b.points("chart-loss")
		return n > 0, fmt.Sprintf("%d points", n)
	})
	if _, err := chromedp.Run(b.ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, performance.Enable, performance.EnableParams{})
		return err
	})); err != nil {
		t.Fatalf("Performance.enable: %v", err)
	}
	time.Sleep(10 * time.Second) // past the first full draw
	m0 := pageMetrics(t, b)
	js0 := pageStats(t, b)
	live := measureCPU(t, proc.Pid, window)
	m1 := pageMetrics(t, b)
	js1 := pageStats(t, b)
	draws := int(js1["draws"] - js0["draws"])
	secs := window.Seconds()
	t.Logf("page open (%s): %s", page, live)
	t.Logf("the page's cost: %.1f ms of CPU per second (%.2f%% of one core) over idle; %d draws, %.1f ms each",
		(live.total-idle.total)*1e3/secs, (live.total-idle.total)*100/secs, draws, (live.total-idle.total)*1e3/max(1, float64(draws)))
	var split []string
	for _, k := range []string{"TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration", "LayoutCount", "RecalcStyleCount"} {
		d := m1[k] - m0[k]
		if strings.HasSuffix(k, "Duration") {
			split = append(split, fmt.Sprintf("%s %.1f ms/s", strings.TrimSuffix(k, "Duration"), d*1e3/secs))
		} else {
			split = append(split, fmt.Sprintf("%s %.0f", k, d))
		}
	}
	t.Logf("renderer main thread: %s", strings.Join(split, ", "))
	if n := js1["updates"] - js0["updates"]; n > 0 {
		t.Logf("the page's JavaScript per update: %.2f ms parsing and merging, %.2f ms drawing, of which %.2f ms setting %.1f charts' data",
			(js1["parseMs"]-js0["parseMs"])/n, (js1["drawMs"]-js0["drawMs"])/n, (js1["chartMs"]-js0["chartMs"])/n, (js1["charts"]-js0["charts"])/n)
	}
	b.checkConsole()
}

// cpuUse is the CPU seconds a process tree spent over a window, by
// command name.
type cpuUse struct {
	total  float64
	byName map[string]float64
}

func (c cpuUse) String() string {
	var parts []string
	for n, s := range c.byName {
		parts = append(parts, fmt.Sprintf("%s %.2f s", n, s))
	}
	return fmt.Sprintf("%.2f s of CPU (%s)", c.total, strings.Join(parts, ", "))
}

// measureCPU sums utime + stime of pid and its descendants over d.
func measureCPU(t *testing.T, pid int, d time.Duration) cpuUse {
	t.Helper()
	before := treeCPU(pid)
	time.Sleep(d)
	after := treeCPU(pid)
	c := cpuUse{byName: map[string]float64{}}
	for p, a := range after {
		b := before[p]
		if b.name == "" {
			b.name = a.name
		}
		s := a.secs - b.secs
		c.total += s
		c.byName[a.name] += s
	}
	return c
}

type procCPU struct {
	name string
	secs float64
}

// treeCPU reads /proc/PID/stat of pid and every process below it. The
// renderer's kind (--type=renderer, gpu-process, utility) names it.
func treeCPU(root int) map[int]procCPU {
	const hz = 100 // USER_HZ on Linux
	parent := map[int]int{}
	info := map[int]procCPU{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		name := "browser"
		if cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil {
			// Chromium rewrites its children's command lines into one
			// space-separated string.
			for _, a := range strings.Fields(strings.ReplaceAll(string(cl), "\x00", " ")) {
				if v, ok := strings.CutPrefix(a, "--type="); ok {
					name = v
				}
			}
		}
		parent[pid] = ppid
		info[pid] = procCPU{name: name, secs: (ut + st) / hz}
	}
	out := map[int]procCPU{}
	for pid := range info {
		for p := pid; p > 1; p = parent[p] {
			if p == root {
				out[pid] = info[pid]
				break
			}
		}
	}
	return out
}

// pageStats reads the page's own counters (window.loomStats: updates,
// draws and their JavaScript time); empty for a page without them.
func pageStats(t *testing.T, b *browser) map[string]float64 {
	t.Helper()
	m, err := chromedp.Run(b.ctx, chromedp.Evaluate[map[string]float64](`window.loomStats || {}`))
	if err != nil {
		t.Fatalf("read loomStats: %v", err)
	}
	return m
}

// pageMetrics reads the DevTools Performance domain's metrics of the page.
func pageMetrics(t *testing.T, b *browser) map[string]float64 {
	t.Helper()
	m, err := chromedp.Run(b.ctx, func(ctx context.Context, tg *chromedp.Target) (map[string]float64, error) {
		res, err := cdp.Call(ctx, tg, performance.GetMetrics, cdp.Empty{})
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, m := range res.Metrics {
			out[m.Name] = m.Value
		}
		return out, nil
	})
	if err != nil {
		t.Fatalf("Performance.getMetrics: %v", err)
	}
	return m
}
