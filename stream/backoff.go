package stream

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/opcontrol/opcontrol/internal/retry"
)

// Reconnect timing: the package documentation's numbers. No option sets
// them, so they are not exported; DefaultBackoff and
// DefaultReconnectSpread are the defaults of the options that exist.
const (
	// readyPoll is how often, at most, an attempt waiting for the
	// connection has it dialled again (ResetConnectBackoff): the
	// connection is ready within about readyPoll of the gateway's return,
	// whatever the connection's own backoff.
	readyPoll = 250 * time.Millisecond

	// minConnectWindow is the shortest time an attempt waits for the
	// connection to become ready, and for the gateway to answer. An
	// attempt waits the next backoff interval, but at least this long.
	minConnectWindow = time.Second
)

// DefaultBackoff returns the default reconnect backoff, the default of
// WithBackoff: exponential from 250 ms, doubling, up to 3 s, each wait
// randomised by ±50 %, never giving up. (The schedule is shared with the
// bus source, in internal/retry.) A stream that was live for 10 s starts
// the schedule over; a misconfiguration is retried after 5-7.5 s.
func DefaultBackoff() backoff.BackOff { return retry.Default() }

// DefaultBackOff returns DefaultBackoff().
//
// Deprecated: use DefaultBackoff.
func DefaultBackOff() backoff.BackOff { return DefaultBackoff() }

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
