package api_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// fakeCoordinator answers with canned results, so the client's error
// mapping is tested without etcd (the real service is tested in worker/).
type fakeCoordinator struct {
	loomv1.UnimplementedCoordinatorServer
}

func (fakeCoordinator) Info(context.Context, *loomv1.InfoRequest) (*loomv1.InfoResponse, error) {
	return &loomv1.InfoResponse{Version: "test"}, nil
}

func (fakeCoordinator) Submit(_ context.Context, req *loomv1.SubmitRequest) (*loomv1.SubmitResponse, error) {
	if _, err := api.ParseSpec(req.SpecYaml, req.Source); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &loomv1.SubmitResponse{Job: &loomv1.Job{Status: &loomv1.JobStatus{Name: "ok"}}}, nil
}

func (fakeCoordinator) Get(_ context.Context, req *loomv1.GetRequest) (*loomv1.Job, error) {
	return nil, status.Errorf(codes.NotFound, "no job %q", req.Name)
}

func (fakeCoordinator) Watch(req *loomv1.WatchRequest, s loomv1.Coordinator_WatchServer) error {
	for _, st := range []loomv1.JobState{loomv1.JobState_JOB_STATE_RUNNING, loomv1.JobState_JOB_STATE_SUCCEEDED} {
		if st == loomv1.JobState_JOB_STATE_SUCCEEDED {
			_ = s.Send(&loomv1.JobEvent{Event: &loomv1.JobEvent_Progress{Progress: &loomv1.RankProgress{
				Steps: []*loomv1.StepStats{{Step: 1}}}}})
		}
		if err := s.Send(&loomv1.JobEvent{Event: &loomv1.JobEvent_Status{Status: &loomv1.JobStatus{Name: req.Name, State: st}}}); err != nil {
			return err
		}
	}
	return nil
}

func startFake(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	loomv1.RegisterCoordinatorServer(srv, fakeCoordinator{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestClient(t *testing.T) {
	addr := startFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := api.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	_, err = c.Submit(ctx, []byte("name: x\ntrain: {steps: 0}\n"), "job.yaml", 0)
	if !errors.Is(err, api.ErrInvalidSpec) {
		t.Fatalf("Submit: %v, want ErrInvalidSpec", err)
	}
	for _, want := range []string{"refused the job spec", "job.yaml", "train.steps", "data.path"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Submit error lacks %q:\n%v", want, err)
		}
	}
	var re *api.RPCError
	if !errors.As(err, &re) || re.Addr != addr {
		t.Errorf("Submit error %T does not name the address %s", err, addr)
	}

	if _, err := c.Get(ctx, "nope"); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), `no job "nope"`) {
		t.Errorf("Get: %v, want ErrNotFound", err)
	}

	var events int
	final, err := c.Watch(ctx, "w", func(*loomv1.JobEvent) error { events++; return nil })
	if err != nil || final.State != loomv1.JobState_JOB_STATE_SUCCEEDED || events != 3 {
		t.Errorf("Watch: final %v, %d events, err %v", final, events, err)
	}
}

func TestDialUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = api.Dial(ctx, addr)
	if time.Since(start) > 2*time.Second {
		t.Errorf("Dial took %v past a 500ms deadline", time.Since(start))
	}
	if err == nil || !strings.Contains(err.Error(), "coordinator "+addr) || !strings.Contains(err.Error(), "loom coordinator") {
		t.Fatalf("Dial: %v", err)
	}
}

// TestDialSaysWhy: a coordinator address that refuses connections or does
// not resolve fails with the cause — not after a silent wait — and a list
// of addresses is tried in order.
func TestDialSaysWhy(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := lis.Addr().String()
	lis.Close()
	for _, c := range []struct {
		addr, want string
		quick      bool // fails before the deadline: waiting cannot help
	}{
		{refused, "connection refused", false},
		{"nosuchhost.invalid:7070", "no such host", true},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		_, err := api.Dial(ctx, c.addr)
		took := time.Since(start)
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.addr) {
			t.Errorf("Dial(%s): %v, want the address and %q", c.addr, err, c.want)
		}
		if c.quick && took > 900*time.Millisecond {
			t.Errorf("Dial(%s) took %v: a host that does not resolve should fail at once", c.addr, took)
		}
	}
	// The first of a list that answers is used.
	addr := startFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := api.Dial(ctx, refused+","+addr)
	if err != nil {
		t.Fatalf("Dial(%s,%s): %v", refused, addr, err)
	}
	defer c.Close()
	if c.Addr() != addr {
		t.Errorf("connected to %s, want %s", c.Addr(), addr)
	}
}
