//go:build !linux

package main

import (
	"errors"
	"os/exec"
)

// commCPUs returns nil: binding ranks to CPUs is implemented on Linux only.
func commCPUs() []int { return nil }

func startBound(cmd *exec.Cmd, cpu int) error {
	return errors.New("--bind core: binding to a CPU is implemented on Linux only")
}
