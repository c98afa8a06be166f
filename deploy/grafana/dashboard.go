// Package grafana generates Loom's monitoring configuration from typed Go
// code: the Grafana dashboard (grafana-foundation-sdk), the Prometheus
// scrape config and the recording and alerting rules. `make grafana`
// (go run ./deploy/grafana/gen) writes them into this directory; a test
// checks the committed files are current.
package grafana

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// DashboardFile, RulesFile and ScrapeFile are the generated files' names.
const (
	DashboardFile = "loom-dashboard.json"
	RulesFile     = "loom-rules.yml"
	ScrapeFile    = "prometheus.yml"
)

// DashboardUID is the dashboard's fixed Grafana UID (links stay valid
// across imports).
const DashboardUID = "loom-training"

var dsRef = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend).Datasource(dsRef)
}

// sel is the label selector of the chosen job.
const sel = `job=~"$job"`

func ts(title, unit, desc string, h, w uint32, qs ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Height(h).Span(w).Datasource(dsRef).
		Legend(common.NewVizLegendOptionsBuilder().DisplayMode(common.LegendDisplayModeList).Placement(common.LegendPlacementBottom).ShowLegend(true))
	for _, q := range qs {
		p.WithTarget(q)
	}
	return p
}

func st(title, unit, desc string, q *prometheus.DataqueryBuilder) *stat.PanelBuilder {
	return stat.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Height(4).Span(4).Datasource(dsRef).
		GraphMode(common.BigValueGraphModeArea).WithTarget(q)
}

// perStep is the per-step seconds of one part of the ranks' step time.
func perStep(counter string) string {
	return fmt.Sprintf(`sum by (job, rank) (rate(%s{%s}[$__rate_interval])) / sum by (job, rank) (rate(loom_rank_steps_total{%s}[$__rate_interval]))`, counter, sel, sel)
}

