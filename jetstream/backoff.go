package jetstream

import (
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/opcontrol/opcontrol/internal/retry"
)

// Timing of the bus subscriber. The reconnect schedule itself (waits of
// 250 ms, 500 ms, 1 s, 2 s, then 3 s, ±50 %, for ever; starting over once
// live for 10 s; 5-7.5 s after a failure that a retry cannot fix soon, such
// as a missing permission, stream or JetStream) is the gateway stream's
// too, defined once in internal/retry; it applies between failed attempts
// on a connected link, while reconnecting the link itself is nats.go's job
// (see Connect).
const (
	// DefaultHeartbeat is the consumers' idle heartbeat: a lost consumer
	// is noticed within twice this.
	DefaultHeartbeat = 5 * time.Second

	// DefaultAPITimeout bounds each JetStream API request.
	DefaultAPITimeout = 5 * time.Second

	// DefaultCheckpointInterval is how often a live subscriber confirms its
	// position when the stream has grown.
	DefaultCheckpointInterval = time.Minute

	// DefaultInactiveThreshold is how long the server keeps a consumer the
	// subscriber has left (it never deletes one: see the permissions).
	DefaultInactiveThreshold = 30 * time.Second
)

// DefaultBackoff returns the default wait between failed attempts, the
// default of WithBackoff.
func DefaultBackoff() backoff.BackOff { return retry.Default() }

// DefaultBackOff is DefaultBackoff.
//
// Deprecated: use DefaultBackoff (the house spelling, as in package stream).
func DefaultBackOff() backoff.BackOff { return DefaultBackoff() }
