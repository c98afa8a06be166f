package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// `loom submit` refuses what `loom run` refuses, with the same words and
// before it looks for a coordinator: a layout that cannot run (more
// pipeline stages than blocks) is not accepted to wait for workers it
// could never use.
func TestSubmitRefusesWhatRunRefuses(t *testing.T) {
	spec, _ := fixture(t, "parallel: {pp: 2, zero: 3}\n")
	_, _, runErr := loom(t, "run", spec)
	_, _, subErr := loom(t, "submit", spec, "--coordinator", closedAddr(t))
	for what, err := range map[string]error{"run": runErr, "submit": subErr} {
		if err == nil {
			t.Fatalf("loom %s accepted pp: 2 over 1 layer", what)
		}
		for _, w := range []string{filepath.Base(spec), "parallel.pp", "got 2", "must not exceed model.n_layers (1)"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("loom %s: error does not mention %q:\n%v", what, w, err)
			}
		}
	}
}

// A job no workers come for says how many it still needs (`loom status`)
// and fails once its pending timeout passes, saying why; `loom submit`
// following it exits with that error.
func TestPendingJobTimesOut(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
	cp := startControlPlane(t)
	spec, _ := fixture(t, "parallel: {dp: 2}\n")
	out, _, err := loom(t, "submit", spec, "--coordinator", cp.addr, "--detach", "--pending-timeout", "3s")
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	var status string
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if status, _, err = loom(t, "status", "t", "--coordinator", cp.addr); err == nil && strings.Contains(status, "waiting:") {
			break
		}
	}
	for _, w := range []string{"state:      PENDING", "waiting:    2 more workers of 2", "waiting for 2 more workers (0 of 2 idle workers registered), giving up 3s after it began waiting"} {
		if !strings.Contains(status, w) {
			t.Errorf("status of the waiting job lacks %q:\n%s", w, status)
		}
	}
	// Following it: the submit ends when the timeout passes.
	_, _, err = loom(t, "submit", spec, "--coordinator", cp.addr, "--pending-timeout", "1s")
	if err == nil || !strings.Contains(err.Error(), "already PENDING") {
		t.Fatalf("second submit: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if status, _, err = loom(t, "status", "t", "--coordinator", cp.addr); err == nil && strings.Contains(status, "FAILED") {
			break
		}
	}
	if want := "gave up after waiting 3s (the pending timeout) for 2 more workers (0 of 2 idle workers registered): start more workers, or lower parallel.dp"; !strings.Contains(status, want) {
		t.Errorf("status after the timeout lacks %q:\n%s", want, status)
	}
}
