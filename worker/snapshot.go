package worker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// In-memory recovery (elastic.snapshot_every). Every N steps each rank
// writes its part of a checkpoint — the same shard and state files, with
// their sizes and SHA-256, that a disk checkpoint holds — into its worker
// process's snapshot store, a directory under /dev/shm (RAM), and pushes a
// copy to the worker of its data-parallel neighbour (dp index (d+1) mod
// dp, same tp and pp). A worker holds, per job, the newest step for which
// it has its own part and its predecessor's copy, and records that in etcd
// (snapshots/JOB/WORKER, under its lease: a dead worker's record goes with
// it). The store belongs to the process, not the engine, so it outlives
// the generation that wrote it: the leader's Decide resumes the next
// generation from it (Assignment.memory), and each new rank gathers every
// old rank's part — from its own store, or fetched from the holder with a
// deadline and verified — into a step directory with a manifest, which the
// rank restores like any checkpoint (resharded to the new layout).

// snapChunk is the payload size of one streamed SnapshotChunk.
const snapChunk = 1 << 20

// snapKey names one snapshot: the generation that took it and its step.
type snapKey struct {
	gen  uint64
	step int64
}

// snapStep is what the store has of one snapshot.
type snapStep struct {
	world int
	parts map[int]checkpoint.RankPart // by rank; files in the step's dir
	// own is this worker's rank in the generation (-1: its part is not
	// here yet) and pred the rank whose copy it holds (-1: none expected,
	// dp 1).
	own, pred int
}

func (s *snapStep) complete() bool {
	if s.own < 0 {
		return false
	}
	_, ok := s.parts[s.pred]
	return s.pred < 0 || ok
}

// snapStore is a worker's in-memory snapshot store: per job, the newest
// complete snapshot and any newer ones still arriving. It is safe for
// concurrent use.
type snapStore struct {
	root string
	log  *slog.Logger
	// onHeld is told the job's newest complete snapshot (its parts sorted
	// by rank) when it changes.
	onHeld func(job string, h *loomv1.SnapshotHolding)

	mu   sync.Mutex
	jobs map[string]map[snapKey]*snapStep
	// held is each job's newest complete snapshot, floor the oldest one
	// kept: the store keeps the two newest complete snapshots (and any
	// newer ones arriving), because the workers complete a step at
	// slightly different times and a restart needs one every worker has.
	held, floor map[string]snapKey
}

// newSnapStore makes the store's directory: under /dev/shm where there is
// one (tmpfs: the files are RAM), else the temporary directory.
func newSnapStore(log *slog.Logger, onHeld func(string, *loomv1.SnapshotHolding)) (*snapStore, error) {
	base := "/dev/shm"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = os.TempDir()
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	root := filepath.Join(base, fmt.Sprintf("loom-snapshots-%d-%s", os.Getpid(), hex.EncodeToString(b[:])))
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("worker: snapshot store: %w", err)
	}
	return &snapStore{root: root, log: log, onHeld: onHeld, jobs: map[string]map[snapKey]*snapStep{},
		held: map[string]snapKey{}, floor: map[string]snapKey{}}, nil
}

// close removes the store's files.
func (s *snapStore) close() {
	if err := os.RemoveAll(s.root); err != nil {
		s.log.Warn("worker: could not remove the snapshot store", "dir", s.root, "err", err)
	}
}

// dir is where snapshot k of job keeps its files (every rank's names
// differ: shard-R and state-R).
func (s *snapStore) dir(job string, k snapKey) string {
	return filepath.Join(s.root, job, fmt.Sprintf("g%d-step-%d", k.gen, k.step))
}

// writeDir is the job directory a rank of generation gen writes its own
// parts under (checkpoint.WriteRank makes step-N.partial in it).
func (s *snapStore) writeDir(job string, gen uint64) string {
	return filepath.Join(s.root, job, fmt.Sprintf("write-g%d", gen))
}

// step returns (creating) the record of snapshot k of job; nil when it is
// older than the snapshots kept (it can no longer matter).
func (s *snapStore) step(job string, k snapKey, world int) *snapStep {
	if f, ok := s.floor[job]; ok && newer(f, k) {
		return nil
	}
	m := s.jobs[job]
	if m == nil {
		m = map[snapKey]*snapStep{}
		s.jobs[job] = m
	}
	st := m[k]
	if st == nil {
		st = &snapStep{world: world, parts: map[int]checkpoint.RankPart{}, own: -1, pred: -1}
		m[k] = st
	}
	return st
}

func newer(a, b snapKey) bool {
	if a.gen != b.gen {
		return a.gen > b.gen
	}
	return a.step > b.step
}