// Dashboard builds the Grafana dashboard: the same panels as the
// coordinator's page, over Loom's Prometheus metrics (docs/metrics.md).
func Dashboard() (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder("Loom training").
		Uid(DashboardUID).
		Tags([]string{"loom", "training"}).
		Refresh("10s").
		Time("now-1h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("job").Label("Job").Datasource(dsRef).
			Query(dashboard.StringOrMap{String: cog.ToPtr("label_values(loom_job_step, job)")}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).Multi(true).IncludeAll(true).AllValue(".*")).
		Annotation(dashboard.NewAnnotationQueryBuilder().Name("Checkpoints").Datasource(dsRef).Enable(true).IconColor("green").
			Expr(`changes(loom_checkpoint_saves_total{` + sel + `}[1m]) > 0`).TitleFormat("checkpoint {{job}}")).
		Annotation(dashboard.NewAnnotationQueryBuilder().Name("Restarts").Datasource(dsRef).Enable(true).IconColor("red").
			Expr(`changes(loom_job_restarts_total{` + sel + `}[1m]) > 0`).TitleFormat("restart {{job}}: {{reason}}"))

	b.WithRow(dashboard.NewRowBuilder("Jobs")).
		WithPanel(st("Step", "none", "Last step every rank reported (loom_job_step) of the target (loom_job_target_steps).",
			query(`max by (job) (loom_job_step{`+sel+`})`, "{{job}}"))).
		WithPanel(st("Progress", "percentunit", "loom_job_step ÷ loom_job_target_steps.",
			query(`max by (job) (loom_job_step{`+sel+`}) / max by (job) (loom_job_target_steps{`+sel+`})`, "{{job}}"))).
		WithPanel(st("ETA", "s", "Time to the last step at the recent pace.",
			query(`max by (job) (loom_job_eta_seconds{`+sel+`})`, "{{job}}"))).
		WithPanel(st("Tokens/s", "short", "Job-wide throughput (latest 16 steps).",
			query(`sum by (job) (loom_job_tokens_per_second{`+sel+`})`, "{{job}}"))).
		WithPanel(st("MFU", "percentunit", "Model FLOPs utilization against loom_job_peak_flops (the ranks' measured FMA peak).",
			query(`max by (job) (loom_job_mfu_ratio{`+sel+`})`, "{{job}}"))).
		WithPanel(st("Restarts", "none", "Generations that ended early in this run, all reasons.",
			query(`sum by (job) (loom_job_restarts_total{`+sel+`})`, "{{job}}")))

	b.WithRow(dashboard.NewRowBuilder("Training")).
		WithPanel(ts("Loss", "none", "Training loss of the last step, and validation loss of the last validation pass (train.eval_every; absent without validation).", 8, 8,
			query(`max by (job) (loom_job_loss{`+sel+`})`, "{{job}} train"),
			query(`max by (job) (loom_val_loss{`+sel+`})`, "{{job}} validation"))).
		WithPanel(ts("Learning rate", "none", "Learning rate of the last step (rank 0's report).", 8, 8,
			query(`max by (job) (loom_learning_rate{`+sel+`, rank="0"})`, "{{job}}"))).
		WithPanel(ts("Throughput", "short", "Tokens per second, and MFU.", 8, 8,
			query(`sum by (job) (loom_job_tokens_per_second{`+sel+`})`, "{{job}} tokens/s"))).
		WithPanel(ts("MFU", "percentunit", "Model FLOP/s ÷ the ranks' summed measured peak (loom_job_peak_flops).", 8, 12,
			query(`max by (job) (loom_job_mfu_ratio{`+sel+`})`, "{{job}}"))).
		WithPanel(ts("Peak used for MFU", "flops", "The sum of the ranks' measured float32 FMA peaks.", 8, 12,
			query(`max by (job) (loom_job_peak_flops{`+sel+`})`, "{{job}}")))

	b.WithRow(dashboard.NewRowBuilder("Ranks")).
		WithPanel(ts("Compute per step", "s", "Seconds of each step the rank computed.", 8, 6,
			query(perStep("loom_rank_compute_seconds_total"), "{{job}} rank {{rank}}"))).
		WithPanel(ts("Exposed communication per step", "s", "Communication not hidden behind compute, waiting excluded.", 8, 6,
			query(perStep("loom_rank_exposed_comm_seconds_total"), "{{job}} rank {{rank}}"))).
		WithPanel(ts("Waiting for slower ranks per step", "s", "Time in collectives spent waiting for the slowest rank.", 8, 6,
			query(perStep("loom_rank_wait_seconds_total"), "{{job}} rank {{rank}}"))).
		WithPanel(ts("Data-loader wait per step", "s", "Time spent filling batches.", 8, 6,
			query(perStep("loom_rank_data_wait_seconds_total"), "{{job}} rank {{rank}}"))).
		WithPanel(ts("Slowdown vs the median rank", "none", "Busy time (compute + data wait) ÷ the median rank's; above 1.2 the rank is a straggler.", 8, 12,
			query(`max by (job, rank) (loom_rank_slowdown_ratio{`+sel+`})`, "{{job}} rank {{rank}}"))).
		WithPanel(table.NewPanelBuilder().Title("Stragglers").Description("Ranks flagged now (loom_rank_straggler = 1), slowest first.").
			Height(8).Span(12).Datasource(dsRef).
			WithTarget(query(`sort_desc(max by (job, rank) (loom_rank_slowdown_ratio{`+sel+`}) and on (job, rank) max by (job, rank) (loom_rank_straggler{`+sel+`}) == 1)`, "").
				Instant().Format(prometheus.PromQueryFormatTable)))

	b.WithRow(dashboard.NewRowBuilder("Memory and checkpoints")).
		WithPanel(ts("Memory per rank", "bytes", "Bytes each rank holds, by kind.", 8, 12,
			query(`max by (job, rank, kind) (loom_rank_memory_bytes{`+sel+`})`, "{{job}} rank {{rank}} {{kind}}").Instant())).
		WithPanel(ts("Checkpoint save time", "s", "Step end → manifest committed, of the last checkpoint.", 8, 6,
			query(`max by (job) (loom_checkpoint_last_save_seconds{`+sel+`})`, "{{job}}"))).
		WithPanel(ts("Checkpoint bytes written", "Bps", "Bytes of committed checkpoints per second, all ranks.", 8, 6,
			query(`sum by (job) (rate(loom_checkpoint_bytes_total{`+sel+`}[$__rate_interval]))`, "{{job}}")))

	b.WithRow(dashboard.NewRowBuilder("Processes")).
		WithPanel(ts("Resident memory", "bytes", "process_resident_memory_bytes of every scraped Loom process.", 8, 8,
			query(`process_resident_memory_bytes{instance=~".+"}`, "{{instance}}"))).
		WithPanel(ts("CPU", "percentunit", "CPU seconds per second of every scraped Loom process.", 8, 8,
			query(`rate(process_cpu_seconds_total{instance=~".+"}[$__rate_interval])`, "{{instance}}"))).
		WithPanel(ts("Goroutines", "none", "go_goroutines of every scraped Loom process.", 8, 8,
			query(`go_goroutines{instance=~".+"}`, "{{instance}}")))
	d, err := b.Build()
	if err != nil {
		return d, err
	}
	// Unique panel ids in layout order (Grafana keys links and state by them).
	id := uint32(1)
	for _, p := range d.Panels {
		switch {
		case p.Panel != nil:
			p.Panel.Id = cog.ToPtr(id)
		case p.RowPanel != nil:
			p.RowPanel.Id = id
		}
		id++
	}
	return d, nil
}

// DashboardJSON is the dashboard as committed (indented JSON).
func DashboardJSON() ([]byte, error) {
	d, err := Dashboard()
	if err != nil {
		return nil, fmt.Errorf("grafana: build dashboard: %w", err)
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Queries returns every PromQL expression in a dashboard's JSON (panel
// targets, annotations and variables), sorted and without duplicates.
func Queries(dashboardJSON []byte) ([]string, error) {
	var doc any
	if err := json.Unmarshal(dashboardJSON, &doc); err != nil {
		return nil, fmt.Errorf("grafana: dashboard JSON: %w", err)
	}
	set := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if s, ok := c.(string); ok && k == "expr" && s != "" {
					set[s] = true
				}
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(doc)
	var out []string
	for q := range set {
		out = append(out, q)
	}
	sort.Strings(out)
	return out, nil
}

var rateInterval = regexp.MustCompile(`\$__rate_interval|\$__interval|\$__range`)

// Expand substitutes Grafana's variables in a query the way Grafana would
// for job (a regular expression) and a rate window, so that it can be sent
// to Prometheus directly.
func Expand(q, job, window string) string {
	q = rateInterval.ReplaceAllString(q, window)
	return regexp.MustCompile(`\$job\b`).ReplaceAllLiteralString(q, regexp.QuoteMeta(job))
}
