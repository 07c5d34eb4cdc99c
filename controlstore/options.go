package controlstore

import (
	"strconv"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Option configures a Store.
type Option func(*options)

type options struct {
	maxEntries    int
	meterProvider metric.MeterProvider
	now           func() time.Time
}

// WithMaxEntries caps the number of per-op entries (default
// DefaultMaxEntries). When the store is full, a new entry evicts the oldest
// terminated entry, or, only if every entry is paused, the oldest paused one.
// Reserved scopes ("*", "agent:{agent_id}") never count and are never
// evicted. It panics when n < 1.
func WithMaxEntries(n int) Option {
	if n < 1 {
		panic("controlstore: WithMaxEntries needs n >= 1, got " + strconv.Itoa(n))
	}
	return func(o *options) { o.maxEntries = n }
}

// WithMeterProvider sets where the store's metrics go (default: the global
// OpenTelemetry meter provider, a no-op unless the application sets one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.meterProvider = mp }
}

// WithClock sets the clock used for SyncStatus.Since (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}