// addOwn files this rank's part of snapshot k (written by WriteRank under
// writeDir): its files move into the snapshot's directory. pred is the
// rank whose copy completes it (-1: none, dp 1).
func (s *snapStore) addOwn(job string, k snapKey, world, pred int, p checkpoint.RankPart) error {
	dst := s.dir(job, k)
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return fmt.Errorf("snapshot store: %w", err)
	}
	for _, f := range p.Files {
		if err := os.Rename(filepath.Join(p.Dir, f.Path), filepath.Join(dst, f.Path)); err != nil {
			return fmt.Errorf("snapshot store: step %d rank %d: %w", k.step, p.Rank, err)
		}
	}
	os.Remove(p.Dir)
	p.Dir = dst
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.step(job, k, world)
	if st == nil {
		os.RemoveAll(dst) // older than the one held
		return nil
	}
	st.parts[p.Rank], st.own, st.pred = p, p.Rank, pred
	s.settle(job)
	return nil
}

// addCopy files a peer's part of snapshot k, whose files are already in
// the snapshot's directory (Push wrote them there).
func (s *snapStore) addCopy(job string, k snapKey, world int, p checkpoint.RankPart) {
	p.Dir = s.dir(job, k)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.step(job, k, world)
	if st == nil {
		os.RemoveAll(p.Dir) // older than the one held
		return
	}
	st.parts[p.Rank] = p
	s.settle(job)
}

// settle keeps the two newest complete snapshots of job (and newer
// incomplete ones), drops the older ones (files too) and tells onHeld
// when the newest complete one changed. s.mu is held.
func (s *snapStore) settle(job string) {
	m := s.jobs[job]
	var done []snapKey
	for k, st := range m {
		if st.complete() {
			done = append(done, k)
		}
	}
	sort.Slice(done, func(a, b int) bool { return newer(done[a], done[b]) })
	if len(done) == 0 {
		return
	}
	if h, ok := s.held[job]; ok && h == done[0] {
		return
	}
	keep := done[:min(2, len(done))]
	s.held[job], s.floor[job] = keep[0], keep[len(keep)-1]
	for k := range m {
		if newer(s.floor[job], k) {
			os.RemoveAll(s.dir(job, k))
			delete(m, k)
		}
	}
	best := keep[0]
	h := &loomv1.SnapshotHolding{Job: job, Generation: best.gen, Step: best.step, WorldSize: int32(m[best].world)}
	var ranks []int
	for i := len(keep) - 1; i >= 0; i-- {
		k := keep[i]
		st := m[k]
		rs := make([]int, 0, len(st.parts))
		for r := range st.parts {
			rs = append(rs, r)
		}
		sort.Ints(rs)
		for _, r := range rs {
			b, err := json.Marshal(st.parts[r])
			if err != nil {
				continue
			}
			h.Parts = append(h.Parts, &loomv1.SnapshotSource{Rank: int32(r), PartJson: b, Step: k.step, Generation: k.gen})
		}
		if k == best {
			ranks = rs
		}
	}
	s.log.Info("worker: holding snapshot", "job", job, "generation", best.gen, "step", best.step, "ranks", ranks, "previous", keep[len(keep)-1].step)
	if s.onHeld != nil {
		s.onHeld(job, h)
	}
}

// drop removes everything the store has of job.
func (s *snapStore) drop(job string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.jobs, job)
	delete(s.held, job)
	delete(s.floor, job)
	os.RemoveAll(filepath.Join(s.root, job))
}

// part returns the store's part of rank in snapshot k of job.
func (s *snapStore) part(job string, k snapKey, rank int) (checkpoint.RankPart, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.jobs[job][k]
	if st == nil {
		return checkpoint.RankPart{}, false
	}
	p, ok := st.parts[rank]
	return p, ok
}

// snapServer serves the Snapshot service from a store.
type snapServer struct {
	loomv1.UnimplementedSnapshotServer
	store *snapStore
}

// Fetch streams one rank's files of a snapshot the store holds.
func (v *snapServer) Fetch(req *loomv1.SnapshotFetchRequest, stream loomv1.Snapshot_FetchServer) error {
	s := v.store
	if err := plainName(req.Job); err != nil {
		return err
	}
	var k snapKey
	var p checkpoint.RankPart
	found := false
	s.mu.Lock()
	for key, st := range s.jobs[req.Job] {
		if key.step != req.Step || (req.Generation != 0 && key.gen != req.Generation) {
			continue
		}
		if q, ok := st.parts[int(req.Rank)]; ok && (!found || newer(key, k)) {
			k, p, found = key, q, true
		}
	}
	s.mu.Unlock()
	if !found {
		return fmt.Errorf("worker: no snapshot of job %s step %d rank %d here", req.Job, req.Step, req.Rank)
	}
	if err := sendFiles(req.Job, k, s.dir(req.Job, k), p, stream.Send); err != nil {
		return fmt.Errorf("worker: snapshot step %d rank %d: %w", req.Step, req.Rank, err)
	}
	return nil
}

