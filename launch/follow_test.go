package launch_test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/launch"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// resumedJob streams a job resumed at step 500 of 1000: steps 501–511,
// 20 ms apart, after a second of scheduling, then its end.
type resumedJob struct {
	loomv1.UnimplementedCoordinatorServer
}

func (resumedJob) Info(context.Context, *loomv1.InfoRequest) (*loomv1.InfoResponse, error) {
	return &loomv1.InfoResponse{Version: "test"}, nil
}

func (resumedJob) Watch(req *loomv1.WatchRequest, s loomv1.Coordinator_WatchServer) error {
	status := func(st loomv1.JobState) error {
		return s.Send(&loomv1.JobEvent{Event: &loomv1.JobEvent_Status{Status: &loomv1.JobStatus{Name: req.Name, State: st}}})
	}
	if err := status(loomv1.JobState_JOB_STATE_PENDING); err != nil {
		return err
	}
	time.Sleep(time.Second) // waiting for workers: not training time
	if err := status(loomv1.JobState_JOB_STATE_RUNNING); err != nil {
		return err
	}
	for step := int64(501); step <= 511; step++ {
		time.Sleep(20 * time.Millisecond)
		if err := s.Send(&loomv1.JobEvent{Event: &loomv1.JobEvent_Progress{Progress: &loomv1.RankProgress{
			Job: req.Name, Steps: []*loomv1.StepStats{{Step: step, StepSeconds: 0.02}}}}}); err != nil {
			return err
		}
	}
	return status(loomv1.JobState_JOB_STATE_STOPPED)
}

// Follow's estimate after a resume is the pace of the steps it saw times
// the steps left — not the time since it started (which includes the
// wait for workers) spread over the step number.
func TestFollowETAAfterResume(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	loomv1.RegisterCoordinatorServer(srv, resumedJob{})
	go srv.Serve(lis)
	defer srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := api.Dial(ctx, lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out strings.Builder
	if _, err := launch.Follow(ctx, c, "r", 1000, &out, true); err != nil {
		t.Fatal(err)
	}
	var last struct {
		Step int64    `json:"step"`
		ETA  *float64 `json:"eta_s"`
	}
	for _, line := range strings.Split(out.String(), "\n") {
		var rec struct {
			Step *int64   `json:"step"`
			ETA  *float64 `json:"eta_s"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Step != nil {
			last.Step, last.ETA = *rec.Step, rec.ETA
		}
	}
	if last.Step != 511 || last.ETA == nil {
		t.Fatalf("last step line: step %d, eta_s %v; output:\n%s", last.Step, last.ETA, out.String())
	}
	// ≥ 20 ms × 489 ≈ 9.8 s; (1.2 s elapsed)/511 × 489 would say ~1.1 s.
	if *last.ETA < 489*0.02*0.9 {
		t.Errorf("eta at step 511 of 1000 after a resume at 500: %.2f s, want ≥ %.1f s", *last.ETA, 489*0.02*0.9)
	}
}
