package stream

import (
	"time"

	"github.com/opcontrol/opcontrol/internal/retry"
)

// WithStableAfterForTest shortens how long a stream must be live for the backoff to start over (10 s).
func WithStableAfterForTest(d time.Duration) Option {
	return func(o *options) { o.stableAfter = d }
}

// The package's timing, for tests that check the documented schedule.
const (
	MisconfiguredRetryInterval = retry.MisconfiguredInterval
	DefaultMaxInterval         = retry.MaxInterval
	ReadyPoll                  = readyPoll
	MaxFrameSize               = maxFrameSize
)

// WithMisconfiguredRetryForTest shortens the wait after a misconfiguration
// (5 s plus up to 50 %).
func WithMisconfiguredRetryForTest(d time.Duration) Option {
	return func(o *options) { o.misconfigWait = d }
}
