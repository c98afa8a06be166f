package launch

import "syscall"

// workerProcAttr puts a worker in its own process group (so Ctrl-C at the
// terminal reaches only `loom run`, which then stops the workers in order)
// and has the kernel kill it if the launching thread dies.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