// sendFiles streams the files of part p of snapshot k (in dir) as chunks
// of at most snapChunk bytes: the first names the job, snapshot, rank and
// part, the first of each file its path.
func sendFiles(job string, k snapKey, dir string, p checkpoint.RankPart, send func(*loomv1.SnapshotChunk) error) error {
	pj, err := json.Marshal(p)
	if err != nil {
		return err
	}
	first := true
	buf := make([]byte, snapChunk)
	for _, f := range p.Files {
		fh, err := os.Open(filepath.Join(dir, f.Path))
		if err != nil {
			return err
		}
		for newFile := true; ; newFile = false {
			n, rerr := io.ReadFull(fh, buf)
			if n > 0 || newFile {
				c := &loomv1.SnapshotChunk{Data: buf[:n]}
				if newFile {
					c.Path = f.Path
				}
				if first {
					c.Job, c.Step, c.Rank, c.Generation, c.PartJson = job, k.step, int32(p.Rank), k.gen, pj
					first = false
				}
				if err := send(c); err != nil {
					fh.Close()
					return err
				}
			}
			if rerr != nil {
				break
			}
		}
		fh.Close()
	}
	return nil
}

// Push receives a peer's part of a snapshot into the store.
func (v *snapServer) Push(stream loomv1.Snapshot_PushServer) error {
	s := v.store
	c, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := plainName(c.Job); err != nil {
		return err
	}
	var p checkpoint.RankPart
	if err := json.Unmarshal(c.PartJson, &p); err != nil {
		return fmt.Errorf("worker: snapshot push: part of rank %d step %d does not parse: %w", c.Rank, c.Step, err)
	}
	world := p.Layout.WorldSize
	k := snapKey{gen: c.Generation, step: c.Step}
	dir := s.dir(c.Job, k)
	if err := receiveFiles(dir, p, c, stream.Recv); err != nil {
		return fmt.Errorf("worker: snapshot push of rank %d step %d: %w", c.Rank, c.Step, err)
	}
	s.addCopy(c.Job, k, world, p)
	return stream.SendAndClose(&loomv1.SnapshotPushReply{})
}

// plainName refuses a job name that would leave the store's directory.
func plainName(job string) error {
	if job == "" || job == "." || job == ".." || filepath.Base(job) != job {
		return fmt.Errorf("worker: snapshot service: job name %q is not a plain name", job)
	}
	return nil
}

// receiveFiles writes the files of part p from a chunk stream (first
// chunk c, then next until io.EOF) into dir, checking each file's size and
// SHA-256 against p: a file that does not match is removed and named.
func receiveFiles(dir string, p checkpoint.RankPart, c *loomv1.SnapshotChunk, next func() (*loomv1.SnapshotChunk, error)) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	want := map[string]checkpoint.FileEntry{}
	for _, f := range p.Files {
		if f.Path == "" || filepath.Base(f.Path) != f.Path {
			return fmt.Errorf("file path %q must be a plain name", f.Path)
		}
		want[f.Path] = f
	}
	got := map[string]bool{}
	var fh *os.File
	var h io.Writer
	var sum func() string
	var cur checkpoint.FileEntry
	var n int64
	finish := func() error {
		if fh == nil {
			return nil
		}
		err := fh.Close()
		fh = nil
		if err == nil && (n != cur.Size || sum() != cur.SHA256) {
			err = fmt.Errorf("%s: %d bytes with SHA-256 %.12s…, the part says %d bytes, %.12s…", cur.Path, n, sum(), cur.Size, cur.SHA256)
		}
		if err != nil {
			os.Remove(filepath.Join(dir, cur.Path))
			return err
		}
		got[cur.Path] = true
		return nil
	}
	for {
		if c.Path != "" {
			if err := finish(); err != nil {
				return err
			}
			f, ok := want[c.Path]
			if !ok || got[c.Path] {
				return fmt.Errorf("file %q is not in the part (or sent twice)", c.Path)
			}
			var err error
			if fh, err = os.Create(filepath.Join(dir, c.Path)); err != nil {
				return err
			}
			hs := sha256.New()
			h, sum, cur, n = hs, func() string { return hex.EncodeToString(hs.Sum(nil)) }, f, 0
		}
		if len(c.Data) > 0 {
			if fh == nil {
				return errors.New("data before a file's path")
			}
			if _, err := fh.Write(c.Data); err != nil {
				fh.Close()
				return err
			}
			h.Write(c.Data)
			n += int64(len(c.Data))
		}
		var err error
		c, err = next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if fh != nil {
				fh.Close()
			}
			return err
		}
	}
	if err := finish(); err != nil {
		return err
	}
	for path := range want {
		if !got[path] {
			return fmt.Errorf("file %s of the part was not sent", path)
		}
	}
	return nil
}

