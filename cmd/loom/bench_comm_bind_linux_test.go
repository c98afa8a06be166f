package main

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestStartBound: a child started by startBound runs on that one CPU
// (every thread inherits the mask), and this thread's mask is restored.
func TestStartBound(t *testing.T) {
	cpus := commCPUs()
	if len(cpus) == 0 {
		t.Skip("no CPU mask")
	}
	last := cpus[len(cpus)-1]
	cmd := exec.Command("grep", "Cpus_allowed_list", "/proc/self/status")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := startBound(cmd, last); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(strings.TrimPrefix(out.String(), "Cpus_allowed_list:")); got != strconv.Itoa(last) {
		t.Errorf("child's CPUs %q, want %d", got, last)
	}
	if after := commCPUs(); len(after) != len(cpus) {
		t.Errorf("after the start this process may use CPUs %v, want %v", after, cpus)
	}
}
