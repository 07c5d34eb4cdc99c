package stream

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Reconnect timing.
const (
	// DefaultInitialInterval, DefaultMultiplier, DefaultMaxInterval and
	// DefaultRandomizationFactor shape DefaultBackOff: waits of 250 ms,
	// 500 ms, 1 s, 2 s, then 3 s, each randomised by ±50 % (no wait exceeds
	// 4.5 s), for ever.
	DefaultInitialInterval     = 250 * time.Millisecond
	DefaultMultiplier          = 2.0
	DefaultMaxInterval         = 3 * time.Second
	DefaultRandomizationFactor = 0.5

	// StableAfter is how long a stream must have been live for the backoff
	// to start again from its initial interval when the stream ends.
	StableAfter = 10 * time.Second

	// MisconfiguredRetryInterval is the shortest wait after a rejection
	// that means misconfiguration (Unauthenticated, PermissionDenied,
	// InvalidArgument, Unimplemented). A random 0-50 % is added, so such
	// retries run at most 12 times a minute (about 10 on average).
	MisconfiguredRetryInterval = 5 * time.Second

	// MinConnectWindow is the shortest time an attempt waits for the
	// connection to become ready and the gateway to answer. An attempt
	// waits the next backoff interval, but at least this long.
	MinConnectWindow = time.Second

	// LogInterval bounds how often dropped input of one kind is logged
	// (the first occurrence is always logged).
	LogInterval = 10 * time.Second
)

// DefaultBackOff returns the default reconnect backoff: exponential from
// DefaultInitialInterval by DefaultMultiplier up to DefaultMaxInterval,
// randomised by DefaultRandomizationFactor, never giving up.
func DefaultBackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(DefaultInitialInterval),
		backoff.WithMultiplier(DefaultMultiplier),
		backoff.WithMaxInterval(DefaultMaxInterval),
		backoff.WithRandomizationFactor(DefaultRandomizationFactor),
		backoff.WithMaxElapsedTime(0),
	)
	b.Reset()
	return b
}

// nextBackOff returns b's next wait. A BackOff that gives up is reset and
// replaced, this once, by the slow retry interval: Run never ends on its
// own.
func nextBackOff(b backoff.BackOff, slow time.Duration) time.Duration {
	d := b.NextBackOff()
	if d == backoff.Stop {
		b.Reset()
		return slow
	}
	return max(d, 0)
}

// slowWait is the wait after a misconfiguration rejection: at least floor,
// plus up to 50 % jitter so that a fleet does not retry in lockstep.
func slowWait(floor time.Duration) time.Duration {
	return floor + rand.N(floor/2+1)
}
