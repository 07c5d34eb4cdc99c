package stream

import (
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
)

// The parameters of GatewayDialOptions.
const (
	// keepaliveTime is how long the connection may stay silent before the
	// client pings the gateway. The gateway sends no heartbeat on an idle
	// stream, so only these pings can reveal a half-open connection: one
	// is noticed within keepaliveTime + keepaliveTimeout (15 s), after
	// which the stream fails and the subscriber reconnects. 10 s is the
	// shortest interval grpc-go allows.
	keepaliveTime = 10 * time.Second
	// keepaliveTimeout is how long the client waits for a ping's answer.
	keepaliveTimeout = 5 * time.Second

	// The connection's own backoff between dials: 250 ms × 1.6 up to 3 s,
	// ±20 % (grpc's default grows to 120 s). The subscriber resets it
	// while it waits for the connection anyway; a short one also serves
	// other calls on the same connection.
	connectBaseDelay  = 250 * time.Millisecond
	connectMultiplier = 1.6
	connectJitter     = 0.2
	connectMaxDelay   = 3 * time.Second

	// minConnectTimeout bounds one dial, so that a dial into a black hole
	// gives up and the next one starts afresh (grpc's default is 20 s).
	minConnectTimeout = 5 * time.Second
)

// GatewayDialOptions returns the dial options recommended for the
// subscriber's connection to the gateway, to pass to grpc.NewClient along
// with transport credentials (the gateway speaks plaintext only:
// insecure.NewCredentials(), unless a TLS-terminating proxy sits in front
// of it):
//
//   - keepalive pings every 10 s, answered within 5 s, even with no active
//     stream, so that a half-open connection is noticed within 15 s;
//   - a connection backoff of 250 ms × 1.6 up to 3 s with 20 % jitter
//     (grpc's default grows to 120 s), and at most 5 s per dial.
//
// They are about the connection to the gateway only; the connection that
// carries the agent's tool calls takes interceptor.DialOptions instead.
func GatewayDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                keepaliveTime,
			Timeout:             keepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  connectBaseDelay,
				Multiplier: connectMultiplier,
				Jitter:     connectJitter,
				MaxDelay:   connectMaxDelay,
			},
			MinConnectTimeout: minConnectTimeout,
		}),
	}
}

// DialOptions returns GatewayDialOptions().
//
// Deprecated: use GatewayDialOptions, which says what the options are for
// (interceptor.DialOptions installs the gate on the tool connection).
func DialOptions() []grpc.DialOption { return GatewayDialOptions() }
