package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/pipeline"
)

// Limits of the dead-letter API: GET …/dead-letters?limit=N and the seqs
// of one replay.
const (
	DefaultDeadLetterLimit = 100
	MaxDeadLetterLimit     = 10000
	MaxReplaySeqs          = 10000
)

// Error codes of the dead-letter API.
const (
	CodeUnknownPipeline   = "unknown_pipeline"
	CodeUnknownDeadLetter = "unknown_dead_letter"
)

// Time limits of the dead-letter API's queue work. A replay is not cut
// short when its client goes away (like a publish): the dead letters
// replayed so far would otherwise be unknown to it.
const (
	deadLetterTimeout = 30 * time.Second
	replayTimeout     = 5 * time.Minute
)

// DeadLetterList is the answer of GET
// /v1/admin/pipelines/{pipeline}/dead-letters: the oldest dead letters
// first.
type DeadLetterList struct {
	DeadLetters []pipeline.DeadLetter `json:"dead_letters"`
}

// ReplayRequest is the body of POST
// /v1/admin/pipelines/{pipeline}/dead-letters/replay. An empty body, or
// one without seqs, replays every dead letter of the pipeline.
type ReplayRequest struct {
	Seqs []uint64 `json:"seqs,omitempty"`
}

// ReplayResult is the answer of a replay: 200 with Replayed, or an error
// status with Error and Replayed, the dead letters replayed before the
// failure (the first Replayed seqs of the request, in its order).
type ReplayResult struct {
	Replayed int                `json:"replayed"`
	Error    *httpx.ErrorDetail `json:"error,omitempty"`
}

// registerDeadLetters adds the dead-letter routes, behind protect.
func (a *API) registerDeadLetters(mux *http.ServeMux) {
	const base = "/v1/admin/pipelines/{pipeline}/dead-letters"
	mux.Handle("GET "+base, a.protect(http.HandlerFunc(a.listDeadLetters)))
	mux.Handle("POST "+base+"/replay", a.protect(http.HandlerFunc(a.replayDeadLetters)))
	mux.Handle("DELETE "+base+"/{seq}", a.protect(http.HandlerFunc(a.dropDeadLetter)))
}

// deadLetters returns the dead letters of the request's pipeline. On
// failure it has written 404 unknown_pipeline.
func (a *API) deadLetters(w http.ResponseWriter, r *http.Request) (string, pipeline.DeadLetters, bool) {
	name := r.PathValue("pipeline")
	dl, ok := a.cfg.DeadLetters(name)
	if !ok {
		httpx.Error(w, http.StatusNotFound, CodeUnknownPipeline, fmt.Sprintf("no pipeline is named %q", name))
		return name, nil, false
	}
	return name, dl, true
}

// listDeadLetters serves GET …/dead-letters[?limit=N].
func (a *API) listDeadLetters(w http.ResponseWriter, r *http.Request) {
	name, dl, ok := a.deadLetters(w, r)
	if !ok {
		return
	}
	limit := DefaultDeadLetterLimit
	if q := r.URL.Query(); q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > MaxDeadLetterLimit {
			httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest,
				"limit must be a number from 1 to "+strconv.Itoa(MaxDeadLetterLimit))
			return
		}
		limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), deadLetterTimeout)
	defer cancel()
	list, err := dl.List(ctx, limit)
	if err != nil {
		a.queueError(w, "listing dead letters", name, err)
		return
	}
	if list == nil {
		list = []pipeline.DeadLetter{}
	}
	writeJSON(w, http.StatusOK, DeadLetterList{DeadLetters: list})
}

