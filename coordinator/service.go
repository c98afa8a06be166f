package coordinator

import (
	"context"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// rpcTimeout bounds the etcd work of one unary call.
const rpcTimeout = 10 * time.Second

// Submit validates the spec and records it as the job's desired state.
func (c *Coordinator) Submit(ctx context.Context, req *loomv1.SubmitRequest) (*loomv1.SubmitResponse, error) {
	source := req.Source
	if source == "" {
		source = "submitted spec"
	}
	if limit := c.cfg.MaxSpecBytes; len(req.SpecYaml) > limit {
		return nil, status.Errorf(codes.InvalidArgument, "%s: the spec is %d bytes; a job spec may be at most %d (it is stored as one etcd value)", source, len(req.SpecYaml), limit)
	}
	spec, err := api.ParseSpec(req.SpecYaml, source)
	if err == nil {
		err = api.Supported(spec, source)
	}
	if err == nil && c.cfg.CheckJob != nil {
		err = c.cfg.CheckJob(spec, req.Resume)
	}
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	maxRestarts := req.MaxRestarts
	if maxRestarts < 0 {
		maxRestarts = int32(spec.Elastic.MaxRestarts) // the spec's elastic.max_restarts
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	name := spec.Name
	d := &loomv1.JobDesired{
		Name: name, SpecYaml: req.SpecYaml, WorldSize: int32(spec.Parallel.WorldSize()),
		MaxRestarts: maxRestarts, SubmittedUnixMs: c.cfg.Now().UnixMilli(), Resume: req.Resume,
		RunId: req.RunId, PendingTimeoutMs: req.PendingTimeoutMs,
	}
	if req.PendingTimeoutMs < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "pending_timeout_ms: got %d; must be ≥ 0 (0: wait for ever)", req.PendingTimeoutMs)
	}
	if d.RunId == "" {
		d.RunId = checkpoint.NewRunID(c.cfg.Now())
	}
	for attempt := 0; ; attempt++ {
		job, drev, srev, err := c.readJob(ctx, name)
		if err != nil && status.Code(err) != codes.NotFound {
			return nil, err
		}
		if job != nil && !Terminal(job.Status.State) {
			if prev, err := c.readDesired(ctx, name); err == nil && req.RunId != "" && prev.RunId == req.RunId &&
				string(prev.SpecYaml) == string(req.SpecYaml) {
				// A retry of the submit that made it (after a failover, say):
				// the same run, the same spec. Not an error.
				return &loomv1.SubmitResponse{Job: job}, nil
			}
			return nil, status.Errorf(codes.AlreadyExists,
				"job %q is already %s (generation %d); stop it with `loom stop %s` or change the spec's name",
				name, stateName(job.Status.State), job.Status.Generation, name)
		}
		// A finished job of the same name is replaced: its keys go with it.
		resp, err := c.cfg.Etcd.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(c.keys.Desired(name)), "=", drev),
			clientv3.Compare(clientv3.ModRevision(c.keys.Status(name)), "=", srev),
		).Then(
			clientv3.OpDelete(c.keys.Status(name)),
			clientv3.OpDelete(c.keys.Assignment(name)),
			clientv3.OpDelete(c.keys.Job(name)+"results/", clientv3.WithPrefix()),
			clientv3.OpDelete(c.keys.Job(name)+"progress/", clientv3.WithPrefix()),
			// The previous run's checkpoint reports and record; its files stay.
			clientv3.OpDelete(c.keys.Checkpoint(name), clientv3.WithPrefix()),
			clientv3.OpPut(c.keys.Desired(name), Encode(d)),
		).Commit()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "submit %q: write to etcd: %v", name, err)
		}
		if resp.Succeeded {
			break
		}
		if attempt >= 5 {
			return nil, status.Errorf(codes.Aborted, "submit %q: the job changed concurrently %d times; retry", name, attempt+1)
		}
	}
	c.log.Info("coordinator: job submitted", "job", name, "world_size", d.WorldSize, "layout", spec.DescribeElastic(), "max_restarts", d.MaxRestarts)
	return &loomv1.SubmitResponse{Job: &loomv1.Job{Status: pendingStatus(d), SpecYaml: d.SpecYaml}}, nil
}

