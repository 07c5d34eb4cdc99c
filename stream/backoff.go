package stream

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Reconnect timing: the package documentation's numbers. No option sets
// them, so they are not exported; DefaultBackoff and
// DefaultReconnectSpread are the defaults of the options that exist.
const (
	// The shape of DefaultBackoff: waits of 250 ms, 500 ms, 1 s, 2 s, then
	// 3 s, each randomised by ±50 % (no wait exceeds 4.5 s), for ever.
	defaultInitialInterval     = 250 * time.Millisecond
	defaultMultiplier          = 2.0
	defaultMaxInterval         = 3 * time.Second
	defaultRandomizationFactor = 0.5

	// readyPoll is how often, at most, an attempt waiting for the
	// connection has it dialled again (ResetConnectBackoff): the
	// connection is ready within about readyPoll of the gateway's return,
	// whatever the connection's own backoff.
	readyPoll = 250 * time.Millisecond

	// stableAfter is how long a stream must have been live for the backoff
	// to start again from its initial interval when the stream ends.
	stableAfter = 10 * time.Second

	// misconfiguredRetryInterval is the shortest wait after a rejection
	// that means misconfiguration (Unauthenticated, PermissionDenied,
	// InvalidArgument, Unimplemented) or a bad configuration of the
	// subscriber itself. A random 0-50 % is added, so such retries run at
	// most 12 times a minute (about 10 on average).
	misconfiguredRetryInterval = 5 * time.Second

	// minConnectWindow is the shortest time an attempt waits for the
	// connection to become ready, and for the gateway to answer. An
	// attempt waits the next backoff interval, but at least this long.
	minConnectWindow = time.Second

	// logInterval bounds how often dropped input of one kind is logged
	// (the first occurrence is always logged).
	logInterval = 10 * time.Second
)

// DefaultBackoff returns the default reconnect backoff, the default of
// WithBackoff: exponential from 250 ms, doubling, up to 3 s, each wait
// randomised by ±50 %, never giving up.
func DefaultBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(defaultInitialInterval),
		backoff.WithMultiplier(defaultMultiplier),
		backoff.WithMaxInterval(defaultMaxInterval),
		backoff.WithRandomizationFactor(defaultRandomizationFactor),
		backoff.WithMaxElapsedTime(0),
	)
	b.Reset()
	return b
}

// DefaultBackOff returns DefaultBackoff().
//
// Deprecated: use DefaultBackoff.
func DefaultBackOff() backoff.BackOff { return DefaultBackoff() }

// nextBackoff returns b's next wait. A BackOff that gives up is reset and
// replaced, this once, by the slow retry interval: Run never ends on its
// own.
func nextBackoff(b backoff.BackOff, slow time.Duration) time.Duration {
	d := b.NextBackOff()
	if d == backoff.Stop {
		b.Reset()
		return slow
	}
	return max(d, 0)
}

// slowWait is the wait after a misconfiguration: at least floor, plus up
// to 50 % jitter so that a fleet does not retry in lockstep.
func slowWait(floor time.Duration) time.Duration {
	return floor + rand.N(floor/2+1)
}

// spreadDelay draws the wait before a re-subscribe: uniform in [0, spread).
// Uniform is the distribution with the lowest peak density for a given
// width, so it puts the fewest of a fleet's independent draws into any one
// second.
func spreadDelay(spread time.Duration) time.Duration {
	if spread <= 0 {
		return 0
	}
	return rand.N(spread)
}

// sleep waits d, or until ctx ends; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
