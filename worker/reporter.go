package worker

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/coordinator"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// DefaultReportInterval is how often a worker sends its step stats when
// Config.ReportInterval is unset. Each report costs the coordinator an etcd
// transaction (a WAL fsync; when measured, a read as well). On a 2-vCPU
// machine running a dp 2 job and the embedded etcd (perf sched over 5 s,
// 2026-12-01): at 250 ms the
// coordinator process took 2.7–3.2% of the machine, with reports every 5 s
// 0.5–0.8%; a step it takes from one rank's core is a step the other rank
// waits out. The dashboard's live view updates every 2 s by default.
const DefaultReportInterval = time.Second

// maxBufferedSteps bounds the steps kept while no coordinator answers.
const maxBufferedSteps = 1024

// flushSteps is how many buffered steps send a batch before the next tick:
// a rank that steps faster than maxBufferedSteps per ReportInterval (a
// small model: a step of under a millisecond) would otherwise lose its
// oldest steps from the buffer while the coordinator is reachable.
const flushSteps = 256

// reporter batches a rank's step stats and sends them to the coordinator
// every ReportInterval, and sooner once flushSteps are buffered. When the
// coordinator does not answer it keeps the steps (up to maxBufferedSteps),
// tries again at the next tick and looks up the elected leader, so a
// restarted coordinator or a standby that took over gets them. Training
// never waits for it.
type reporter struct {
	w *Worker

	mu      sync.Mutex
	pending *loomv1.RankProgress
	// kick asks the sending goroutine for a batch now (flushSteps are
	// buffered); it holds at most one request.
	kick chan struct{}

	flushMu sync.Mutex // one send at a time; guards addr and conn
	addr    string
	conn    *grpc.ClientConn

	// ctx ends when the reporter closes: a send in flight gives up.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newReporter(w *Worker) *reporter {
	ctx, cancel := context.WithCancel(context.Background())
	r := &reporter{w: w, addr: w.coordAddr, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1)}
	r.wg.Go(func() {
		t := time.NewTicker(w.cfg.ReportInterval)
		defer t.Stop()
		kick := r.kick
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-kick:
			}
			fctx, cancel := context.WithTimeout(ctx, w.cfg.DialTimeout)
			ok := r.flush(fctx)
			cancel()
			// After a failed send the next try waits for the tick: every
			// step kicks while the buffer is full, and a coordinator
			// that refuses at once would be retried back to back.
			kick = nil
			if ok {
				kick = r.kick
			}
		}
	})
	return r
}

func (r *reporter) close() {
	r.cancel()
	r.wg.Wait()
	if r.conn != nil {
		r.conn.Close()
	}
}

// forRank starts reporting for one rank of one generation and returns the
// engine's report callback.
func (r *reporter) forRank(job string, gen uint64, epoch int64, rank int) func(StepStats) {
	r.mu.Lock()
	r.pending = &loomv1.RankProgress{Job: job, Generation: gen, Rank: int32(rank), Addr: r.w.Addr(), WorkerId: r.w.ID()}
	r.mu.Unlock()
	return func(s StepStats) {
		ps := &loomv1.StepStats{
			Step: int64(s.Step), Loss: s.Loss, Lr: s.LR, GradNorm: s.GradNorm, TokensPerSec: s.TokensPerSec,
			StepSeconds: s.StepTime.Seconds(), ComputeSeconds: s.ComputeTime.Seconds(), CommSeconds: s.CommTime.Seconds(),
			DataSeconds: s.DataTime.Seconds(), CheckpointSeconds: s.CheckpointTime.Seconds(), Tokens: s.Tokens, ValLoss: s.ValLoss,
			EndUnixMs: time.Now().UnixMilli(),
		}
		for _, c := range s.Comm {
			ps.Comm = append(ps.Comm, &loomv1.CommStat{Op: c.Op, Bytes: c.Bytes, Seconds: c.Time.Seconds()})
		}
		r.w.metrics.ObserveStep(job, epoch, rank, ps)
		r.mu.Lock()
		defer r.mu.Unlock()
		p := r.pending
		if p == nil || p.Job != job || p.Generation != gen {
			return // a report after the generation ended
		}
		p.Steps = append(p.Steps, ps)
		if n := len(p.Steps); n > maxBufferedSteps {
			p.Steps = append(p.Steps[:0], p.Steps[n-maxBufferedSteps:]...)
		}
		if len(p.Steps) >= flushSteps {
			select {
			case r.kick <- struct{}{}:
			default:
			}
		}
	}
}