// readDesired reads a job's desired state.
func (c *Coordinator) readDesired(ctx context.Context, name string) (*loomv1.JobDesired, error) {
	resp, err := c.cfg.Etcd.Get(ctx, c.keys.Desired(name))
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "read job %q from etcd: %v", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, status.Errorf(codes.NotFound, "no job %q", name)
	}
	d := &loomv1.JobDesired{}
	if err := Decode(c.keys.Desired(name), resp.Kvs[0].Value, d); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return d, nil
}

func pendingStatus(d *loomv1.JobDesired) *loomv1.JobStatus {
	return &loomv1.JobStatus{Name: d.Name, State: loomv1.JobState_JOB_STATE_PENDING, WorldSize: d.WorldSize,
		Message: "submitted; waiting for the leader coordinator to schedule it"}
}

func stateName(s loomv1.JobState) string {
	n, ok := loomv1.JobState_name[int32(s)]
	if !ok {
		return s.String()
	}
	return n[len("JOB_STATE_"):]
}

// readJob reads one job. It returns NotFound when the job has no desired
// state, and the mod revisions of its desired and status keys.
func (c *Coordinator) readJob(ctx context.Context, name string) (job *loomv1.Job, desiredRev, statusRev int64, err error) {
	resp, err := c.cfg.Etcd.Get(ctx, c.keys.Job(name), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, 0, status.Errorf(codes.Unavailable, "read job %q from etcd: %v", name, err)
	}
	jobs := c.jobsFrom(resp)
	if len(jobs) == 0 {
		return nil, 0, 0, status.Errorf(codes.NotFound, "no job %q on this coordinator (etcd prefix %s); `loom status` lists jobs", name, c.keys.Prefix)
	}
	for _, kv := range resp.Kvs {
		switch string(kv.Key) {
		case c.keys.Desired(name):
			desiredRev = kv.ModRevision
		case c.keys.Status(name):
			statusRev = kv.ModRevision
		}
	}
	return jobs[0], desiredRev, statusRev, nil
}

// jobsFrom assembles jobs from their keys, sorted by name.
func (c *Coordinator) jobsFrom(resp *clientv3.GetResponse) []*loomv1.Job {
	type acc struct {
		desired    *loomv1.JobDesired
		status     *loomv1.JobStatus
		progress   []*loomv1.RankProgress
		checkpoint *loomv1.CheckpointRecord
	}
	byName := map[string]*acc{}
	get := func(n string) *acc {
		if byName[n] == nil {
			byName[n] = &acc{}
		}
		return byName[n]
	}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		name, kind, _, ok := c.keys.parseJobKey(key)
		if !ok {
			continue
		}
		switch kind {
		case "desired":
			d := &loomv1.JobDesired{}
			if Decode(key, kv.Value, d) == nil {
				get(name).desired = d
			}
		case "status":
			s := &loomv1.JobStatus{}
			if Decode(key, kv.Value, s) == nil {
				get(name).status = s
			}
		case "progress":
			p := &loomv1.RankProgress{}
			if Decode(key, kv.Value, p) == nil {
				get(name).progress = append(get(name).progress, p)
			}
		case "checkpoint":
			r := &loomv1.CheckpointRecord{}
			if Decode(key, kv.Value, r) == nil {
				get(name).checkpoint = r
			}
		}
	}
	var out []*loomv1.Job
	for _, a := range byName {
		if a.desired == nil {
			continue
		}
		st := a.status
		if st == nil {
			st = pendingStatus(a.desired)
		}
		job := &loomv1.Job{Status: st, SpecYaml: a.desired.SpecYaml, Checkpoint: a.checkpoint}
		for _, p := range a.progress {
			if p.Generation != st.Generation || len(p.Steps) == 0 {
				continue
			}
			last := proto.Clone(p).(*loomv1.RankProgress)
			last.Steps = last.Steps[len(last.Steps)-1:]
			job.Latest = append(job.Latest, last)
		}
		sort.Slice(job.Latest, func(i, j int) bool { return job.Latest[i].Rank < job.Latest[j].Rank })
		out = append(out, job)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Status.Name < out[j].Status.Name })
	return out
}

