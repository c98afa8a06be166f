package worker

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/loomtrain/loom/checkpoint"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// testStore is a store served on a local port.
type testStore struct {
	*snapStore
	addr string
	mu   sync.Mutex
	held []*loomv1.SnapshotHolding
}

func newTestStore(t *testing.T) *testStore {
	t.Helper()
	ts := &testStore{}
	s, err := newSnapStore(slog.New(slog.NewTextHandler(io.Discard, nil)), func(_ string, h *loomv1.SnapshotHolding) {
		ts.mu.Lock()
		ts.held = append(ts.held, h)
		ts.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	ts.snapStore = s
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	loomv1.RegisterSnapshotServer(srv, &snapServer{store: s})
	go srv.Serve(lis)
	t.Cleanup(func() {
		srv.Stop()
		s.close()
		if _, err := os.Stat(s.root); !os.IsNotExist(err) {
			t.Errorf("store %s left behind: %v", s.root, err)
		}
	})
	ts.addr = lis.Addr().String()
	return ts
}

func (ts *testStore) lastHeld() *loomv1.SnapshotHolding {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.held) == 0 {
		return nil
	}
	return ts.held[len(ts.held)-1]
}

func (ts *testStore) heldPart(t *testing.T, step int64, rank int) []byte {
	t.Helper()
	for _, p := range ts.lastHeld().Parts {
		if int(p.Rank) == rank && p.Step == step {
			return p.PartJson
		}
	}
	t.Fatalf("rank %d of step %d not held", rank, step)
	return nil
}

func (ts *testStore) lastHeldPart(t *testing.T, step int64, rank int) checkpoint.RankPart {
	t.Helper()
	var part checkpoint.RankPart
	if err := json.Unmarshal(ts.heldPart(t, step, rank), &part); err != nil {
		t.Fatal(err)
	}
	return part
}

// writePart writes rank's part of step (a two-rank dp layout) as the
// trainer would, under the store's write directory.
func writePart(t *testing.T, s *snapStore, gen uint64, step, rank int) checkpoint.RankPart {
	t.Helper()
	data := make([]float32, 300_000) // more than one streamed chunk
	for i := range data {
		data[i] = float32(step*1000 + rank*100 + i%97)
	}
	snap := &checkpoint.Snapshot{
		Part:   checkpoint.RankPart{Job: "j", Step: step, Rank: rank, Layout: checkpoint.Layout{DP: 2, TP: 1, PP: 1, WorldSize: 2}},
		State:  checkpoint.RankState{DataStep: step, ScheduleStep: step},
		Slices: []checkpoint.Slice{{Key: checkpoint.ChunkKey(checkpoint.KindParam, "w", []int{rank * len(data)}), Kind: checkpoint.KindParam, Name: "w", Shape: []int{2 * len(data)}, Offsets: []int{rank * len(data)}, Sizes: []int{len(data)}, Len: int64(len(data))}},
		Data:   data,
	}
	p, err := checkpoint.WriteRank(context.Background(), s.writeDir("j", gen), snap, checkpoint.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Two workers of a dp 2 generation: each keeps its part and pushes a copy
// to the other; each holds a step only once both parts are there, drops
// the older step then, and a third store gathers the snapshot from them
// (fetched, verified) into a checkpoint that opens. A corrupted copy is
// refused naming the file.
func TestSnapshotStorePushFetch(t *testing.T) {
	a, b := newTestStore(t), newTestStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(s, peer *testStore, step, rank, pred int) {
		t.Helper()
		p := writePart(t, s.snapStore, 1, step, rank)
		k := snapKey{gen: 1, step: int64(step)}
		if err := s.addOwn("j", k, 2, pred, p); err != nil {
			t.Fatal(err)
		}
		own, _ := s.part("j", k, rank)
		if err := pushSnapshot(ctx, peer.addr, nil, "j", k, s.dir("j", k), own); err != nil {
			t.Fatal(err)
		}
	}
	put(a, b, 2, 0, 1)
	if h := a.lastHeld(); h != nil {
		t.Fatalf("a holds step %d with only its own part", h.Step)
	}
	put(b, a, 2, 1, 0)
	for _, s := range []*testStore{a, b} {
		h := s.lastHeld()
		if h == nil || h.Step != 2 || h.Generation != 1 || h.WorldSize != 2 || len(h.Parts) != 2 || h.Parts[0].Rank != 0 || h.Parts[1].Rank != 1 || h.Parts[1].Step != 2 {
			t.Fatalf("holding %v; want step 2 of generation 1, ranks 0 and 1", h)
		}
	}
	put(a, b, 4, 0, 1)
	if h := a.lastHeld(); h.Step != 2 {
		t.Errorf("a holds step %d before step 4 is complete", h.Step)
	}
	put(b, a, 4, 1, 0)
	// Two complete snapshots are kept: the workers may complete a step at
	// different times.
	if h := a.lastHeld(); h.Step != 4 || len(h.Parts) != 4 || h.Parts[0].Step != 2 || h.Parts[3].Step != 4 {
		t.Errorf("a holds %v, want step 4 and step 2 (4 parts)", h)
	}
	if _, err := os.Stat(a.dir("j", snapKey{1, 2})); err != nil {
		t.Errorf("step 2 dropped as soon as step 4 completed: %v", err)
	}
	put(a, b, 6, 0, 1)
	put(b, a, 6, 1, 0)
	if _, err := os.Stat(a.dir("j", snapKey{1, 2})); !os.IsNotExist(err) {
		t.Errorf("step 2 kept after steps 4 and 6 completed: %v", err)
	}

	// A new worker gathers step 4: rank 0 from a, rank 1 from b.
	c := newTestStore(t)
	m := &loomv1.MemoryResume{Step: 4, Generation: 1, WorldSize: 2, Sources: []*loomv1.SnapshotSource{
		{Rank: 0, WorkerId: "a", Addr: a.addr, PartJson: a.heldPart(t, 4, 0)},
		{Rank: 1, WorkerId: "b", Addr: b.addr, PartJson: b.heldPart(t, 4, 1)},
	}}
	dir, err := c.materialize(ctx, "j", m, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := checkpoint.Open(dir)
	if err != nil {
		t.Fatalf("the gathered snapshot does not open as a checkpoint: %v", err)
	}
	if ck.Manifest.Step != 4 || ck.State.Step != 4 || len(ck.Manifest.Files) != 4 {
		t.Errorf("manifest step %d state %d files %d", ck.Manifest.Step, ck.State.Step, len(ck.Manifest.Files))
	}
	// A holder's own store is linked, not fetched.
	if _, err := a.materialize(ctx, "j", m, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// A part whose checksum does not match what Decide named is refused.
	var bad checkpoint.RankPart
	if err := json.Unmarshal(m.Sources[1].PartJson, &bad); err != nil {
		t.Fatal(err)
	}
	bad.Files[0].SHA256 = strings.Repeat("0", 64)
	m.Sources[1].PartJson, _ = json.Marshal(bad)
	_, err = newTestStore(t).materialize(ctx, "j", m, nil, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "rank 1") || !strings.Contains(err.Error(), bad.Files[0].Path) || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("a mismatched part: %v", err)
	}
	// A push naming a job outside the store is refused.
	if err := pushSnapshot(ctx, b.addr, nil, "../x", snapKey{1, 6}, a.dir("j", snapKey{1, 4}), a.lastHeldPart(t, 6, 0)); err == nil || !strings.Contains(err.Error(), "not a plain name") {
		t.Errorf("a push for job ../x: %v", err)
	}
	// A holder that is gone fails within the deadline, naming it.
	m.Sources[1].PartJson, _ = json.Marshal(bad)
	m.Sources[1].Addr = "127.0.0.1:1"
	t0 := time.Now()
	_, err = newTestStore(t).materialize(ctx, "j", m, nil, time.Second)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") || time.Since(t0) > 20*time.Second {
		t.Errorf("an unreachable holder: %v", err)
	}
}
