package main

import (
	"fmt"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// commCPUs returns the CPUs this process may run on, in order.
func commCPUs() []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil
	}
	var cpus []int
	for c := range 1024 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// startBound starts cmd bound to cpu: the child is forked from this
// goroutine's thread, whose CPU mask it and all its threads inherit, so
// the thread is locked and given that one CPU for the fork, then its
// mask is restored.
func startBound(cmd *exec.Cmd, cpu int) error {
	runtime.LockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading the CPU mask: %w", err)
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("binding to CPU %d: %w", cpu, err)
	}
	err := cmd.Start()
	if rerr := unix.SchedSetaffinity(0, &old); rerr != nil {
		// Leave the thread locked: it ends with this goroutine's next
		// exit instead of running other goroutines on one CPU.
		return fmt.Errorf("restoring the CPU mask: %w (start: %v)", rerr, err)
	}
	runtime.UnlockOSThread()
	return err
}