// replayDeadLetters serves POST …/dead-letters/replay.
func (a *API) replayDeadLetters(w http.ResponseWriter, r *http.Request) {
	name, dl, ok := a.deadLetters(w, r)
	if !ok {
		return
	}
	body, ok := a.readBody(w, r, MaxReplaySeqs*22+4096)
	if !ok {
		return
	}
	if ct := r.Header.Get("Content-Type"); len(bytes.TrimSpace(body)) > 0 && ct != "" && !isJSONType(ct) {
		httpx.Error(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMediaType,
			"the body must be JSON: send Content-Type: application/json")
		return
	}
	seqs, code, msg := decodeReplay(body)
	if code != "" {
		httpx.Error(w, http.StatusBadRequest, code, msg)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), replayTimeout)
	defer cancel()
	n, err := dl.Replay(ctx, seqs...)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, ReplayResult{Replayed: n})
	case errors.Is(err, pipeline.ErrNoDeadLetter):
		msg := "a dead letter vanished during the replay (replayed or dropped meanwhile)"
		if n < len(seqs) {
			msg = fmt.Sprintf("pipeline %s has no dead letter %d (replayed, dropped or expired)", name, seqs[n])
		}
		msg += fmt.Sprintf("; %d replayed before it, the rest not tried", n)
		writeJSON(w, http.StatusNotFound, ReplayResult{Replayed: n,
			Error: &httpx.ErrorDetail{Code: CodeUnknownDeadLetter, Message: msg}})
	default:
		a.log.Error("dead letters: replay failed", "pipeline", name, "replayed", n, "err", err)
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, ReplayResult{Replayed: n,
			Error: &httpx.ErrorDetail{Code: CodeQueueUnavailable, Message: fmt.Sprintf(
				"the event queue failed during the replay; %d replayed before it, the rest not tried", n)}})
	}
}

// decodeReplay strictly decodes a replay body into the seqs to replay,
// without duplicates: none (all) for an empty body or no "seqs". On
// failure it returns the error code and a message.
func decodeReplay(body []byte) (seqs []uint64, code, msg string) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, "", ""
	}
	if body[0] != '{' {
		return nil, httpx.CodeInvalidJSON, `the body must be a JSON object: {"seqs":[…]}, or empty to replay every dead letter`
	}
	var req struct {
		Seqs *[]uint64 `json:"seqs"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			return nil, httpx.CodeInvalidJSON, "malformed JSON: unexpected data after the JSON object"
		}
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case err == nil:
	case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
		return nil, httpx.CodeInvalidJSON, "malformed JSON: " + syntaxMessage(body)
	case errors.As(err, &typ):
		return nil, httpx.CodeInvalidRequest, "seqs must be an array of dead-letter sequence numbers (positive integers)"
	default:
		return nil, httpx.CodeInvalidRequest, strings.TrimPrefix(err.Error(), "json: ") + `; the only field is "seqs"`
	}
	if req.Seqs == nil {
		return nil, "", ""
	}
	switch {
	case len(*req.Seqs) == 0:
		// An empty list is never "all": a client's filter that matched
		// nothing must not replay everything.
		return nil, httpx.CodeInvalidRequest, "seqs is empty; leave it out to replay every dead letter"
	case len(*req.Seqs) > MaxReplaySeqs:
		return nil, httpx.CodeInvalidRequest, fmt.Sprintf("%d seqs in one request; at most %d", len(*req.Seqs), MaxReplaySeqs)
	}
	seen := make(map[uint64]bool, len(*req.Seqs))
	for _, s := range *req.Seqs {
		if s == 0 {
			return nil, httpx.CodeInvalidRequest, "seqs: 0 is not a dead-letter sequence number; they start at 1"
		}
		if !seen[s] {
			seen[s] = true
			seqs = append(seqs, s)
		}
	}
	return seqs, "", ""
}

// dropDeadLetter serves DELETE …/dead-letters/{seq}.
func (a *API) dropDeadLetter(w http.ResponseWriter, r *http.Request) {
	name, dl, ok := a.deadLetters(w, r)
	if !ok {
		return
	}
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest,
			"the dead letter's sequence number must be a positive integer")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), deadLetterTimeout)
	defer cancel()
	switch err := dl.Drop(ctx, seq); {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, pipeline.ErrNoDeadLetter):
		httpx.Error(w, http.StatusNotFound, CodeUnknownDeadLetter,
			fmt.Sprintf("pipeline %s has no dead letter %d (replayed, dropped or expired)", name, seq))
	default:
		a.queueError(w, "dropping a dead letter", name, err)
	}
}

// queueError logs err, a failure of the event queue, and answers 503.
func (a *API) queueError(w http.ResponseWriter, doing, name string, err error) {
	a.log.Error("dead letters: "+doing+" failed", "pipeline", name, "err", err)
	w.Header().Set("Retry-After", "5")
	httpx.Error(w, http.StatusServiceUnavailable, CodeQueueUnavailable, "the event queue did not answer; retry later")
}