// Get returns one job.
func (c *Coordinator) Get(ctx context.Context, req *loomv1.GetRequest) (*loomv1.Job, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	job, _, _, err := c.readJob(ctx, req.Name)
	return job, err
}

// List returns every job, sorted by name.
func (c *Coordinator) List(ctx context.Context, _ *loomv1.ListRequest) (*loomv1.ListResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := c.cfg.Etcd.Get(ctx, c.keys.Jobs(), clientv3.WithPrefix())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "list jobs from etcd: %v", err)
	}
	return &loomv1.ListResponse{Jobs: c.jobsFrom(resp)}, nil
}

// Stop marks a job as stopped; the leader ends its generation.
func (c *Coordinator) Stop(ctx context.Context, req *loomv1.StopRequest) (*loomv1.StopResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	for attempt := 0; attempt < 5; attempt++ {
		job, drev, _, err := c.readJob(ctx, req.Name)
		if err != nil {
			return nil, err
		}
		if Terminal(job.Status.State) {
			return &loomv1.StopResponse{Job: job}, nil
		}
		resp, err := c.cfg.Etcd.Get(ctx, c.keys.Desired(req.Name))
		if err != nil || len(resp.Kvs) == 0 {
			return nil, status.Errorf(codes.Unavailable, "stop %q: read desired state: %v", req.Name, err)
		}
		d := &loomv1.JobDesired{}
		if err := Decode(c.keys.Desired(req.Name), resp.Kvs[0].Value, d); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		d.Stop, d.StopReason = true, req.Reason
		txn, err := c.cfg.Etcd.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(c.keys.Desired(req.Name)), "=", drev)).
			Then(clientv3.OpPut(c.keys.Desired(req.Name), Encode(d))).Commit()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "stop %q: write to etcd: %v", req.Name, err)
		}
		if txn.Succeeded {
			c.log.Info("coordinator: job stop requested", "job", req.Name, "reason", req.Reason)
			return &loomv1.StopResponse{Job: job}, nil
		}
	}
	return nil, status.Errorf(codes.Aborted, "stop %q: the job changed concurrently; retry", req.Name)
}

