package api

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestElasticDefaultsAreFixedSize(t *testing.T) {
	s, err := ParseSpec([]byte("data: {path: a}\nparallel: {dp: 2}\ntrain: {global_batch: 8, micro_batch: 2}\n"), "job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if lo, hi := s.DPRange(); lo != 2 || hi != 2 {
		t.Errorf("DPRange %d–%d, want 2–2", lo, hi)
	}
	if got := fmt.Sprint(s.ReachableDP()); got != "[2]" {
		t.Errorf("ReachableDP %s", got)
	}
	e := s.Elastic
	if e.MaxRestarts != DefaultMaxRestarts || e.StepTimeout != DefaultStepTimeout || e.SetupTimeout != DefaultSetupTimeout ||
		e.CheckpointTimeout != DefaultCheckpointTimeout || e.RendezvousTimeout != DefaultRendezvousTimeout {
		t.Errorf("elastic defaults %+v", e)
	}
}

func TestElasticReachableSizes(t *testing.T) {
	src := "data: {path: a}\nparallel: {dp: 4, tp: 2}\nmodel: {n_heads: 4, n_kv_heads: 2}\ntrain: {global_batch: 12, micro_batch: 1}\n" +
		"elastic: {min_dp: 2, max_dp: 6, max_restarts: 10, step_timeout: 5s, setup_timeout: 1m}\n"
	s, err := ParseSpec([]byte(src), "job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(s.ReachableDP()); got != "[2 3 4 6]" {
		t.Errorf("ReachableDP %s, want [2 3 4 6] (12 windows: 5 does not divide)", got)
	}
	if got := fmt.Sprint(s.WorldSizes()); got != "[4 6 8 12]" {
		t.Errorf("WorldSizes %s", got)
	}
	if s.Elastic.StepTimeout != 5*time.Second || s.Elastic.SetupTimeout != time.Minute || s.Elastic.MaxRestarts != 10 {
		t.Errorf("parsed %+v", s.Elastic)
	}
	three := s.ForDP(3)
	if three.Parallel.DP != 3 || three.AccumulationSteps() != 4 || s.Parallel.DP != 4 || s.AccumulationSteps() != 3 {
		t.Errorf("ForDP(3): dp %d accumulation %d (original dp %d, %d)", three.Parallel.DP, three.AccumulationSteps(), s.Parallel.DP, s.AccumulationSteps())
	}
	if err := three.Validate(); err != nil {
		t.Errorf("ForDP(3) does not validate: %v", err)
	}
	if !strings.Contains(s.DescribeElastic(), "elastic 2–6 (reachable: 2, 3, 4, 6)") {
		t.Errorf("DescribeElastic: %s", s.DescribeElastic())
	}
	// The spec round-trips through YAML (workers get it re-encoded in
	// checkpoints): durations stay durations.
	b, err := s.YAML()
	if err != nil {
		t.Fatal(err)
	}
	var back JobSpec
	if err := yaml.Unmarshal(b, &back); err != nil || back.Elastic != s.Elastic {
		t.Errorf("YAML round trip: %+v, %v\n%s", back.Elastic, err, b)
	}
}

func TestElasticErrors(t *testing.T) {
	base := "data: {path: a}\nparallel: {dp: 4}\ntrain: {global_batch: 8, micro_batch: 2}\n"
	cases := []struct {
		name, elastic string
		want          []string
	}{
		{"max unreachable", "{min_dp: 1, max_dp: 5}", []string{"elastic.max_dp", "got 5", "not a reachable dp size", "reachable in [1, 5]: 1, 2, 4"}},
		{"min unreachable", "{min_dp: 3, max_dp: 4}", []string{"elastic.min_dp", "got 3", "reachable in [3, 4]: 4"}},
		{"min above dp", "{min_dp: 5, max_dp: 8}", []string{"elastic.min_dp", "must not exceed parallel.dp (4)"}},
		{"max below dp", "{min_dp: 1, max_dp: 2}", []string{"elastic.max_dp", "must be at least parallel.dp (4)"}},
		{"negative", "{max_restarts: -1, min_dp: -2}", []string{"elastic.max_restarts", "elastic.min_dp"}},
		{"timeout", "{step_timeout: 0s}", []string{"elastic.step_timeout", "positive duration"}},
		{"timeout type", "{step_timeout: soon}", []string{"soon"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(base+"elastic: "+c.elastic+"\n"), "job.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	// Reachable sizes skip those the batch cannot split over.
	s, err := ParseSpec([]byte(base+"elastic: {min_dp: 1, max_dp: 4}\n"), "job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(s.ReachableDP()); got != "[1 2 4]" {
		t.Errorf("ReachableDP %s, want [1 2 4]", got)
	}
}
