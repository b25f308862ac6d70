package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/heraldhq/herald/hub"
	"github.com/heraldhq/herald/internal/httpx"
)

// HTTPPublisherOptions configures an HTTPPublisher.
type HTTPPublisherOptions struct {
	// URL is the base URL of the remote Herald, as in
	// "https://herald.example.com" (a path prefix is kept). Required.
	URL string
	// APIKey is sent as "Authorization: Bearer APIKey". Empty sends no
	// key, which a Herald without keys accepts from loopback only.
	APIKey string
	// Timeout bounds one publish, the answer included. Zero means 10s.
	Timeout time.Duration
	// Client sends the requests. Nil means a client of its own.
	Client *http.Client
}

// HTTPPublisher publishes to a remote Herald through its HTTP API
// (POST /v1/publish). Answers 4xx other than 408 and 429 are permanent
// errors; other answers that are not 2xx, and network errors, are retried.
// It is safe for concurrent use.
type HTTPPublisher struct {
	endpoint string // URL + "/v1/publish"
	apiKey   string
	timeout  time.Duration
	client   *http.Client
}

var _ Publisher = (*HTTPPublisher)(nil)

// HTTPError is an error answer of the remote Herald.
type HTTPError struct {
	StatusCode int
	Code       string // the API's error code, as "invalid_channel"; may be empty
	Message    string
}

func (e *HTTPError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("pipeline: remote publish: HTTP %d: %s", e.StatusCode, e.Message)
	}
	return fmt.Sprintf("pipeline: remote publish: HTTP %d %s: %s", e.StatusCode, e.Code, e.Message)
}

// NewHTTPPublisher returns an HTTPPublisher. It fails if URL is not an
// absolute http or https URL.
func NewHTTPPublisher(opts HTTPPublisherOptions) (*HTTPPublisher, error) {
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("pipeline: http publisher: URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("pipeline: http publisher: URL %q is not an absolute http or https URL", opts.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("pipeline: http publisher: URL %q must not have a query or fragment", opts.URL)
	}
	p := &HTTPPublisher{
		endpoint: u.JoinPath("v1", "publish").String(),
		apiKey:   opts.APIKey,
		timeout:  opts.Timeout,
		client:   opts.Client,
	}
	if p.timeout <= 0 {
		p.timeout = 10 * time.Second
	}
	if p.client == nil {
		p.client = &http.Client{Timeout: p.timeout}
	}
	return p, nil
}

// publishBody is the JSON body of POST /v1/publish.
type publishBody struct {
	Channels       []string        `json:"channels"`
	Type           string          `json:"type,omitempty"`
	Data           json.RawMessage `json:"data,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
}

// maxErrorBody caps how much of an error answer is read.
const maxErrorBody = 64 << 10

// Publish sends p to the remote Herald.
func (p *HTTPPublisher) Publish(ctx context.Context, pub hub.Publication) error {
	if len(pub.Data) > 0 && !json.Valid(pub.Data) {
		return Permanent(hub.ErrInvalidData)
	}
	body, err := json.Marshal(publishBody{
		Channels: pub.Channels, Type: pub.Type, Data: pub.Data, IdempotencyKey: pub.IdempotencyKey,
	})
	if err != nil {
		return Permanent(fmt.Errorf("pipeline: remote publish: %w", err))
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("pipeline: remote publish: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if p.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("pipeline: remote publish: %w", err)
	}
	defer func() {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
	}()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	herr := &HTTPError{StatusCode: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
	var eb httpx.ErrorBody
	if b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody)); err == nil && json.Unmarshal(b, &eb) == nil && eb.Error.Code != "" {
		herr.Code, herr.Message = eb.Error.Code, eb.Error.Message
	}
	switch {
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests:
		return herr
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		return Permanent(herr)
	}
	return herr
}
