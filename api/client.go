package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

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
	Addr string // coordinator address (or addresses, comma-separated)
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
		if m := st.Message(); strings.Contains(m, "tls:") || strings.Contains(m, "x509:") || strings.Contains(m, "want role") {
			return fmt.Sprintf("coordinator %s: %s: the TLS handshake failed (%s); check --tls-dir / --tls-ca: both sides need certificates of one CA", e.Addr, e.Op, dialCause(m))
		}
		if m := st.Message(); strings.Contains(m, "server preface") || strings.Contains(m, "first record does not look like a TLS handshake") {
			return fmt.Sprintf("coordinator %s: %s: the connection failed (%s); one side uses TLS and the other not: give both --tls-dir, or neither", e.Addr, e.Op, dialCause(m))
		}
		return fmt.Sprintf("coordinator %s: %s: unreachable (%s); check the address and that `loom coordinator` runs there", e.Addr, e.Op, dialCause(st.Message()))
	case codes.Unauthenticated, codes.PermissionDenied:
		return fmt.Sprintf("coordinator %s: %s: %s", e.Addr, e.Op, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Sprintf("coordinator %s: %s: no answer before the deadline; check the address and that `loom coordinator` runs there", e.Addr, e.Op)
	case codes.InvalidArgument:
		return fmt.Sprintf("coordinator %s refused the job spec:\n%s", e.Addr, st.Message())
	}
	return fmt.Sprintf("coordinator %s: %s: %s", e.Addr, e.Op, st.Message())
}

// dialCause shortens gRPC's transport message to the cause a user acts on
// ("connect: connection refused", "lookup nosuch: no such host").
func dialCause(msg string) string {
	for _, marker := range []string{"Error while dialing: ", "name resolver error: "} {
		if i := strings.Index(msg, marker); i >= 0 {
			msg = msg[i+len(marker):]
		}
	}
	return strings.TrimSuffix(msg, `"`)
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

// Client talks to the coordinators of one control plane. It is connected
// to one at a time; when that one stops answering (it was stopped, or
// died and a standby took over) a call fails over to another it knows of —
// those given to Dial and those every coordinator lists in Info (they know
// each other through etcd) — and is retried there once. Any coordinator
// serves every call (they share etcd); the leader is preferred. It is
// safe for concurrent use.
type Client struct {
	// dialOpts are Dial's options (credentials, message bounds).
	dialOpts []grpc.DialOption

	mu    sync.Mutex
	addr  string
	conn  *grpc.ClientConn
	rpc   loomv1.CoordinatorClient
	known []string // every coordinator address known, in preference order
}

// dialTry bounds one attempt to reach one coordinator during a failover.
const dialTry = 2 * time.Second

// failoverWait bounds how long a call looks for a coordinator that answers
// when none does.
const failoverWait = 30 * time.Second

// Dial connects to the first coordinator of addrs (host:port, several
// separated by commas) that answers within ctx's deadline. An address that
// refuses connections is retried until then (a coordinator may be
// starting; without a deadline each is tried once); one whose host does
// not resolve fails at once. The error names each address and why it was
// not reached. opts are added to every connection's (plaintext unless
// they give transport credentials: security.Setup.DialOptions).
func Dial(ctx context.Context, addrs string, opts ...grpc.DialOption) (*Client, error) {
	list := splitAddrs(addrs)
	if len(list) == 0 {
		return nil, &RPCError{Addr: addrs, Op: "dial", Err: errors.New("no coordinator address given")}
	}
	c := &Client{known: list, dialOpts: append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)}
	var errs []error
	for {
		errs = errs[:0]
		for _, a := range list {
			err := c.connect(ctx, a)
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		if _, ok := ctx.Deadline(); !ok || ctx.Err() != nil || !anyRetryable(errs) {
			break // without a deadline each address is tried once
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, &RPCError{Addr: addrs, Op: "connect", Err: errors.Join(errs...)}
}

func splitAddrs(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// anyRetryable reports whether one of the dial errors may heal: a
// coordinator not listening yet (but not a host that does not resolve).
func anyRetryable(errs []error) bool {
	for _, err := range errs {
		var re *RPCError
		if errors.As(err, &re) && status.Code(re.Err) == codes.Unavailable && !strings.Contains(re.Err.Error(), "no such host") &&
			!strings.Contains(re.Err.Error(), "produced zero addresses") {
			return true
		}
	}
	return false
}

// connect dials addr and asks it for Info within ctx (and dialTry when
// ctx has no deadline); on success it becomes the client's coordinator and
// the coordinators it lists are remembered.
func (c *Client) connect(ctx context.Context, addr string) error {
	// Resolve the host first: gRPC reports a name that does not resolve
	// only as "produced zero addresses", and only after its backoff.
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return &RPCError{Addr: addr, Op: "dial", Err: fmt.Errorf("%w; want HOST:PORT", err)}
	}
	if net.ParseIP(host) == nil && host != "" {
		lctx, cancel := context.WithTimeout(ctx, dialTry)
		_, err := net.DefaultResolver.LookupHost(lctx, host)
		cancel()
		if err != nil {
			return &RPCError{Addr: addr, Op: "dial", Err: status.Error(codes.Unavailable, err.Error())}
		}
	}
	conn, err := grpc.NewClient(addr, c.dialOpts...)
	if err != nil {
		return &RPCError{Addr: addr, Op: "dial", Err: err}
	}
	// One address gets dialTry at most, so that a host that drops packets
	// does not use up the time the others would get.
	ictx, cancel := context.WithTimeout(ctx, dialTry)
	defer cancel()
	info, err := loomv1.NewCoordinatorClient(conn).Info(ictx, &loomv1.InfoRequest{})
	if err != nil {
		conn.Close()
		if ictx.Err() != nil && status.Code(err) != codes.Unavailable {
			err = status.Error(codes.DeadlineExceeded, ictx.Err().Error())
		}
		return &RPCError{Addr: addr, Op: "connect", Err: err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
	}
	c.addr, c.conn, c.rpc = addr, conn, loomv1.NewCoordinatorClient(conn)
	c.learn(info)
	return nil
}

// learn merges the coordinators info names into known: the leader first,
// then the others it lists, then the rest. c.mu is held.
func (c *Client) learn(info *loomv1.InfoResponse) {
	var order []string
	seen := map[string]bool{}
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			order = append(order, a)
		}
	}
	add(info.GetLeaderAddr())
	for _, a := range info.GetCoordinators() {
		add(a)
	}
	for _, a := range c.known {
		add(a)
	}
	c.known = order
}

// Addr is the address of the coordinator in use.
func (c *Client) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// Coordinators lists every coordinator address the client knows of, the
// last known leader first.
func (c *Client) Coordinators() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.known...)
}

