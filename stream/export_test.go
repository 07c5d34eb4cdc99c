package stream

import "time"

// WithStableAfterForTest shortens StableAfter.
func WithStableAfterForTest(d time.Duration) Option {
	return func(o *options) { o.stableAfter = d }
}
