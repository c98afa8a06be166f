package cpuset

import (
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBindEveryThread binds the test process to one CPU and reads every
// thread's mask back, then restores the original mask.
func TestBindEveryThread(t *testing.T) {
	all, err := Allowed()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 {
		t.Fatal("Allowed returned no CPUs")
	}
	defer func() {
		if err := Bind(all); err != nil {
			t.Errorf("restore the mask %s: %v", all, err)
		}
	}()
	one := Set{all[len(all)-1]}
	if err := Bind(one); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		var m unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &m); err != nil {
			continue // exited meanwhile
		}
		if m.Count() != 1 || !m.IsSet(one[0]) {
			t.Errorf("thread %d: mask has %d CPUs (CPU %d set: %v), want only CPU %d", tid, m.Count(), one[0], m.IsSet(one[0]), one[0])
		}
	}
	if got, _ := Allowed(); len(got) != 1 || got[0] != one[0] {
		t.Errorf("Allowed after Bind(%s) = %s", one, got)
	}
	if err := Bind(Set{}); err == nil {
		t.Error("Bind of an empty set succeeded")
	}
}
