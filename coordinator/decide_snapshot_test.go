package coordinator

import (
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// holdSnapshots records the snapshot of step taken by generation gen as
// the workers ids (rank d on ids[d]) hold it: rank d sends its part to its
// data-parallel neighbour (d+1) mod dp, so the worker of rank d holds
// ranks d and (d-1) mod dp, ordered by rank.
func (s *scene) holdSnapshots(gen uint64, step int64, ids ...string) {
	j := s.job()
	if j.Snapshots == nil {
		j.Snapshots = map[string]*loomv1.SnapshotHolding{}
	}
	for d, id := range ids {
		prev := (d + len(ids) - 1) % len(ids)
		h := &loomv1.SnapshotHolding{Job: "e", WorkerId: id, Addr: "snap-" + id, Generation: gen, Step: step, WorldSize: int32(len(ids))}
		for _, r := range []int{d, prev} {
			part := &loomv1.SnapshotSource{Rank: int32(r), PartJson: []byte(fmt.Sprintf(`{"rank":%d}`, r)), Step: step, Generation: gen}
			if r == prev && prev > d {
				h.Parts = append([]*loomv1.SnapshotSource{part}, h.Parts...)
				continue
			}
			h.Parts = append(h.Parts, part)
		}
		if old := j.Snapshots[id]; old != nil && old.Generation == gen {
			// The worker keeps its previous complete snapshot too.
			h.Parts = append(old.Parts, h.Parts...)
		}
		j.Snapshots[id] = h
	}
}

func sources(m *loomv1.MemoryResume) string {
	out := ""
	for _, s := range m.Sources {
		out += fmt.Sprintf("%d@%s ", s.Rank, s.WorkerId)
	}
	return out
}

// TestDecideSnapshotResumesFromMemory: a worker killed at step 10 of a
// job checkpointed to disk at step 8 and snapshotted in memory at step 10;
// its rank's part survives on its neighbour, so the restart at dp 3
// resumes from memory step 10 (nothing lost) and names where each old
// rank's part is, keeping the disk checkpoint as the fallback.
func TestDecideSnapshotResumesFromMemory(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(10)
	s.holdSnapshots(1, 10, "w1", "w2", "w3", "w4")
	s.expire("w4")
	s.want(s.decide(), "unassign e; hold w1; hold w2; hold w3; status e WAITING gen=1")
	s.reannounce("w1", "w2", "w3")
	s.want(s.decide(), "release w1; release w2; release w3; assign e gen=2 [0=w1(0,0,0) 1=w2(1,0,0) 2=w3(2,0,0)]; status e RUNNING gen=2")
	a := s.job().Assignment
	if a.Resume != "/ck/e/step-8" || a.ResumeStep != 8 {
		t.Errorf("disk fallback %q step %d; want /ck/e/step-8", a.Resume, a.ResumeStep)
	}
	m := a.Memory
	if m == nil {
		t.Fatal("no memory resume; want memory step 10")
	}
	// Rank 3 (w4's) is held by w1, its neighbour ((3+1) mod 4 = 0).
	if m.Step != 10 || m.Generation != 1 || m.WorldSize != 4 || sources(m) != "0@w1 1@w2 2@w3 3@w1 " {
		t.Errorf("memory step %d gen %d world %d sources %s; want step 10 gen 1 world 4 sources 0@w1 1@w2 2@w3 3@w1", m.Step, m.Generation, m.WorldSize, sources(m))
	}
	if m.Sources[3].Addr != "snap-w1" || string(m.Sources[3].PartJson) != `{"rank":3}` || m.Sources[3].Step != 10 {
		t.Errorf("rank 3's source %+v", m.Sources[3])
	}
	r := s.lastRecovery()
	if r.ResumeStep != 10 || r.ResumeSource != "memory" || r.LostSteps != 0 {
		t.Errorf("recovery resume %d from %q lost %d; want memory step 10, 0 lost", r.ResumeStep, r.ResumeSource, r.LostSteps)
	}
	// The ranks restored step 10: the record stays.
	s.progress(11, 1_004_000)
	for _, p := range s.job().Progress {
		p.ResumeStep = 10
	}
	s.decide()
	if r := s.lastRecovery(); r.ResumeStep != 10 || r.LostSteps != 0 || r.ResumedUnixMs != 1_004_000 {
		t.Errorf("recovery after the first step %+v", r)
	}
}

// TestDecideSnapshotFallsBackToDisk: the cases where memory cannot serve.
func TestDecideSnapshotFallsBackToDisk(t *testing.T) {
	cases := []struct {
		name  string
		setup func(s *scene)
		kill  []string
	}{
		// w4 (rank 3) and w1 (rank 0, which held rank 3's copy) both die:
		// rank 3's part survives nowhere.
		{"part only on lost workers", func(s *scene) { s.holdSnapshots(1, 10, "w1", "w2", "w3", "w4") }, []string{"w1", "w4"}},
		// The snapshot is not newer than the disk checkpoint.
		{"not newer than disk", func(s *scene) { s.holdSnapshots(1, 8, "w1", "w2", "w3", "w4") }, []string{"w4"}},
		// An older generation's snapshot may be on an abandoned timeline.
		{"older generation", func(s *scene) { s.holdSnapshots(0, 10, "w1", "w2", "w3", "w4") }, []string{"w4"}},
		// Holders disagree on the world size of one step.
		{"layouts disagree", func(s *scene) {
			s.holdSnapshots(1, 10, "w1", "w2", "w3", "w4")
			s.job().Snapshots["w2"].WorldSize = 2
		}, []string{"w4"}},
		// w1 (rank 0, holding rank 3's copies) holds only step 10, which
		// the others lack; step 6 lacks rank 3 (its copy is gone with w1's
		// older snapshots, its own with w4). A worker keeps two complete
		// snapshots so that this does not happen (the skewed case below).
		{"skewed, previous dropped", func(s *scene) {
			s.holdSnapshots(1, 6, "w1", "w2", "w3", "w4")
			s.job().Snapshots["w1"].Parts = nil
			s.holdSnapshots(1, 10, "w1")
			s.job().Snapshots["w1"].WorldSize = 4
		}, []string{"w4"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newScene(t, 1, 4, 4)
			s.start(10)
			c.setup(s)
			s.expire(c.kill...)
			s.decide()
			var alive []string
			for _, w := range s.o.Workers {
				alive = append(alive, w.Id)
			}
			s.reannounce(alive...)
			s.decide()
			a := s.job().Assignment
			if a == nil || a.Generation != 2 {
				t.Fatalf("no generation 2: %s", s.job().Status.GetMessage())
			}
			if a.Memory != nil {
				t.Errorf("memory resume step %d (%s); want the disk checkpoint", a.Memory.Step, sources(a.Memory))
			}
			if a.ResumeStep != 8 {
				t.Errorf("resume step %d, want 8", a.ResumeStep)
			}
			if r := s.lastRecovery(); r.ResumeSource != "disk" || r.ResumeStep != 8 || r.LostSteps != 2 {
				t.Errorf("recovery from %q step %d lost %d; want disk step 8, 2 lost", r.ResumeSource, r.ResumeStep, r.LostSteps)
			}
		})
	}
}

// TestDecideSnapshotSkewedWorkers: the workers complete a snapshot at
// slightly different times — w1 holds step 8 (and still 6), w2 and w3
// hold 6 (and 4): step 8 lacks rank 1's and rank 2's parts, step 6 is
// whole, and is what the restart resumes from.
func TestDecideSnapshotSkewedWorkers(t *testing.T) {
	s := newScene(t, 2, 4, 4)
	s.start(7) // disk checkpoint at step 4
	s.holdSnapshots(1, 4, "w1", "w2", "w3", "w4")
	s.holdSnapshots(1, 6, "w1", "w2", "w3", "w4")
	w1 := s.job().Snapshots["w1"]
	w1.Parts = w1.Parts[2:] // step 6 only, then 8
	w1.Parts = append(w1.Parts, &loomv1.SnapshotSource{Rank: 0, PartJson: []byte(`{}`), Step: 8, Generation: 1},
		&loomv1.SnapshotSource{Rank: 3, PartJson: []byte(`{}`), Step: 8, Generation: 1})
	w1.Step = 8
	s.expire("w4")
	s.decide()
	s.reannounce("w1", "w2", "w3")
	s.decide()
	m := s.job().Assignment.Memory
	if m == nil || m.Step != 6 || sources(m) != "0@w1 1@w2 2@w3 3@w1 " {
		t.Fatalf("memory resume %v; want step 6 from 0@w1 1@w2 2@w3 3@w1", m)
	}
	if r := s.lastRecovery(); r.ResumeSource != "memory" || r.LostSteps != 1 {
		t.Errorf("recovery from %q, %d lost; want memory, 7 − 6 = 1", r.ResumeSource, r.LostSteps)
	}
}

// TestDecideSnapshotLostByPeerBeforeLease: a worker a peer saw disconnect
// is named lost before its lease expires; its snapshot key is still there
// but does not count.
func TestDecideSnapshotLostByPeerBeforeLease(t *testing.T) {
	s := newScene(t, 1, 4, 4)
	s.start(10)
	s.holdSnapshots(1, 10, "w1", "w2", "w3", "w4")
	// w4 (rank 3) keeps its lease but ranks 1 and 2 lost their
	// connections to it, and w1 (which holds rank 3's copy) is gone: rank
	// 3's part is only on a lost worker.
	j := s.job()
	for _, r := range []int{1, 2} {
		j.Results[r] = &loomv1.RankResult{Job: "e", Generation: 1, Rank: int32(r), Error: "peer lost", LostPeer: &loomv1.PeerLoss{Rank: 3}}
	}
	s.expire("w1")
	s.decide()
	s.reannounce("w2", "w3", "w4")
	s.decide()
	if a := s.job().Assignment; a == nil || a.Memory != nil {
		t.Fatalf("assignment %v; want generation 2 from disk (rank 3's and rank 0's holders are lost)", a)
	}
}

// The leader reads each worker's snapshot record into its job's
// observation, keyed by worker.
func TestDecodeSnapshotHoldings(t *testing.T) {
	keys := NewKeys("")
	h := &loomv1.SnapshotHolding{Job: "e", Addr: "127.0.0.1:9", Generation: 2, Step: 6, WorldSize: 3,
		Parts: []*loomv1.SnapshotSource{{Rank: 1, PartJson: []byte(`{}`)}, {Rank: 2, PartJson: []byte(`{}`)}}}
	kvs := []*mvccpb.KeyValue{
		{Key: []byte(keys.Desired("e")), Value: []byte(Encode(&loomv1.JobDesired{Name: "e", SpecYaml: []byte("name: e\ndata: {path: a}\n")})), ModRevision: 1},
		{Key: []byte(keys.Snapshot("e", "w-2")), Value: []byte(Encode(h)), ModRevision: 2},
	}
	s := decodeSnapshot(2, kvs, keys, "v1")
	if len(s.Problems) != 0 || len(s.Observed.Jobs) != 1 {
		t.Fatalf("problems %v, %d jobs", s.Problems, len(s.Observed.Jobs))
	}
	got := s.Observed.Jobs[0].Snapshots["w-2"]
	if got == nil || got.WorkerId != "w-2" || got.Step != 6 || got.Generation != 2 || len(got.Parts) != 2 {
		t.Fatalf("snapshot holdings %v", s.Observed.Jobs[0].Snapshots)
	}
}
