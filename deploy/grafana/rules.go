package grafana

import (
	"fmt"
	"time"

	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"
)

// RuleOptions are the thresholds of the alerting rules. Tests shorten
// them to stage an alert in seconds.
type RuleOptions struct {
	// StallAfter: a running job whose last step ended longer ago than this
	// is stalled.
	StallAfter time.Duration
	// StallFor, StragglerFor: how long the condition must hold before the
	// alert fires (Prometheus `for:`).
	StallFor     time.Duration
	StragglerFor time.Duration
	// RestartWindow is how far back a restart still alerts.
	RestartWindow time.Duration
	// EvaluationInterval of the rule groups.
	EvaluationInterval time.Duration
}

// DefaultRuleOptions returns the committed rules' thresholds.
func DefaultRuleOptions() RuleOptions {
	return RuleOptions{StallAfter: 10 * time.Minute, StallFor: 2 * time.Minute,
		StragglerFor: 10 * time.Minute, RestartWindow: 15 * time.Minute, EvaluationInterval: 30 * time.Second}
}

// RuleFile is a Prometheus rule file.
type RuleFile struct {
	Groups []RuleGroup `yaml:"groups"`
}

// RuleGroup is one group of rules evaluated together.
type RuleGroup struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval,omitempty"`
	Rules    []Rule `yaml:"rules"`
}

