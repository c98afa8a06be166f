package cpuset

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Allowed returns the CPUs this process may run on (its affinity mask).
func Allowed() (Set, error) {
	var m unix.CPUSet
	if err := unix.SchedGetaffinity(0, &m); err != nil {
		return nil, fmt.Errorf("cpuset: read this process's CPU affinity: %w", err)
	}
	var s Set
	for c := 0; c < len(m)*64; c++ {
		if m.IsSet(c) {
			s = append(s, c)
		}
	}
	return s, nil
}

// Bind restricts every thread of this process to the CPUs of s. A thread
// started later inherits the mask of the thread that starts it, so the
// process stays bound; threads that appear while Bind runs are caught by
// going over /proc/self/task until a pass finds none it had not bound.
func Bind(s Set) error {
	if len(s) == 0 {
		return fmt.Errorf("cpuset: bind to an empty CPU set")
	}
	var m unix.CPUSet
	for _, c := range s {
		if c >= len(m)*64 {
			return fmt.Errorf("cpuset: CPU %d is beyond the %d this system's affinity masks hold", c, len(m)*64)
		}
		m.Set(c)
	}
	bound := make(map[int]bool)
	for pass := 0; pass < 10; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("cpuset: list this process's threads: %w", err)
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || bound[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &m); err != nil {
				if err == unix.ESRCH {
					continue // the thread exited meanwhile
				}
				return fmt.Errorf("cpuset: bind thread %d to CPUs %s: %w", tid, s, err)
			}
			bound[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
	return fmt.Errorf("cpuset: bind to CPUs %s: threads kept starting through %d passes over /proc/self/task; bind before starting work", s, 10)
}
