package wsframe

import (
	"crypto/sha1"
	"encoding/base64"
)

// acceptGUID is the fixed GUID of RFC 6455 §1.3.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKey returns the Sec-WebSocket-Accept value for a client's
// Sec-WebSocket-Key (RFC 6455 §4.2.2): the base64 of the SHA-1 of the key
// followed by the protocol's GUID. The key is used as sent (the caller
// checks it is present; a conforming key is 24 characters of base64).
func AcceptKey(clientKey string) string {
	var scratch [24 + len(acceptGUID)]byte // fits a conforming key: no allocation
	sum := sha1.Sum(append(append(scratch[:0], clientKey...), acceptGUID...))
	return base64.StdEncoding.EncodeToString(sum[:])
}
