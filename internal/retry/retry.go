// Package retry is the reconnect schedule every source of signals uses
// (package stream for the gateway, the jetstream module for the bus): one
// default backoff, one rule for a backoff that gives up, one slow retry
// after a misconfiguration. Defined once, so that the two sources cannot
// drift apart.
package retry

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// The shape of Default: waits of 250 ms, 500 ms, 1 s, 2 s, then 3 s, each
// randomised by ±50 % (no wait exceeds 4.5 s), for ever.
const (
	InitialInterval     = 250 * time.Millisecond
	Multiplier          = 2.0
	MaxInterval         = 3 * time.Second
	RandomizationFactor = 0.5
)

// StableAfter is how long a source must have been live for its backoff to
// start again from the initial interval when it goes down.
const StableAfter = 10 * time.Second

// MisconfiguredInterval is the shortest wait after a failure that a retry
// cannot fix soon (refused credentials, a missing service or stream). Slow
// adds a random 0-50 %, so such retries run at most 12 times a minute.
const MisconfiguredInterval = 5 * time.Second

// Default returns the default backoff between failed attempts; it never
// gives up.
func Default() backoff.BackOff {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(InitialInterval),
		backoff.WithMultiplier(Multiplier),
		backoff.WithMaxInterval(MaxInterval),
		backoff.WithRandomizationFactor(RandomizationFactor),
		backoff.WithMaxElapsedTime(0),
	)
	b.Reset()
	return b
}

// Next returns b's next wait. A BackOff that gives up (a user's) is reset
// and replaced, this once, by slow: a source never stops retrying on its
// own.
func Next(b backoff.BackOff, slow time.Duration) time.Duration {
	d := b.NextBackOff()
	if d == backoff.Stop {
		b.Reset()
		return slow
	}
	return max(d, 0)
}

// Slow is the wait after a misconfiguration: at least floor, plus up to
// 50 % jitter, so that a fleet does not retry in lockstep.
func Slow(floor time.Duration) time.Duration {
	return floor + rand.N(floor/2+1)
}
