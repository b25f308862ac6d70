//go:build !linux

package bench

import (
	"errors"
	"os/exec"
	"syscall"
)

func bindNoPort(_, _ string, _ syscall.RawConn) error { return nil }

func raiseFileLimit() (uint64, error) { return 0, errors.New("bench: file limit not supported here") }

func detach(*exec.Cmd) {}

func processCPU() float64 { return 0 }
