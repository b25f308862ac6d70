package bench

import (
	"os/exec"
	"syscall"
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind the
// source address now, choose the port at connect time.
const ipBindAddressNoPort = 24

// bindNoPort is a net.Dialer Control function setting ipBindAddressNoPort,
// best effort.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
}

// raiseFileLimit raises the soft open-files limit to the hard one and
// returns the soft limit in force.
func raiseFileLimit() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			return 0, err
		}
	}
	return r.Cur, nil
}

// processCPU returns this process's user + system CPU time in seconds
// (0 when unknown).
func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// detach puts a worker process in its own process group, so that a
// terminal's Ctrl-C reaches the parent only (which then ends the workers
// by closing their stdin). (Pdeathsig is not used: it fires when the
// forking OS thread exits, which the Go runtime may do at any time.)
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
