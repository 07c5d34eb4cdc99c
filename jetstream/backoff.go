package jetstream

import (
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Timing.
const (
	// DefaultInitialInterval, DefaultMultiplier, DefaultMaxInterval and
	// DefaultRandomizationFactor shape DefaultBackOff: waits of 250 ms,
	// 500 ms, 1 s, 2 s, then 3 s, each randomised by ±50 %, for ever. They
	// apply between failed attempts on a connected link; reconnecting the
	// link itself is nats.go's job (see Connect).
	DefaultInitialInterval     = 250 * time.Millisecond
	DefaultMultiplier          = 2.0
	DefaultMaxInterval         = 3 * time.Second
	DefaultRandomizationFactor = 0.5

	// StableAfter is how long the subscriber must have been live for the
	// backoff to start again from its initial interval.
	StableAfter = 10 * time.Second

	// MisconfiguredRetryInterval is the shortest wait after an attempt that
	// failed for want of permission, stream or JetStream. A random 0-50 %
	// is added.
	MisconfiguredRetryInterval = 5 * time.Second

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

	// LogInterval bounds how often dropped messages of one reason are
	// logged (the first is always logged).
	LogInterval = 10 * time.Second
)

// DefaultBackOff returns the default wait between failed attempts.
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

// nextBackOff returns b's next wait; a BackOff that gives up is reset and
// replaced, this once, by slow.
func nextBackOff(b backoff.BackOff, slow time.Duration) time.Duration {
	d := b.NextBackOff()
	if d == backoff.Stop {
		b.Reset()
		return slow
	}
	return max(d, 0)
}

// slowWait is floor plus up to 50 % jitter.
func slowWait(floor time.Duration) time.Duration {
	return floor + rand.N(floor/2+1)
}

// logLimit lets one line through per LogInterval and counts the rest.
type logLimit struct {
	last       time.Time
	suppressed uint64
}

func (l *logLimit) allow(now time.Time) bool {
	if !l.last.IsZero() && now.Sub(l.last) < LogInterval {
		l.suppressed++
		return false
	}
	l.last = now
	return true
}

func (l *logLimit) takeSuppressed() uint64 {
	n := l.suppressed
	l.suppressed = 0
	return n
}
