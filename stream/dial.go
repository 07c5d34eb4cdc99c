package stream

import (
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
)

// Keepalive and connect parameters of DialOptions.
const (
	// KeepaliveTime is how long the connection may stay silent before the
	// client pings the gateway. The gateway sends no heartbeat on an idle
	// stream, so only these pings can reveal a half-open connection: one
	// is noticed within KeepaliveTime + KeepaliveTimeout (15 s), after
	// which the stream fails and the subscriber reconnects. 10 s is the
	// shortest interval grpc-go allows.
	KeepaliveTime = 10 * time.Second
	// KeepaliveTimeout is how long the client waits for a ping's answer.
	KeepaliveTimeout = 5 * time.Second
	// MinConnectTimeout bounds one dial, so that a dial into a black hole
	// gives up and the next attempt dials afresh (grpc's default is 20 s).
	MinConnectTimeout = 5 * time.Second
)

// DialOptions returns the dial options recommended for the connection to
// the gateway, to pass to grpc.NewClient along with transport credentials
// (the gateway speaks plaintext only: insecure.NewCredentials(), unless a
// TLS-terminating proxy sits in front of it):
//
//   - keepalive pings every KeepaliveTime, answered within KeepaliveTimeout,
//     even with no active stream, to detect a half-open connection;
//   - a connection backoff of 250 ms × 1.6 up to 3 s with 20 % jitter
//     (grpc's default grows to 120 s), and MinConnectTimeout per dial.
//
// The subscriber resets the connection backoff before every attempt
// anyway, so it reconnects promptly without these connect parameters; they
// help other calls on the same connection and keep dials short.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: grpcbackoff.Config{
				BaseDelay:  250 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   3 * time.Second,
			},
			MinConnectTimeout: MinConnectTimeout,
		}),
	}
}
