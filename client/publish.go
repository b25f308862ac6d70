package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// Publication is one publish: the same event to several channels.
type Publication struct {
	// Channels receive the event, in this order.
	Channels []string
	// Type is the event's type; empty means "message".
	Type string
	// Data is the event's payload, encoded with encoding/json; a
	// json.RawMessage is passed through as it is. Nil publishes null.
	Data any
	// IdempotencyKey, when set, makes a repeated publish within the
	// server's idempotency window return the first answer and deliver
	// nothing new.
	IdempotencyKey string
}

// Result is the position a publish got in one channel.
type Result struct {
	Channel string `json:"channel"`
	Epoch   string `json:"epoch"`
	Offset  uint64 `json:"offset"`
}

// publishRequest is the body of POST /v1/publish.
type publishRequest struct {
	Channels       []string `json:"channels"`
	Type           string   `json:"type,omitempty"`
	Data           any      `json:"data"`
	IdempotencyKey string   `json:"idempotency_key,omitempty"`
}

// Publish sends p to the server and returns its position in each channel.
// An error answered by the server is an *Error, whose Code is one of the
// protocol's stable codes (invalid_channel, unauthorized, …).
func (c *Client) Publish(ctx context.Context, p Publication) ([]Result, error) {
	body, err := json.Marshal(publishRequest{
		Channels:       p.Channels,
		Type:           p.Type,
		Data:           p.Data,
		IdempotencyKey: p.IdempotencyKey,
	})
	if err != nil {
		return nil, fmt.Errorf("client: encoding publication: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/publish", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if p.IdempotencyKey != "" {
		// Also as the header: it lets net/http resend the request when a
		// kept-alive connection turns out to be dead, which the key makes
		// safe. The server reads the key from the body.
		req.Header.Set("Idempotency-Key", p.IdempotencyKey)
	}
	c.authorize(req.Header)

	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := readError(resp)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody)) // keep the connection reusable
		return nil, err
	}
	var out struct {
		Results []Result `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("%w: publish answer: %v", ErrProtocol, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return out.Results, nil
}
