package launch

import (
	"slices"
	"testing"
)

// TestWorkerEnv: a local worker gets GOMAXPROCS = its threads unless the
// environment (inherited or Options.Env) sets GOMAXPROCS already.
func TestWorkerEnv(t *testing.T) {
	has := func(env []string, kv string) bool { return slices.Contains(env, kv) }
	if env := workerEnv([]string{"A=1"}, []string{"B=2"}, 3); !has(env, "GOMAXPROCS=3") || !has(env, "A=1") || !has(env, "B=2") {
		t.Errorf("workerEnv = %v, want A=1 B=2 GOMAXPROCS=3", env)
	}
	if env := workerEnv([]string{"GOMAXPROCS=4"}, nil, 1); has(env, "GOMAXPROCS=1") {
		t.Errorf("workerEnv = %v: the inherited GOMAXPROCS=4 must win", env)
	}
	if env := workerEnv(nil, []string{"GOMAXPROCS=2"}, 1); has(env, "GOMAXPROCS=1") {
		t.Errorf("workerEnv = %v: Options.Env's GOMAXPROCS=2 must win", env)
	}
	if env := workerEnv(nil, nil, 0); !has(env, "GOMAXPROCS=1") {
		t.Errorf("workerEnv(threads 0) = %v, want GOMAXPROCS=1", env)
	}
}
