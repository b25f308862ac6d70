package wsframe

import "strconv"

// Error is a protocol violation found by the Decoder. Code is the close
// code the server should send before closing the connection, Reason a short
// text fit for logs and for the close frame's reason.
type Error struct {
	Code   int
	Reason string
}

func (e *Error) Error() string {
	return "wsframe: " + e.Reason + " (close " + strconv.Itoa(e.Code) + ")"
}

// The Decoder's errors. They are shared values, so returning one never
// allocates; callers read Code and Reason (errors.As) rather than compare.
var (
	errReservedBits       = &Error{CloseProtocolError, "reserved bits set"}
	errUnknownOpcode      = &Error{CloseProtocolError, "unknown opcode"}
	errFragmentedControl  = &Error{CloseProtocolError, "fragmented control frame"}
	errUnexpectedContinue = &Error{CloseProtocolError, "continuation frame without a message"}
	errExpectedContinue   = &Error{CloseProtocolError, "new message before the previous one ended"}
	errUnmasked           = &Error{CloseProtocolError, "unmasked client frame"}
	errControlTooLong     = &Error{CloseProtocolError, "control frame payload over 125 bytes"}
	errNonMinimalLength   = &Error{CloseProtocolError, "non-minimal payload length"}
	errLengthHighBit      = &Error{CloseProtocolError, "payload length has the high bit set"}
	errCloseOneByte       = &Error{CloseProtocolError, "close frame payload of 1 byte"}
	errInvalidCloseCode   = &Error{CloseProtocolError, "invalid close code"}
	errBinaryRejected     = &Error{CloseUnsupportedData, "binary messages are not supported"}
	errTooBig             = &Error{CloseMessageTooBig, "message too big"}
	errInvalidUTF8Text    = &Error{CloseInvalidPayload, "invalid UTF-8 in text message"}
	errInvalidUTF8Close   = &Error{CloseInvalidPayload, "invalid UTF-8 in close reason"}
)
