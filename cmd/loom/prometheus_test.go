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
	"testing"
	"time"

	"github.com/loomtrain/loom/internal/testnet"
)

// startLoom runs the test binary as `loom ARGS...` in the background and
// kills it when the test ends.
func startLoom(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "LOOM_TEST_MAIN=1")
	logf, _ := os.Create(filepath.Join(t.TempDir(), "log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			logf.Seek(0, 0)
			b, _ := io.ReadAll(logf)
			t.Logf("loom %s:\n%s", strings.Join(args, " "), b)
		}
	})
}

// promQuery evaluates an instant PromQL query and returns the first value.
func promQuery(addr, q string) (float64, bool) {
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) == 0 || len(r.Data.Result[0].Value) != 2 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// A real Prometheus (Debian's) scrapes a coordinator and two workers while
// they train a dp=2 job, and sees the documented metrics.
func TestPrometheusScrapesJob(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (scripts/setup.sh test installs Debian's)")
	}
	if testing.Short() {
		t.Skip("starts processes")
	}
	base, _ := fixture(t, "")
	src, _ := os.ReadFile(base)
	job := strings.Replace(string(src), "name: t\n", "name: scraped\nparallel: {dp: 2}\n", 1)
	job = strings.Replace(job, "steps: 6,", "steps: 20,", 1)
	spec := filepath.Join(filepath.Dir(base), "scraped.yaml")
	os.WriteFile(spec, []byte(job), 0o644)

	addrs := testnet.FreeAddrs(t, 5)
	coord, coordHTTP, w1HTTP, w2HTTP, promAddr := addrs[0], addrs[1], addrs[2], addrs[3], addrs[4]
	startLoom(t, "coordinator", "--listen", coord, "--http", coordHTTP, "--ttl", "3s")
	startLoom(t, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--http", w1HTTP, "--threads", "1")
	startLoom(t, "worker", "--coordinator", coord, "--listen", "127.0.0.1:0", "--http", w2HTTP, "--threads", "1")

	dir := t.TempDir()
	cfg := fmt.Sprintf("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: loom\n    honor_labels: true\n    static_configs:\n      - targets: [%q, %q, %q]\n",
		coordHTTP, w1HTTP, w2HTTP)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	pcmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	plog, _ := os.Create(filepath.Join(dir, "prom.log"))
	pcmd.Stdout, pcmd.Stderr = plog, plog
	if err := pcmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { pcmd.Process.Kill(); pcmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out, errb strings.Builder
	// Wait for the coordinator to answer, then submit and follow the job.
	for {
		err = dispatch(ctx, &cmdEnv{stdout: &out, stderr: &errb}, []string{"submit", spec, "--coordinator", coord})
		if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), coord) {
			break
		}
		out.Reset()
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("submit: %v\n%s\n%s", err, out.String(), errb.String())
	}
	want := map[string]float64{
		`loom_workers_registered`:                       2,
		`max(loom_steps_total{job="scraped",rank="0"})`: 20,
		`count(loom_step_duration_seconds_count)`:       1,
		`max(loom_job_generation{job="scraped"})`:       1,
	}
	for q, v := range want {
		for {
			got, ok := promQuery(promAddr, q)
			if ok && got >= v {
				break
			}
			if ctx.Err() != nil {
				b, _ := os.ReadFile(filepath.Join(dir, "prom.log"))
				t.Fatalf("prometheus query %s = %v (ok %v), want %v\n%s", q, got, ok, v, b)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	// Every target is scraped within an interval or two; wait for the workers' series.
	for _, q := range []string{`loom_loss`, `loom_learning_rate`, `loom_grad_norm`, `loom_tokens_per_second`,
		`loom_comm_bytes_total{op="all-reduce"}`, `loom_worker_memory_bytes{kind="params"}`, `loom_worker_memory_bytes{kind="optimizer"}`,
		`loom_worker_link{transport="shm"}`} {
		for {
			v, ok := promQuery(promAddr, "max("+q+")")
			if ok && v > 0 {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("prometheus has no positive %s (got %v, %v)", q, v, ok)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
}