// Rule is a recording rule (Record) or an alerting rule (Alert).
type Rule struct {
	Record      string            `yaml:"record,omitempty"`
	Alert       string            `yaml:"alert,omitempty"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

func dur(d time.Duration) string { return model.Duration(d).String() }

// Rules returns the recording and alerting rules.
func Rules(o RuleOptions) RuleFile {
	busy := `(sum by (job, run, rank) (rate(loom_rank_compute_seconds_total[1m])) + sum by (job, run, rank) (rate(loom_rank_data_wait_seconds_total[1m])))` +
		` / sum by (job, run, rank) (rate(loom_rank_steps_total[1m]))`
	return RuleFile{Groups: []RuleGroup{
		{Name: "loom-recording", Interval: dur(o.EvaluationInterval), Rules: []Rule{
			{Record: "loom:job_tokens_per_second:max", Expr: `max by (job, run) (loom_job_tokens_per_second)`},
			{Record: "loom:job_steps_per_second:rate1m", Expr: `max by (job, run) (rate(loom_rank_steps_total[1m]))`},
			{Record: "loom:rank_busy_seconds_per_step:rate1m", Expr: busy},
			{Record: "loom:rank_wait_fraction:rate1m",
				Expr: `sum by (job, run, rank) (rate(loom_rank_wait_seconds_total[1m])) / sum by (job, run, rank) (rate(loom_rank_step_seconds_total[1m]))`},
			{Record: "loom:rank_exposed_comm_fraction:rate1m",
				Expr: `sum by (job, run, rank) (rate(loom_rank_exposed_comm_seconds_total[1m])) / sum by (job, run, rank) (rate(loom_rank_step_seconds_total[1m]))`},
		}},
		{Name: "loom-alerts", Interval: dur(o.EvaluationInterval), Rules: []Rule{
			{Alert: "LoomJobStalled",
				Expr: fmt.Sprintf(`(time() - max by (job) (loom_job_last_step_timestamp_seconds)) > %d and on (job) max by (job) (loom_job_state{state="JOB_STATE_RUNNING"}) == 1`,
					int(o.StallAfter.Seconds())),
				For: dur(o.StallFor), Labels: map[string]string{"severity": "page"},
				Annotations: map[string]string{
					"summary":     "Loom job {{ $labels.job }} has made no step for {{ $value | humanizeDuration }}",
					"description": "The job is RUNNING but no rank has finished a step for longer than " + dur(o.StallAfter) + ". Check `loom status {{ $labels.job }}` and the workers' logs; a hung worker can be stopped so the job restarts from its last checkpoint.",
				}},
			{Alert: "LoomStraggler",
				Expr: `max by (job, rank) (loom_rank_straggler) == 1`,
				For:  dur(o.StragglerFor), Labels: map[string]string{"severity": "warning"},
				Annotations: map[string]string{
					"summary":     "Rank {{ $labels.rank }} of Loom job {{ $labels.job }} is a straggler",
					"description": "Its compute + data-loader time is more than 1.2× the median rank's, so every other rank waits for it. `loom top {{ $labels.job }}` shows where its time goes.",
				}},
			{Alert: "LoomJobRestarted",
				Expr:   fmt.Sprintf(`sum by (job, reason) (increase(loom_job_restarts_total[%s])) > 0`, dur(o.RestartWindow)),
				Labels: map[string]string{"severity": "warning"},
				Annotations: map[string]string{
					"summary":     "Loom job {{ $labels.job }} restarted ({{ $labels.reason }})",
					"description": "A generation ended early and the job resumed from its latest checkpoint. `loom status {{ $labels.job }}` lists the failures.",
				}},
			{Alert: "LoomLossNotFinite",
				Expr: fmt.Sprintf(`sum by (job) (increase(loom_job_restarts_total{reason="loss_not_finite"}[%s])) > 0 or max by (job) (loom_job_loss != loom_job_loss)`,
					dur(o.RestartWindow)),
				Labels: map[string]string{"severity": "page"},
				Annotations: map[string]string{
					"summary":     "Loom job {{ $labels.job }}: the loss became NaN or infinite",
					"description": "Training diverged. Lower train.lr or check the data, then resume from the last good checkpoint.",
				}},
		}},
	}}
}

// RulesYAML renders a rule file as committed.
func RulesYAML(o RuleOptions) ([]byte, error) {
	b, err := yaml.Marshal(Rules(o))
	if err != nil {
		return nil, err
	}
	return append([]byte("# Generated by `make grafana` (deploy/grafana/rules.go); do not edit.\n"), b...), nil
}

// ScrapeConfig is a Prometheus configuration that scrapes a coordinator
// and workers at targets every interval and loads RulesFile.
func ScrapeConfig(targets []string, interval time.Duration) ([]byte, error) {
	type static struct {
		Targets []string `yaml:"targets"`
	}
	type scrape struct {
		JobName        string   `yaml:"job_name"`
		HonorLabels    bool     `yaml:"honor_labels"`
		ScrapeInterval string   `yaml:"scrape_interval"`
		Static         []static `yaml:"static_configs"`
	}
	cfg := struct {
		Global struct {
			ScrapeInterval     string `yaml:"scrape_interval"`
			EvaluationInterval string `yaml:"evaluation_interval"`
		} `yaml:"global"`
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []scrape `yaml:"scrape_configs"`
	}{RuleFiles: []string{RulesFile}}
	cfg.Global.ScrapeInterval = dur(interval)
	cfg.Global.EvaluationInterval = dur(interval)
	cfg.ScrapeConfigs = []scrape{{JobName: "loom", HonorLabels: true, ScrapeInterval: dur(interval), Static: []static{{Targets: targets}}}}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	head := "# Generated by `make grafana` (deploy/grafana/rules.go); do not edit.\n" +
		"# Scrapes the coordinators (--http) and workers (--http) of a Loom cluster.\n" +
		"# honor_labels keeps Loom's own `job` label (the training job's name) instead\n" +
		"# of the scrape job's. Every coordinator may be listed: only the leader exports\n" +
		"# the job series.\n"
	return append([]byte(head), b...), nil
}

// Files returns every generated file by name, as committed: the
// dashboard, the rules with DefaultRuleOptions and a scrape config for a
// coordinator and two workers on this machine (edit the targets).
func Files() (map[string][]byte, error) {
	d, err := DashboardJSON()
	if err != nil {
		return nil, err
	}
	r, err := RulesYAML(DefaultRuleOptions())
	if err != nil {
		return nil, err
	}
	s, err := ScrapeConfig([]string{"127.0.0.1:8080", "127.0.0.1:9101", "127.0.0.1:9102"}, 15*time.Second)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{DashboardFile: d, RulesFile: r, ScrapeFile: s}, nil
}