// setRankInfo records the memory (kind ≠ "") or the measured peak
// (kind == "", bytes ignored) of a rank of a generation; they go with
// every later batch.
func (r *reporter) setRankInfo(job string, gen uint64, kind string, bytes int64, peak float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pending
	if p == nil || p.Job != job || p.Generation != gen {
		return
	}
	if kind == "" {
		p.PeakFlops = peak
		return
	}
	if p.MemoryBytes == nil {
		p.MemoryBytes = map[string]int64{}
	}
	p.MemoryBytes[kind] = bytes
}

// setFirstStep records when a rank's first step of a generation ended
// and how long its setup took; they go with every later batch.
func (r *reporter) setFirstStep(job string, gen uint64, setupSeconds float64, endUnixMs int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.pending; p != nil && p.Job == job && p.Generation == gen {
		p.SetupSeconds, p.FirstStepUnixMs = setupSeconds, endUnixMs
	}
}

// setResume records the checkpoint step a rank restored and the seconds
// it took; they go with every later batch.
func (r *reporter) setResume(job string, gen uint64, step int64, seconds float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.pending; p != nil && p.Job == job && p.Generation == gen {
		p.ResumeStep, p.ResumeSeconds = step, seconds
	}
}

// flushAll sends the buffered steps and, when a send fails (the
// coordinator died and another takes over), tries again, the leader
// looked up afresh each time, until they are delivered or ctx ends. A
// rank's last steps must reach whoever leads before its result does.
func (r *reporter) flushAll(ctx context.Context) {
	for !r.flush(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// flush sends the buffered steps, if any, and says whether none is left
// undelivered (steps of an ended generation count as delivered).
func (r *reporter) flush(ctx context.Context) bool {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	p := r.pending
	if p == nil || len(p.Steps) == 0 {
		r.mu.Unlock()
		return true
	}
	batch := &loomv1.RankProgress{Job: p.Job, Generation: p.Generation, Rank: p.Rank, Addr: p.Addr,
		WorkerId: p.WorkerId, Steps: p.Steps, PeakFlops: p.PeakFlops, SetupSeconds: p.SetupSeconds,
		ResumeSeconds: p.ResumeSeconds, ResumeStep: p.ResumeStep, FirstStepUnixMs: p.FirstStepUnixMs}
	if len(p.MemoryBytes) > 0 {
		batch.MemoryBytes = make(map[string]int64, len(p.MemoryBytes))
		for k, v := range p.MemoryBytes {
			batch.MemoryBytes[k] = v
		}
	}
	p.Steps = nil
	r.mu.Unlock()

	err := r.send(ctx, batch)
	if err == nil {
		return true
	}
	if status.Code(err) == codes.FailedPrecondition {
		return true // the generation ended; its steps no longer matter
	}
	r.w.log.Warn("worker: step report failed; will retry", "coordinator", r.addr, "err", err)
	// Put the steps back in front of any that arrived meanwhile.
	r.mu.Lock()
	if q := r.pending; q != nil && q.Job == batch.Job && q.Generation == batch.Generation {
		q.Steps = append(batch.Steps, q.Steps...)
		if n := len(q.Steps); n > maxBufferedSteps {
			q.Steps = q.Steps[n-maxBufferedSteps:]
		}
	}
	r.mu.Unlock()
	// Next time, try whoever leads now.
	if addr, lerr := coordinator.LeaderAddr(ctx, r.w.etcd, r.w.keys); lerr == nil && addr != "" && addr != r.addr {
		r.addr = addr
		if r.conn != nil {
			r.conn.Close()
			r.conn = nil
		}
	}
	return false
}

func (r *reporter) send(ctx context.Context, p *loomv1.RankProgress) error {
	if r.addr == "" {
		addr, err := coordinator.LeaderAddr(ctx, r.w.etcd, r.w.keys)
		if err != nil {
			return err
		}
		if addr == "" {
			return status.Error(codes.Unavailable, "no coordinator is leader")
		}
		r.addr = addr
	}
	if r.conn == nil {
		opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, r.w.cfg.CoordinatorDial...)
		conn, err := grpc.NewClient(r.addr, opts...)
		if err != nil {
			return err
		}
		r.conn = conn
	}
	_, err := loomv1.NewCoordinatorClient(r.conn).ReportSteps(ctx, &loomv1.ReportStepsRequest{Progress: p})
	return err
}