// snapDial connects to a peer's snapshot service (TLS: the data plane's).
func snapDial(addr string, tlsCfg *tls.Config) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if tlsCfg != nil {
		c := tlsCfg.Clone()
		if host, _, err := net.SplitHostPort(addr); err == nil && c.ServerName == "" {
			c.ServerName = host
		}
		creds = credentials.NewTLS(c)
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*snapChunk), grpc.MaxCallSendMsgSize(2*snapChunk)))
}

// pushSnapshot sends part p of snapshot k (files in dir) to the snapshot
// service at addr, within ctx.
func pushSnapshot(ctx context.Context, addr string, tlsCfg *tls.Config, job string, k snapKey, dir string, p checkpoint.RankPart) error {
	cc, err := snapDial(addr, tlsCfg)
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := loomv1.NewSnapshotClient(cc).Push(ctx)
	if err != nil {
		return err
	}
	if err := sendFiles(job, k, dir, p, stream.Send); err != nil {
		// The server's reason, if it gave one, says more than the send.
		_, err2 := stream.CloseAndRecv()
		return errors.Join(err, err2)
	}
	_, err = stream.CloseAndRecv()
	return err
}

// fetchSnapshot fetches rank's part of snapshot k of job from addr
// into dir, verified against want (the part Decide named).
func fetchSnapshot(ctx context.Context, addr string, tlsCfg *tls.Config, job string, k snapKey, rank int, dir string, want checkpoint.RankPart) error {
	cc, err := snapDial(addr, tlsCfg)
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := loomv1.NewSnapshotClient(cc).Fetch(ctx, &loomv1.SnapshotFetchRequest{Job: job, Step: k.step, Rank: int32(rank), Generation: k.gen})
	if err != nil {
		return err
	}
	c, err := stream.Recv()
	if err != nil {
		return err
	}
	return receiveFiles(dir, want, c, stream.Recv)
}

// materialize gathers every old rank's part of the snapshot m names into
// a step directory of the store, with a manifest, and returns it: parts
// this store has are linked, the others fetched from their holders within
// timeout each and verified. The directory is a complete checkpoint the
// rank restores like one on disk.
func (s *snapStore) materialize(ctx context.Context, job string, m *loomv1.MemoryResume, tlsCfg *tls.Config, timeout time.Duration) (string, error) {
	k := snapKey{gen: m.Generation, step: m.Step}
	dir := filepath.Join(s.root, job, "resume", "step-"+strconv.FormatInt(m.Step, 10))
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	parts := make([]checkpoint.RankPart, 0, len(m.Sources))
	for _, src := range m.Sources {
		var want checkpoint.RankPart
		if err := json.Unmarshal(src.PartJson, &want); err != nil {
			return "", fmt.Errorf("rank %d's part does not parse: %w", src.Rank, err)
		}
		if have, ok := s.part(job, k, int(src.Rank)); ok {
			if err := linkFiles(have.Dir, dir, want.Files); err == nil {
				parts = append(parts, want)
				continue
			}
		}
		fctx, cancel := context.WithTimeout(ctx, timeout)
		err := fetchSnapshot(fctx, src.Addr, tlsCfg, job, k, int(src.Rank), dir, want)
		cancel()
		if err != nil {
			return "", fmt.Errorf("fetch rank %d's part from worker %s at %s: %w", src.Rank, src.WorkerId, src.Addr, err)
		}
		parts = append(parts, want)
	}
	man, err := checkpoint.ManifestOf(parts)
	if err != nil {
		return "", err
	}
	man.Time = time.Now().UTC()
	b, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, checkpoint.ManifestFile), append(b, '\n'), 0o600); err != nil {
		return "", err
	}
	return dir, nil
}

// linkFiles hard-links files from one store directory to another (the
// same tmpfs: no copy), checking sizes.
func linkFiles(from, to string, files []checkpoint.FileEntry) error {
	for _, f := range files {
		src := filepath.Join(from, f.Path)
		fi, err := os.Stat(src)
		if err != nil || fi.Size() != f.Size {
			return fmt.Errorf("%s: not the part's file", src)
		}
		if err := os.Link(src, filepath.Join(to, f.Path)); err != nil {
			return err
		}
	}
	return nil
}
