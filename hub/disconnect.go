package hub

// Disconnect says why the hub ended a session. Code is a WebSocket close
// code; transports without close codes map it as they can (SSE sends a
// retry hint and closes). Reconnect tells the client whether coming back
// with its cursor makes sense.
type Disconnect struct {
	Code      int
	Reason    string
	Reconnect bool
}

// Disconnect reasons used by the hub and transports.
var (
	// DisconnectNormal ends a session because its client left.
	DisconnectNormal = Disconnect{Code: 1000, Reason: "normal"}
	// DisconnectShutdown ends sessions when the server stops.
	DisconnectShutdown = Disconnect{Code: 1012, Reason: "server restarting", Reconnect: true}
	// DisconnectSlowConsumer ends a session whose outbound queue overflowed.
	DisconnectSlowConsumer = Disconnect{Code: 4008, Reason: "slow consumer", Reconnect: true}
	// DisconnectWriteError ends a session whose connection failed.
	DisconnectWriteError = Disconnect{Code: 1006, Reason: "write error", Reconnect: true}
	// DisconnectBadRequest ends a session that sent something unacceptable.
	DisconnectBadRequest = Disconnect{Code: 1008, Reason: "bad request"}
	// DisconnectUnsupportedData ends a WebSocket session that sent binary data.
	DisconnectUnsupportedData = Disconnect{Code: 1003, Reason: "unsupported data"}
	// DisconnectTimeout ends a session whose client stopped answering.
	DisconnectTimeout = Disconnect{Code: 1001, Reason: "timeout", Reconnect: true}
)