// Watch streams a job's status changes and step batches until it ends.
func (c *Coordinator) Watch(req *loomv1.WatchRequest, stream loomv1.Coordinator_WatchServer) error {
	ctx := stream.Context()
	gctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := c.cfg.Etcd.Get(gctx, c.keys.Job(req.Name), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return status.Errorf(codes.Unavailable, "watch %q: read from etcd: %v", req.Name, err)
	}
	jobs := c.jobsFrom(resp)
	if len(jobs) == 0 {
		return status.Errorf(codes.NotFound, "no job %q on this coordinator (etcd prefix %s); `loom status` lists jobs", req.Name, c.keys.Prefix)
	}
	st := jobs[0].Status
	if err := stream.Send(&loomv1.JobEvent{Event: &loomv1.JobEvent_Status{Status: st}}); err != nil {
		return err
	}
	if Terminal(st.State) {
		return nil
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := c.cfg.Etcd.Watch(clientv3.WithRequireLeader(wctx), c.keys.Job(req.Name),
		clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return status.Errorf(codes.Unavailable, "watch %q: etcd watch: %v", req.Name, err)
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			key := string(ev.Kv.Key)
			_, kind, _, _ := c.keys.parseJobKey(key)
			switch kind {
			case "status":
				s := &loomv1.JobStatus{}
				if Decode(key, ev.Kv.Value, s) != nil {
					continue
				}
				if err := stream.Send(&loomv1.JobEvent{Event: &loomv1.JobEvent_Status{Status: s}}); err != nil {
					return err
				}
				if Terminal(s.State) {
					return nil
				}
			case "progress":
				p := &loomv1.RankProgress{}
				if Decode(key, ev.Kv.Value, p) != nil {
					continue
				}
				if err := stream.Send(&loomv1.JobEvent{Event: &loomv1.JobEvent_Progress{Progress: p}}); err != nil {
					return err
				}
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return status.Errorf(codes.Unavailable, "watch %q: etcd watch closed", req.Name)
}

// Info describes this coordinator.
func (c *Coordinator) Info(ctx context.Context, _ *loomv1.InfoRequest) (*loomv1.InfoResponse, error) {
	// Info answers even while etcd does not; the leader and the other
	// coordinators are then left out.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp := &loomv1.InfoResponse{
		Version: c.cfg.Version, EtcdEndpoints: c.cfg.EtcdEndpoints, KeyPrefix: c.keys.Prefix,
		Leader: c.IsLeader(), LeaseTtlSeconds: int32(ttlSeconds(c.cfg.LeaseTTL)),
		HttpAddr: c.httpAddr.Load().(string),
	}
	if addr, err := LeaderAddr(ctx, c.cfg.Etcd, c.keys); err == nil {
		resp.LeaderAddr = addr
	}
	if addrs, err := Coordinators(ctx, c.cfg.Etcd, c.keys); err == nil {
		resp.Coordinators = addrs
	}
	return resp, nil
}

// ReportSteps records a rank's latest steps: in etcd (where every
// coordinator's Watch streams see them) and in the step metrics.
func (c *Coordinator) ReportSteps(ctx context.Context, req *loomv1.ReportStepsRequest) (*loomv1.ReportStepsResponse, error) {
	p := req.Progress
	if p == nil || p.Job == "" || len(p.Steps) == 0 {
		return nil, status.Error(codes.InvalidArgument, "report: progress needs a job name and at least one step")
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	// Only reports of the generation still assigned are kept: a late
	// report from an ended generation must not overwrite fresh progress.
	// The put is guarded by the assignment's mod revision as the job's
	// last report saw it; when the assignment changed since (or this
	// coordinator has not seen it yet) the same transaction reads it
	// instead, and the put is tried again against what it read.
	akey := c.keys.Assignment(p.Job)
	seen, ok := c.assigned.get(p.Job)
	if !ok || seen.generation != p.Generation {
		seen.modRevision = -1 // no key has this revision: the guard fails and reads
	}
	for attempt := 0; ; attempt++ {
		txn, err := c.cfg.Etcd.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(akey), "=", seen.modRevision)).
			Then(clientv3.OpPut(c.keys.Progress(p.Job, int(p.Rank)), Encode(p))).
			Else(clientv3.OpGet(akey)).Commit()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "report %s rank %d: write to etcd: %v", p.Job, p.Rank, err)
		}
		if txn.Succeeded {
			break
		}
		if attempt == 2 {
			return nil, status.Errorf(codes.FailedPrecondition, "report %s rank %d: generation %d's assignment kept changing meanwhile", p.Job, p.Rank, p.Generation)
		}
		kvs := txn.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			c.assigned.forget(p.Job)
			return nil, status.Errorf(codes.FailedPrecondition, "report %s rank %d: generation %d is no longer assigned", p.Job, p.Rank, p.Generation)
		}
		a := &loomv1.Assignment{}
		if err := Decode(akey, kvs[0].Value, a); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		seen = seenAssignment{generation: a.Generation, modRevision: kvs[0].ModRevision, createRevision: kvs[0].CreateRevision}
		c.assigned.put(p.Job, seen)
		if a.Generation != p.Generation {
			return nil, status.Errorf(codes.FailedPrecondition, "report %s rank %d: generation %d is no longer assigned (current %d)", p.Job, p.Rank, p.Generation, a.Generation)
		}
	}
	// The assignment's create revision is the generation's epoch: a new
	// generation or submission starts the job's counters afresh.
	for _, s := range p.Steps {
		c.steps.ObserveStep(p.Job, seen.createRevision, int(p.Rank), s)
	}
	return &loomv1.ReportStepsResponse{}, nil
}
