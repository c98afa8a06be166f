package coordinator

import (
	"context"
	"strings"
	"testing"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// TestSubmitIdempotentForOneRun: a submit retried after a failover (the
// same run id and spec) is accepted again; another run of the same name
// while the first is pending is refused; max_restarts < 0 takes the
// spec's elastic.max_restarts.
func TestSubmitIdempotentForOneRun(t *testing.T) {
	cli := metricsEtcd(t)
	c, err := New(Config{Etcd: cli, Addr: "test:1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	spec := []byte("name: s\ndata: {path: x.bin}\nparallel: {dp: 2}\ntrain: {global_batch: 4, micro_batch: 1}\nelastic: {max_restarts: 7}\n")
	req := &loomv1.SubmitRequest{SpecYaml: spec, RunId: "run-1", MaxRestarts: -1}
	if _, err := c.Submit(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, req); err != nil {
		t.Fatalf("the same run submitted again: %v", err)
	}
	d, err := c.readDesired(ctx, "s")
	if err != nil || d.MaxRestarts != 7 || d.RunId != "run-1" {
		t.Fatalf("desired %v, %v: want the spec's 7 restarts and run-1", d, err)
	}
	_, err = c.Submit(ctx, &loomv1.SubmitRequest{SpecYaml: spec, RunId: "run-2"})
	if err == nil || !strings.Contains(err.Error(), "already PENDING") {
		t.Fatalf("another run of the same name: %v, want already PENDING", err)
	}
	if _, err := c.Submit(ctx, &loomv1.SubmitRequest{SpecYaml: append(spec, "# changed\n"...), RunId: "run-1"}); err == nil {
		t.Fatal("the same run id with another spec was accepted")
	}
}
