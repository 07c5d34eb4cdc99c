package jetstream

import (
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// SetOnApply sets a hook called for every halt handed to the store, in
// order. Call it before Run.
func (s *Subscriber) SetOnApply(fn func(subject string, seq uint64, h Halt)) { s.onApply = fn }

// FromLookup is FromEnv reading from lookup.
func FromLookup(lookup func(string) (string, bool)) (Config, error) { return fromLookup(lookup) }

// WithStableAfter and WithSlowWait shorten schedules in tests.
func WithStableAfter(d time.Duration) Option { return withStableAfter(d) }
func WithSlowWait(d time.Duration) Option    { return withSlowWait(d) }

// WithInactiveThreshold shortens how long the server keeps abandoned
// consumers.
func WithInactiveThreshold(d time.Duration) Option {
	return func(o *options) { o.inactive = d }
}

// Source returns the subscriber's store source.
func (s *Subscriber) Source() *controlstore.Source { return s.src }
