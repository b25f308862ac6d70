package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
)

// MaxIdempotencyKeyLen is the longest idempotency key accepted, in bytes.
const MaxIdempotencyKeyLen = 256

// publishTimeout bounds one publish once its body is read. The publish runs
// without the request's cancellation: a client that goes away must not cut
// a multi-channel publish in half.
const publishTimeout = 10 * time.Second

// publishRequest is the body of POST /v1/publish.
type publishRequest struct {
	Channels       []string        `json:"channels"`
	Channel        string          `json:"channel"`
	Type           string          `json:"type"`
	Data           json.RawMessage `json:"data"`
	IdempotencyKey string          `json:"idempotency_key"`
}

type publishResponse struct {
	Results []hub.PublishResult `json:"results"`
}

// jsonBodyLimit is the largest JSON publish body read: the data limit plus
// room for the envelope (every channel name at its longest, type, key).
func (a *API) jsonBodyLimit() int64 {
	c := a.hub.Config()
	return int64(c.MaxMessageBytes) + int64(c.MaxChannelsPerPublish)*(hub.MaxChannelLen+3) + 4096
}

// publishJSON serves POST /v1/publish.
func (a *API) publishJSON(w http.ResponseWriter, r *http.Request) {
	if !a.acceptingPublishes(w) {
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONType(ct) {
		httpx.Error(w, http.StatusUnsupportedMediaType, httpx.CodeUnsupportedMediaType,
			"the body must be JSON: send Content-Type: application/json")
		return
	}
	body, ok := a.readBody(w, r, a.jsonBodyLimit())
	if !ok {
		return
	}
	p, code, msg := publication(body)
	if code != "" {
		httpx.Error(w, http.StatusBadRequest, code, msg)
		return
	}
	a.publish(w, r, p)
}

// publication decodes and checks a publish body. On failure it returns the
// error code and message of a 400 answer.
func publication(body []byte) (p hub.Publication, code, msg string) {
	req, code, msg := decodePublish(body)
	if code != "" {
		return p, code, msg
	}
	channels := req.Channels
	if req.Channel != "" {
		if len(channels) > 0 {
			return p, httpx.CodeInvalidRequest, `give either "channel" or "channels", not both`
		}
		channels = []string{req.Channel}
	}
	if len(req.IdempotencyKey) > MaxIdempotencyKeyLen {
		return p, httpx.CodeInvalidRequest, fmt.Sprintf("idempotency_key is longer than %d bytes", MaxIdempotencyKeyLen)
	}
	return hub.Publication{Channels: channels, Type: req.Type, Data: req.Data, IdempotencyKey: req.IdempotencyKey}, "", ""
}

// PublishBody publishes a POST /v1/publish body that arrived by another
// route than HTTP (the engine's publish subject, see internal/app) with
// the same checks, and returns the HTTP status and JSON answer the API
// would have given.
func PublishBody(ctx context.Context, h *hub.Hub, body []byte) (status int, answer []byte) {
	fail := func(status int, code, msg string) (int, []byte) {
		b, _ := json.Marshal(httpx.ErrorBody{Error: httpx.ErrorDetail{Code: code, Message: msg}})
		return status, b
	}
	c := h.Config()
	if limit := c.MaxMessageBytes + c.MaxChannelsPerPublish*(hub.MaxChannelLen+3) + 4096; len(body) > limit {
		return fail(http.StatusRequestEntityTooLarge, httpx.CodeMessageTooLarge, fmt.Sprintf("the body is larger than %d bytes", limit))
	}
	p, code, msg := publication(body)
	if code != "" {
		return fail(http.StatusBadRequest, code, msg)
	}
	results, err := h.Publish(ctx, p)
	if err != nil {
		status, code := httpx.HubStatus(err)
		msg := err.Error()
		if status == http.StatusInternalServerError {
			msg = "internal error"
		}
		return fail(status, code, msg)
	}
	b, _ := json.Marshal(publishResponse{Results: results})
	return http.StatusOK, b
}

// decodePublish strictly decodes a publish body. On failure it returns the
// error code and a message saying what is wrong and where.
func decodePublish(body []byte) (req publishRequest, code, msg string) {
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) == 0:
		return req, httpx.CodeInvalidJSON, "the request body is empty; expected a JSON object"
	case trimmed[0] != '{':
		if !json.Valid(trimmed) {
			return req, httpx.CodeInvalidJSON, "malformed JSON: " + syntaxMessage(trimmed)
		}
		return req, httpx.CodeInvalidJSON, "the request body must be a JSON object"
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			return req, httpx.CodeInvalidJSON, "malformed JSON: unexpected data after the JSON object"
		}
		return req, "", ""
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return req, httpx.CodeInvalidJSON, fmt.Sprintf("malformed JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return req, httpx.CodeInvalidJSON, "malformed JSON: the body ends in the middle of a value"
	case errors.As(err, &typ):
		return req, httpx.CodeInvalidJSON, fmt.Sprintf("field %q must be %s, not a JSON %s", typ.Field, jsonKind(typ.Type.String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return req, httpx.CodeInvalidRequest, strings.TrimPrefix(err.Error(), "json: ") +
			`; known fields are "channels", "channel", "type", "data" and "idempotency_key"`
	}
	return req, httpx.CodeInvalidJSON, "malformed JSON: " + strings.TrimPrefix(err.Error(), "json: ")
}

// syntaxMessage describes the syntax error in invalid JSON b.
func syntaxMessage(b []byte) string {
	var v any
	err := json.Unmarshal(b, &v)
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return fmt.Sprintf("at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	}
	if err != nil {
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "invalid JSON"
}

// jsonKind names the JSON shape of a publishRequest field's Go type.
func jsonKind(goType string) string {
	switch goType {
	case "[]string":
		return "an array of strings"
	case "string":
		return "a string"
	}
	return goType
}

// publishRaw serves POST /v1/publish/{channel}: the body is the data.
func (a *API) publishRaw(w http.ResponseWriter, r *http.Request) {
	if !a.acceptingPublishes(w) {
		return
	}
	body, ok := a.readBody(w, r, int64(a.hub.Config().MaxMessageBytes))
	if !ok {
		return
	}
	var data json.RawMessage
	switch {
	case json.Valid(body):
		data = body
	case isJSONType(r.Header.Get("Content-Type")):
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidJSON,
			"Content-Type says JSON but the body is not: "+syntaxMessage(body))
		return
	default:
		data = hub.TextData(string(body))
	}
	key := r.Header.Get("Idempotency-Key")
	if len(key) > MaxIdempotencyKeyLen {
		httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest,
			fmt.Sprintf("Idempotency-Key is longer than %d bytes", MaxIdempotencyKeyLen))
		return
	}
	a.publish(w, r, hub.Publication{
		Channels:       []string{r.PathValue("channel")},
		Type:           r.URL.Query().Get("type"),
		Data:           data,
		IdempotencyKey: key,
	})
}

// publish hands p to the hub and writes the answer.
func (a *API) publish(w http.ResponseWriter, r *http.Request, p hub.Publication) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), publishTimeout)
	defer cancel()
	results, err := a.hub.Publish(ctx, p)
	if err != nil {
		if status, _ := httpx.HubStatus(err); status == http.StatusInternalServerError {
			a.log.Error("publish failed", "channels", p.Channels, "err", err)
		}
		httpx.HubError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, publishResponse{Results: results})
}

// acceptingPublishes answers 503 once the server is shutting down.
func (a *API) acceptingPublishes(w http.ResponseWriter) bool {
	if a.ready() {
		return true
	}
	httpx.HubError(w, hub.ErrShuttingDown)
	return false
}

// readBody reads at most limit bytes of r's body, within the body read
// timeout. On failure it has written the error (413 when the body is too
// large) and returns false.
func (a *API) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	// Best effort: a ResponseWriter that cannot set deadlines (tests) reads
	// without one.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(a.cfg.BodyReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err == nil {
		return body, true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		httpx.Error(w, http.StatusRequestEntityTooLarge, httpx.CodeMessageTooLarge,
			fmt.Sprintf("the request body is larger than %d bytes", limit))
		return nil, false
	}
	httpx.Error(w, http.StatusBadRequest, httpx.CodeInvalidRequest, "reading the request body failed: "+err.Error())
	return nil, false
}

// isJSONType reports whether a Content-Type value names JSON
// (application/json or application/*+json, any parameters).
func isJSONType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}
