package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
// before it looks for a coordinator: a layout this build cannot run (ZeRO
// 3 with pipeline parallelism) is not accepted to wait for workers it
// could never use.
func TestSubmitRefusesWhatRunRefuses(t *testing.T) {
	spec, _ := fixture(t, "parallel: {pp: 2, zero: 3}\n")
	src, _ := os.ReadFile(spec)
	os.WriteFile(spec, []byte(strings.Replace(string(src), "n_layers: 1", "n_layers: 2", 1)), 0o644)
	_, _, runErr := loom(t, "run", spec)
	_, _, subErr := loom(t, "submit", spec, "--coordinator", closedAddr(t))
	for what, err := range map[string]error{"run": runErr, "submit": subErr} {
		if err == nil {
			t.Fatalf("loom %s accepted pp: 2, zero: 3", what)
		}
		for _, w := range []string{filepath.Base(spec), "parallel.zero", "got 3", "ZeRO stage 3 does not run with pipeline parallelism"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("loom %s: error does not mention %q:\n%v", what, w, err)
			}
		}
	}
}
