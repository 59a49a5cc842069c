package main

import "syscall"

// workerProcAttr makes the kernel kill a worker when its supervisor dies,
// so that no worker trains on, or waits in NCCL forever, without it.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
