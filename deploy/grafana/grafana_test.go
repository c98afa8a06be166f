package grafana

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGeneratedFilesAreCurrent fails when a committed file differs from
// what the generator makes (run `make grafana`).
func TestGeneratedFilesAreCurrent(t *testing.T) {
	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("deploy/grafana/%s is stale (%v): run `make grafana` and commit it", name, err)
		}
	}
}

func TestDashboardQueries(t *testing.T) {
	b, err := DashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	qs, err := Queries(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) < 20 {
		t.Fatalf("%d queries in the dashboard, want ≥ 20:\n%s", len(qs), strings.Join(qs, "\n"))
	}
	for _, q := range qs {
		e := Expand(q, "my-job", "30s")
		if strings.Contains(e, "$") {
			t.Errorf("query %q keeps a variable after expansion: %q", q, e)
		}
	}
	if got := Expand(`x{job=~"$job"}[$__rate_interval]`, "a.b", "1m"); got != `x{job=~"a\.b"}[1m]` {
		t.Errorf("Expand = %q", got)
	}
}

// promtool (Debian's prometheus package) accepts the rules and the scrape
// config, with the committed thresholds and with a test's short ones.
func TestPromtoolChecksRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (scripts/setup.sh test installs Debian's prometheus)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	short, err := RulesYAML(RuleOptions{StallAfter: 3 * time.Second, StallFor: time.Second, StragglerFor: time.Second,
		RestartWindow: time.Minute, EvaluationInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "short.yml"), short, 0o644)
	for _, args := range [][]string{{"check", "rules", RulesFile}, {"check", "rules", filepath.Join(dir, "short.yml")}, {"check", "config", ScrapeFile}} {
		if out, err := exec.CommandContext(ctx, promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
