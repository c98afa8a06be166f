package api

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// ErrNotFound is the class of errors for a job the coordinator does not know.
var ErrNotFound = errors.New("job not found")

// ErrInvalidSpec is the class of errors for a spec the coordinator refused.
var ErrInvalidSpec = errors.New("invalid job spec")

// RPCError is a failed call to a coordinator: which address, which call,
// and the error. It unwraps to ErrNotFound or ErrInvalidSpec when those
// apply, and to the gRPC status error.
type RPCError struct {
	Addr string // coordinator address
	Op   string // "submit", "get", …
	Err  error
}

func (e *RPCError) Error() string {
	st, ok := status.FromError(e.Err)
	if !ok {
		return fmt.Sprintf("coordinator %s: %s: %v", e.Addr, e.Op, e.Err)
	}
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Sprintf("coordinator %s: %s: unreachable (%s); check the address and that `loom coordinator` runs there", e.Addr, e.Op, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Sprintf("coordinator %s: %s: no answer before the deadline; check the address and that `loom coordinator` runs there", e.Addr, e.Op)
	case codes.InvalidArgument:
		return fmt.Sprintf("coordinator %s refused the job spec:\n%s", e.Addr, st.Message())
	}
	return fmt.Sprintf("coordinator %s: %s: %s", e.Addr, e.Op, st.Message())
}

// Unwrap returns the class and the underlying error.
func (e *RPCError) Unwrap() []error {
	switch status.Code(e.Err) {
	case codes.NotFound:
		return []error{ErrNotFound, e.Err}
	case codes.InvalidArgument:
		return []error{ErrInvalidSpec, e.Err}
	}
	return []error{e.Err}
}

// Client talks to a coordinator. It is safe for concurrent use.
type Client struct {
	addr string
	conn *grpc.ClientConn
	rpc  loomv1.CoordinatorClient
}

// Dial connects to the coordinator at addr (host:port) and checks, within
// ctx's deadline, that it answers.
func Dial(ctx context.Context, addr string) (*Client, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, &RPCError{Addr: addr, Op: "dial", Err: err}
	}
	c := &Client{addr: addr, conn: conn, rpc: loomv1.NewCoordinatorClient(conn)}
	if _, err := c.rpc.Info(ctx, &loomv1.InfoRequest{}, grpc.WaitForReady(true)); err != nil {
		conn.Close()
		if ctx.Err() != nil {
			err = status.Error(codes.DeadlineExceeded, ctx.Err().Error())
		}
		return nil, &RPCError{Addr: addr, Op: "connect", Err: err}
	}
	return c, nil
}

// Addr is the coordinator's address.
func (c *Client) Addr() string { return c.addr }

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// RPC returns the generated client, for calls this type does not wrap.
func (c *Client) RPC() loomv1.CoordinatorClient { return c.rpc }

func (c *Client) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return &RPCError{Addr: c.addr, Op: op, Err: err}
}

// Submit sends a YAML job spec; source names it in errors. A refused spec
// is an error that wraps ErrInvalidSpec and lists every field error.
func (c *Client) Submit(ctx context.Context, specYAML []byte, source string, maxRestarts int) (*loomv1.Job, error) {
	resp, err := c.rpc.Submit(ctx, &loomv1.SubmitRequest{SpecYaml: specYAML, Source: source, MaxRestarts: int32(maxRestarts)})
	if err != nil {
		return nil, c.wrap("submit", err)
	}
	return resp.Job, nil
}

// Get returns a job's status and each rank's latest step.
func (c *Client) Get(ctx context.Context, name string) (*loomv1.Job, error) {
	job, err := c.rpc.Get(ctx, &loomv1.GetRequest{Name: name})
	return job, c.wrap("get "+name, err)
}

// List returns every job.
func (c *Client) List(ctx context.Context) ([]*loomv1.Job, error) {
	resp, err := c.rpc.List(ctx, &loomv1.ListRequest{})
	if err != nil {
		return nil, c.wrap("list", err)
	}
	return resp.Jobs, nil
}

// Stop asks the coordinator to stop a job.
func (c *Client) Stop(ctx context.Context, name, reason string) (*loomv1.Job, error) {
	resp, err := c.rpc.Stop(ctx, &loomv1.StopRequest{Name: name, Reason: reason})
	if err != nil {
		return nil, c.wrap("stop "+name, err)
	}
	return resp.Job, nil
}

// Info describes the coordinator.
func (c *Client) Info(ctx context.Context) (*loomv1.InfoResponse, error) {
	resp, err := c.rpc.Info(ctx, &loomv1.InfoRequest{})
	return resp, c.wrap("info", err)
}

// Watch follows a job, calling fn for every event, and returns the job's
// final status once it has finished. It returns fn's error if fn fails,
// and the stream's error if the stream breaks before the job finishes.
func (c *Client) Watch(ctx context.Context, name string, fn func(*loomv1.JobEvent) error) (*loomv1.JobStatus, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.Watch(ctx, &loomv1.WatchRequest{Name: name})
	if err != nil {
		return nil, c.wrap("watch "+name, err)
	}
	var last *loomv1.JobStatus
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if last == nil {
				return nil, c.wrap("watch "+name, errors.New("stream ended before any status"))
			}
			return last, nil
		}
		if err != nil {
			return last, c.wrap("watch "+name, err)
		}
		if s := ev.GetStatus(); s != nil {
			last = s
		}
		if fn != nil {
			if err := fn(ev); err != nil {
				return last, err
			}
		}
	}
}
