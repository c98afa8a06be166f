//go:build unix && !linux

package launch

import "syscall"

// workerProcAttr puts a worker in its own process group; without Linux's
// Pdeathsig a worker outlives a crashed launcher until its coordinator
// disappears.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
