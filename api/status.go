package api

import (
	"context"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/heraldhq/herald/broker"
	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/pipeline"
)

// Limits of GET /v1/status?prefix=.
const (
	DefaultPrefixLimit = 100
	MaxPrefixLimit     = 1000
)

// Status is the answer of GET /v1/status.
type Status struct {
	Version         string      `json:"version"`
	UptimeSeconds   float64     `json:"uptime_seconds"`
	Uptime          string      `json:"uptime"`
	Goroutines      int         `json:"goroutines"`
	Ready           bool        `json:"ready"`
	Connections     Connections `json:"connections"`
	Channels        int         `json:"channels"`
	Subscribers     int         `json:"subscribers"`
	Published       uint64      `json:"published"`
	Delivered       uint64      `json:"delivered"`
	Dropped         uint64      `json:"dropped"`
	SlowConsumers   uint64      `json:"slow_consumers"`
	IdempotencyKeys int         `json:"idempotency_keys"`
	// History is present with the in-memory history: channels known,
	// messages retained, their bytes against limits.max_history_bytes,
	// and messages trimmed for that limit.
	History *hub.MemoryHistoryStats `json:"history,omitempty"`
	// Engine is present when connections run on the engine.
	Engine *EngineStatus `json:"engine,omitempty"`
	// Node is this node's id; Cluster lists the nodes heard from through
	// the broker (this one first), with their connection counts and
	// broker health. With the in-process broker it is this node alone.
	Node    string         `json:"node"`
	Cluster []hub.NodeInfo `json:"cluster"`
	// Broker is this node's broker and the health of its engine.
	Broker broker.Health `json:"broker"`
	// Sequencer is present with a networked broker: messages held back
	// behind a missing one, history reads to fill holes, messages filled
	// from history, messages given up (subscribers got a gap signal).
	Sequencer *hub.SequencerStats `json:"sequencer,omitempty"`
	// Pipelines are the event pipelines' figures: per stage in, out,
	// failed, dropped and latency, and their queue's pending, in-flight,
	// redelivered and dead-lettered events.
	Pipelines []pipeline.Stats `json:"pipelines,omitempty"`
}

// EngineStatus is the connection engine's part of /v1/status.
type EngineStatus struct {
	// Mode is "epoll" or "goroutines".
	Mode string `json:"mode"`
	// Connections are the connections the engine holds; Blocked those
	// waiting for their client to read.
	Connections int64  `json:"connections"`
	Blocked     int64  `json:"blocked"`
	Writes      uint64 `json:"writes"`
	Heartbeats  uint64 `json:"heartbeats"`
}

// Connections counts subscriber connections.
type Connections struct {
	Total       int            `json:"total"`
	ByTransport map[string]int `json:"by_transport"`
}

// ChannelList is the answer of GET /v1/status?prefix=P.
type ChannelList struct {
	Prefix    string             `json:"prefix"`
	Channels  []hub.ChannelStats `json:"channels"`
	Truncated bool               `json:"truncated"`
}

// status serves GET /v1/status, ?channel=NAME and ?prefix=P[&limit=N].
func (a *API) status(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch {
	case q.Has("channel") && q.Has("prefix"):
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest, "give channel= or prefix=, not both")
	case q.Has("channel"):
		ch := q.Get("channel")
		if !hub.ValidChannel(ch) {
			httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidChannel, "invalid channel name")
			return
		}
		writeJSON(w, http.StatusOK, a.hub.Channel(ch))
	case q.Has("prefix"):
		a.channelList(w, q.Get("prefix"), q.Get("limit"))
	default:
		writeJSON(w, http.StatusOK, a.summary(r.Context()))
	}
}

func (a *API) summary(ctx context.Context) Status {
	st := a.stats()
	up := time.Since(a.started)
	var es *EngineStatus
	if e := a.cfg.Engine; e != nil {
		st := e.Stats()
		es = &EngineStatus{Mode: e.Mode(), Connections: st.Connections, Blocked: st.Blocked, Writes: st.Writes, Heartbeats: st.Heartbeats}
	}
	var ps []pipeline.Stats
	if a.cfg.Pipelines != nil {
		ps = a.cfg.Pipelines(ctx)
	}
	var seq *hub.SequencerStats
	if a.hub.BrokerHealth().Engine != "memory" {
		seq = &st.Sequencer
	}
	return Status{
		Sequencer:       seq,
		Node:            a.hub.NodeID(),
		Cluster:         a.hub.Nodes(),
		Broker:          a.hub.BrokerHealth(),
		Pipelines:       ps,
		Engine:          es,
		Version:         a.cfg.Version,
		UptimeSeconds:   up.Seconds(),
		Uptime:          up.Round(time.Second).String(),
		Goroutines:      runtime.NumGoroutine(),
		Ready:           a.ready(),
		Connections:     Connections{Total: st.Connections, ByTransport: st.ByTransport},
		Channels:        st.Channels,
		Subscribers:     st.Subscribers,
		Published:       st.Published,
		Delivered:       st.Delivered,
		Dropped:         st.Dropped,
		SlowConsumers:   st.SlowConsumers,
		IdempotencyKeys: st.IdempotencyKeys,
		History:         st.History,
	}
}

func (a *API) channelList(w http.ResponseWriter, prefix, rawLimit string) {
	// A prefix is a possibly empty start of a channel name.
	if prefix != "" && !hub.ValidChannel(prefix) {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidChannel, "invalid channel prefix")
		return
	}
	limit := DefaultPrefixLimit
	if rawLimit != "" {
		n, err := strconv.Atoi(rawLimit)
		if err != nil || n < 1 || n > MaxPrefixLimit {
			httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest,
				"limit must be a number from 1 to "+strconv.Itoa(MaxPrefixLimit))
			return
		}
		limit = n
	}
	list := a.hub.ChannelsWithPrefix(prefix, limit+1)
	out := ChannelList{Prefix: prefix, Channels: list}
	if len(list) > limit {
		out.Channels, out.Truncated = list[:limit], true
	}
	writeJSON(w, http.StatusOK, out)
}
