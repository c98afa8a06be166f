package coordinator

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// TestDeposedLeaderCannotWrite: apply succeeds while the election key
// holds and is refused with ErrNotLeader once another coordinator leads.
func TestDeposedLeaderCannotWrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e, err := StartEtcd(ctx, EtcdOptions{LogOutput: "discard"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	keys := NewKeys("")
	campaign := func(addr string) (*concurrency.Session, *concurrency.Election) {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
		if err != nil {
			t.Fatal(err)
		}
		el := concurrency.NewElection(s, keys.Election())
		if err := el.Campaign(ctx, addr); err != nil {
			t.Fatal(err)
		}
		return s, el
	}
	s1, old := campaign("old:1")
	acts := []Action{{Kind: PutStatus, Job: "j", Status: &loomv1.JobStatus{Name: "j", State: loomv1.JobState_JOB_STATE_PENDING}}}
	if err := apply(ctx, cli, keys, old.Key(), old.Rev(), acts, 1); err != nil {
		t.Fatalf("leader's write: %v", err)
	}
	if addr, err := LeaderAddr(ctx, cli, keys); err != nil || addr != "old:1" {
		t.Fatalf("LeaderAddr = %q, %v", addr, err)
	}
	// The old leader's lease is lost (e.g. a long pause); a new one wins.
	if _, err := cli.Revoke(ctx, s1.Lease()); err != nil {
		t.Fatal(err)
	}
	_, cur := campaign("new:2")
	if err := apply(ctx, cli, keys, old.Key(), old.Rev(), acts, 2); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's write: %v, want ErrNotLeader", err)
	}
	if err := apply(ctx, cli, keys, cur.Key(), cur.Rev(), acts, 3); err != nil {
		t.Fatalf("new leader's write: %v", err)
	}
	if addr, _ := LeaderAddr(ctx, cli, keys); addr != "new:2" {
		t.Errorf("LeaderAddr = %q, want new:2", addr)
	}
}
