package bench

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"
)

// The parent and its workers talk in JSON lines: the parent writes
// parentMsg lines to a worker's stdin, the worker writes workerMsg lines
// to its stdout. A worker's stderr is the parent's stderr.
//
//	parent → worker: config, then start, then finish
//	worker → parent: progress (every half second), ready (every
//	subscriber connected or failed), result (after finish), or error
//
// A worker that reads EOF on stdin (the parent is gone) closes its
// connections and exits.

// Message types.
const (
	msgConfig   = "config"
	msgStart    = "start"
	msgFinish   = "finish"
	msgProgress = "progress"
	msgReady    = "ready"
	msgResult   = "result"
	msgError    = "error"
)

// parentMsg is one line from the parent to a worker.
type parentMsg struct {
	Type      string             `json:"type"`
	Config    *workerConfig      `json:"config,omitempty"`    // config
	Start     *startInfo         `json:"start,omitempty"`     // start
	Published []channelPublished `json:"published,omitempty"` // finish, indexed by channel
}

// workerConfig is a worker's share of the run: subscribers First …
// First+Count-1 of the run's global numbering.
type workerConfig struct {
	ID          int     `json:"id"`
	Run         Config  `json:"run"`
	First       int     `json:"first"`
	Count       int     `json:"count"`
	ConnectRate float64 `json:"connect_rate"` // this worker's share; 0 = unlimited
	DeadlineNS  int64   `json:"deadline_ns"`  // hard stop, Unix nanoseconds
}

// startInfo opens the run. Deliveries of messages sent in
// [MeasureFromNS, MeasureToNS) are timed; all are checked for loss.
type startInfo struct {
	StartNS       int64 `json:"start_ns"`
	MeasureFromNS int64 `json:"measure_from_ns"`
	MeasureToNS   int64 `json:"measure_to_ns"`
}

// channelPublished is the publisher's account of one channel: sequence
// numbers 1..Max were sent; those in Failed (ascending) got no successful
// answer.
type channelPublished struct {
	Max    uint64   `json:"max"`
	Failed []uint64 `json:"failed,omitempty"`
}

// workerMsg is one line from a worker to the parent.
type workerMsg struct {
	Type  string       `json:"type"`
	Stats *workerStats `json:"stats,omitempty"` // progress, ready, result
	Error string       `json:"error,omitempty"` // error
}

// workerStats are a worker's cumulative figures. The integrity fields are
// filled in the result only.
type workerStats struct {
	Attempted     int64      `json:"attempted"`
	Connected     int64      `json:"connected"`
	ConnectFailed int64      `json:"connect_failed"`
	Disconnected  int64      `json:"disconnected"`
	FirstDialNS   int64      `json:"first_dial_ns,omitempty"`
	LastConnectNS int64      `json:"last_connect_ns,omitempty"`
	Delivered     uint64     `json:"delivered"`
	Measured      uint64     `json:"measured"`
	Latency       *Histogram `json:"latency,omitempty"`
	Handshake     *Histogram `json:"handshake,omitempty"`

	Expected       uint64   `json:"expected,omitempty"`
	Lost           uint64   `json:"lost,omitempty"`
	Duplicates     uint64   `json:"duplicates,omitempty"`
	OutOfOrder     uint64   `json:"out_of_order,omitempty"`
	Unexpected     uint64   `json:"unexpected,omitempty"`
	ReceivedFailed uint64   `json:"received_failed,omitempty"`
	Misrouted      uint64   `json:"misrouted,omitempty"`
	Gaps           uint64   `json:"gaps,omitempty"`
	Other          uint64   `json:"other,omitempty"`
	Errors         []string `json:"errors,omitempty"`

	// The worker process's CPU time (user + system, seconds; the whole
	// process for an in-process worker): now, and in the result also when
	// the config came, when it was ready, at start and at finish.
	CPUS       float64 `json:"cpu_s,omitempty"`
	CPUBeginS  float64 `json:"cpu_begin_s,omitempty"`
	CPUReadyS  float64 `json:"cpu_ready_s,omitempty"`
	CPUStartS  float64 `json:"cpu_start_s,omitempty"`
	CPUFinishS float64 `json:"cpu_finish_s,omitempty"`
}

// lineWriter writes JSON lines; it is safe for concurrent use.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer // guarded by mu
}

func (l *lineWriter) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err = l.w.Write(b)
	return err
}

// newLineScanner reads JSON lines of up to 256 MiB (a finish message
// carries one entry per channel).
func newLineScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 256<<20)
	return sc
}