// Close releases the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// RPC returns the generated client of the coordinator in use, for calls
// this type does not wrap (they do not fail over).
func (c *Client) RPC() loomv1.CoordinatorClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rpc
}

func (c *Client) current() (loomv1.CoordinatorClient, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rpc, c.addr
}

// lostCoordinator reports whether err means the coordinator in use went
// away (rather than answering with an error), so another should be tried.
func lostCoordinator(ctx context.Context, err error) bool {
	switch status.Code(err) {
	case codes.Unavailable:
		return true
	case codes.Canceled:
		return ctx.Err() == nil // the server ended the call, not us
	}
	return false
}

// failover connects to another coordinator than failed (the last known
// leader first), waiting up to failoverWait (and ctx) for one to answer.
func (c *Client) failover(ctx context.Context, failed string) error {
	deadline := time.Now().Add(failoverWait)
	for {
		var errs []error
		candidates := c.Coordinators()
		// The one that failed goes last: it may be back (a restart).
		for i, a := range candidates {
			if a == failed {
				candidates = append(append(candidates[:i:i], candidates[i+1:]...), a)
				break
			}
		}
		for _, a := range candidates {
			tctx, cancel := context.WithTimeout(ctx, dialTry)
			err := c.connect(tctx, a)
			cancel()
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			var why []string
			for _, e := range errs {
				var re *RPCError
				if errors.As(e, &re) {
					if st, ok := status.FromError(re.Err); ok {
						why = append(why, fmt.Sprintf("%s: %s", re.Addr, dialCause(st.Message())))
						continue
					}
				}
				why = append(why, e.Error())
			}
			return fmt.Errorf("no other coordinator answered within %v (tried %s)", failoverWait, strings.Join(why, "; "))
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// failoverError is a call that lost its coordinator (cause) and found no
// other (ferr); it keeps the class Unavailable.
func failoverError(addr, op string, cause, ferr error) error {
	msg := cause.Error()
	if st, ok := status.FromError(cause); ok {
		msg = dialCause(st.Message())
	}
	return &RPCError{Addr: addr, Op: op, Err: status.Errorf(codes.Unavailable, "%s; then %v", msg, ferr)}
}

// refresh asks the coordinator in use which coordinators there are now
// (a standby may have started since Dial); errors are left to the call
// that follows.
func (c *Client) refresh(ctx context.Context) {
	rpc, _ := c.current()
	ictx, cancel := context.WithTimeout(ctx, dialTry)
	defer cancel()
	if info, err := rpc.Info(ictx, &loomv1.InfoRequest{}); err == nil {
		c.mu.Lock()
		c.learn(info)
		c.mu.Unlock()
	}
}

// do runs call on the coordinator in use and, if that one went away, once
// more on another.
func (c *Client) do(ctx context.Context, op string, call func(loomv1.CoordinatorClient) error) error {
	rpc, addr := c.current()
	err := call(rpc)
	if err == nil {
		return nil
	}
	if !lostCoordinator(ctx, err) {
		return &RPCError{Addr: addr, Op: op, Err: err}
	}
	if ferr := c.failover(ctx, addr); ferr != nil {
		return failoverError(addr, op, err, ferr)
	}
	rpc, addr = c.current()
	if err := call(rpc); err != nil {
		return &RPCError{Addr: addr, Op: op, Err: err}
	}
	return nil
}

// Submit sends a YAML job spec; source names it in errors. A refused spec
// is an error that wraps ErrInvalidSpec and lists every field error.
func (c *Client) Submit(ctx context.Context, specYAML []byte, source string, maxRestarts int) (*loomv1.Job, error) {
	return c.SubmitJob(ctx, &loomv1.SubmitRequest{SpecYaml: specYAML, Source: source, MaxRestarts: int32(maxRestarts)})
}

// SubmitJob sends a submit request with every option. If the coordinator
// goes away before it answers, the request is sent again to another. A
// submission the first one had recorded is then accepted again when
// req.RunId is set (the same run and spec: Submit is idempotent for them;
// `loom submit` and `loom run` always set it), and refused as already
// existing otherwise.
func (c *Client) SubmitJob(ctx context.Context, req *loomv1.SubmitRequest) (*loomv1.Job, error) {
	var job *loomv1.Job
	err := c.do(ctx, "submit", func(rpc loomv1.CoordinatorClient) error {
		resp, err := rpc.Submit(ctx, req)
		job = resp.GetJob()
		return err
	})
	return job, err
}

// Get returns a job's status and each rank's latest step.
func (c *Client) Get(ctx context.Context, name string) (*loomv1.Job, error) {
	var job *loomv1.Job
	err := c.do(ctx, "get "+name, func(rpc loomv1.CoordinatorClient) (err error) {
		job, err = rpc.Get(ctx, &loomv1.GetRequest{Name: name})
		return err
	})
	return job, err
}

// List returns every job.
func (c *Client) List(ctx context.Context) ([]*loomv1.Job, error) {
	var jobs []*loomv1.Job
	err := c.do(ctx, "list", func(rpc loomv1.CoordinatorClient) error {
		resp, err := rpc.List(ctx, &loomv1.ListRequest{})
		jobs = resp.GetJobs()
		return err
	})
	return jobs, err
}

// Stop asks the coordinator to stop a job.
func (c *Client) Stop(ctx context.Context, name, reason string) (*loomv1.Job, error) {
	var job *loomv1.Job
	err := c.do(ctx, "stop "+name, func(rpc loomv1.CoordinatorClient) error {
		resp, err := rpc.Stop(ctx, &loomv1.StopRequest{Name: name, Reason: reason})
		job = resp.GetJob()
		return err
	})
	return job, err
}

// Info describes the coordinator in use.
func (c *Client) Info(ctx context.Context) (*loomv1.InfoResponse, error) {
	var info *loomv1.InfoResponse
	err := c.do(ctx, "info", func(rpc loomv1.CoordinatorClient) (err error) {
		info, err = rpc.Info(ctx, &loomv1.InfoRequest{})
		return err
	})
	return info, err
}

// Watch follows a job, calling fn for every event, and returns the job's
// final status once it has finished. When the coordinator streaming it
// goes away (a takeover), Watch continues on another: fn then sees the
// job's current status again, and the steps reported meanwhile may be
// missing. It returns fn's error if fn fails, and the stream's error if it
// breaks before the job finishes and no coordinator answers.
func (c *Client) Watch(ctx context.Context, name string, fn func(*loomv1.JobEvent) error) (*loomv1.JobStatus, error) {
	var last *loomv1.JobStatus
	for {
		st, lost, err := c.watchOnce(ctx, name, fn, &last)
		if !lost {
			return st, err
		}
		_, addr := c.current()
		if ferr := c.failover(ctx, addr); ferr != nil {
			var re *RPCError
			if errors.As(err, &re) {
				err = re.Err
			}
			return last, failoverError(addr, "watch "+name, err, ferr)
		}
	}
}

// watchOnce is one Watch stream; lost is true when the coordinator went
// away before the job finished.
func (c *Client) watchOnce(ctx context.Context, name string, fn func(*loomv1.JobEvent) error, last **loomv1.JobStatus) (*loomv1.JobStatus, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.refresh(ctx) // whom to fail over to if this stream breaks
	rpc, addr := c.current()
	stream, err := rpc.Watch(ctx, &loomv1.WatchRequest{Name: name})
	if err != nil {
		return nil, lostCoordinator(ctx, err), &RPCError{Addr: addr, Op: "watch " + name, Err: err}
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if *last == nil {
				return nil, false, &RPCError{Addr: addr, Op: "watch " + name, Err: errors.New("stream ended before any status")}
			}
			return *last, false, nil
		}
		if err != nil {
			return *last, lostCoordinator(ctx, err), &RPCError{Addr: addr, Op: "watch " + name, Err: err}
		}
		if s := ev.GetStatus(); s != nil {
			*last = s
		}
		if fn != nil {
			if err := fn(ev); err != nil {
				return *last, false, err
			}
		}
	}
}
