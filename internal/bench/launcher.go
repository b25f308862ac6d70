package bench

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"time"
)

// workerFlag is the hidden first argument that makes Main a worker.
const workerFlag = "--worker"

// workerCommand returns the command line that starts a worker process:
// this binary, re-executed as "herald bench --worker". Tests replace it.
var workerCommand = func() (string, []string, error) {
	exe, err := os.Executable()
	return exe, []string{"bench", workerFlag}, err
}

// workerHandle is a running worker: the parent writes JSON lines to In,
// reads them from Out, and must close In before Wait.
type workerHandle interface {
	In() io.WriteCloser
	Out() io.Reader
	// Wait waits for the worker to end, at most until ctx ends, then
	// kills it (a process) and returns ctx's error.
	Wait(ctx context.Context) error
}

// startWorker starts a worker as a process, or as a goroutine in this
// process when inProcess is set. stderr receives its diagnostics.
func startWorker(ctx context.Context, inProcess bool, stderr io.Writer) (workerHandle, error) {
	if inProcess {
		return startGoroutineWorker(ctx, stderr), nil
	}
	return startProcessWorker(stderr)
}

// processWorker is a worker process.
type processWorker struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.Reader
	done chan error // Wait's result, once
}

func startProcessWorker(stderr io.Writer) (*processWorker, error) {
	path, args, err := workerCommand()
	if err != nil {
		return nil, err
	}
	// Not CommandContext: the parent ends workers by closing their stdin,
	// which lets them report; Wait kills them only past its deadline.
	cmd := exec.Command(path, args...)
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	detach(cmd)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &processWorker{cmd: cmd, in: in, out: out}, nil
}

func (p *processWorker) In() io.WriteCloser { return p.in }
func (p *processWorker) Out() io.Reader     { return p.out }

func (p *processWorker) Wait(ctx context.Context) error {
	if p.done == nil {
		p.done = make(chan error, 1)
		go func() { p.done <- p.cmd.Wait() }()
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.done
		return ctx.Err()
	}
}

// goroutineWorker runs runWorker in this process over pipes.
type goroutineWorker struct {
	in     *io.PipeWriter
	out    *io.PipeReader
	cancel context.CancelFunc
	done   chan int
}

func startGoroutineWorker(ctx context.Context, stderr io.Writer) *goroutineWorker {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	g := &goroutineWorker{in: inW, out: outR, cancel: cancel, done: make(chan int, 1)}
	go func() {
		code := runWorker(ctx, inR, outW, stderr)
		outW.Close()
		g.done <- code
	}()
	return g
}

func (g *goroutineWorker) In() io.WriteCloser { return g.in }
func (g *goroutineWorker) Out() io.Reader     { return g.out }

func (g *goroutineWorker) Wait(ctx context.Context) error {
	defer g.cancel()
	select {
	case code := <-g.done:
		g.done <- code
		if code != 0 {
			return errors.New("worker failed")
		}
		return nil
	case <-ctx.Done():
		g.cancel()
		<-g.done
		return ctx.Err()
	}
}
