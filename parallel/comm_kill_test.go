package parallel

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const (
	workerEnv = "LOOM_PARALLEL_TEST_WORKER"
	modeEnv   = "LOOM_PARALLEL_TEST_MODE"
	algoEnv   = "LOOM_PARALLEL_TEST_ALGO" // the all-reduce algorithm; default auto
)

// killElems is the all-reduce length of TestPeerKilledMidCollective: a
// large buffer (chunked frames) for Auto's choice, a small one for a
// forced latency algorithm.
func killElems(algo Algorithm) int {
	if algo == Auto {
		return 1 << 20
	}
	return 1024
}

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) != "" {
		os.Exit(killWorker())
	}
	os.Exit(m.Run())
}

// killWorker is rank 2 of TestPeerKilledMidCollective, in its own process:
// it prints its address, reads everyone's, and all-reduces until killed.
func killWorker() int {
	mode, err := ParseTransportMode(os.Getenv(modeEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tr, err := NewTransport(context.Background(), TransportOptions{ListenAddr: "127.0.0.1:0", Mode: mode})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	algo, err := ParseAlgorithm(cmp.Or(os.Getenv(algoEnv), "auto"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("addr %s\n", tr.Addr())
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return 1
	}
	addrs := strings.Fields(in.Text())
	g, err := tr.NewGroup(GroupSpec{Job: "kill", Name: "g", Ranks: []int{0, 1, 2}, MyRank: 2,
		Addrs: map[int]string{0: addrs[0], 1: addrs[1]}, Timeout: 30 * time.Second, ChunkBytes: 64 << 10, AllReduce: algo})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	buf := make([]float32, killElems(algo))
	for {
		if err := g.AllReduce(context.Background(), buf, Mean); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
}

// TestPeerKilledMidCollective SIGKILLs a worker process while the other
// ranks are in all-reduces with it: they fail within seconds — the group
// Timeout is 30s — with an error naming the killed rank and its address,
// and later calls fail at once. Auto's algorithms on a 4 MiB buffer, and
// the direct all-reduce on 4 KiB.
func TestPeerKilledMidCollective(t *testing.T) {
	forModes(t, func(t *testing.T, opts TransportOptions) { testPeerKilledMidCollective(t, opts, Auto) })
	t.Run("direct", func(t *testing.T) {
		forModes(t, func(t *testing.T, opts TransportOptions) { testPeerKilledMidCollective(t, opts, Direct) })
	})
}

func testPeerKilledMidCollective(t *testing.T, opts TransportOptions, algo Algorithm) {
	ctx := testCtx(t, 60*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), workerEnv+"=1", modeEnv+"="+opts.Mode.String(), algoEnv+"="+algo.String())
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatal("worker printed no address")
	}
	childAddr := strings.TrimPrefix(sc.Text(), "addr ")
	c := newCluster(t, 2, opts)
	c.addrs[2] = childAddr
	fmt.Fprintf(stdin, "%s %s\n", c.addrs[0], c.addrs[1])
	gs := c.groups(t, GroupSpec{Job: "kill", Name: "g", Ranks: []int{0, 1, 2}, Timeout: 30 * time.Second, ChunkBytes: 64 << 10, AllReduce: algo})[:2]

	var killedAt time.Time
	done := make(chan struct{})
	iters := make([]int, 2)
	go func() {
		defer close(done)
		// Let a few all-reduces complete, then kill.
		time.Sleep(300 * time.Millisecond)
		killedAt = time.Now()
		cmd.Process.Kill()
	}()
	errs := each(2, func(i int) error {
		buf := make([]float32, killElems(algo))
		for {
			if err := gs[i].AllReduce(ctx, buf, Mean); err != nil {
				return err
			}
			iters[i]++
		}
	})
	<-done
	if d := time.Since(killedAt); d > 5*time.Second {
		t.Errorf("ranks failed %v after the kill", d)
	}
	t.Logf("iterations before the kill: %v; errors: %v", iters, errs)
	if iters[0] == 0 {
		t.Log("warning: no all-reduce completed before the kill")
	}
	for i, err := range errs {
		checkPeerError(t, err, 2, childAddr, ErrPeerGone)
		if err := gs[i].AllReduce(ctx, make([]float32, 4), Sum); err == nil {
			t.Error("a later call succeeded")
		} else {
			checkPeerError(t, err, 2, childAddr, ErrPeerGone)
		}
	}
}
