//go:build !linux

package main

import "syscall"

// workerProcAttr: only Linux can tie a worker's life to its supervisor's.
func workerProcAttr() *syscall.SysProcAttr { return nil }
