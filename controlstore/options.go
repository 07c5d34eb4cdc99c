package controlstore

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Option configures a Store.
type Option func(*options)

type options struct {
	maxEntries        int
	terminatedHistory int
	meterProvider     metric.MeterProvider
	now               func() time.Time
	logger            *slog.Logger
	resumeSettle      time.Duration
	busGrace          time.Duration
	afterFunc         func(time.Duration, func()) func() bool
}

// WithMaxEntries caps the number of per-op entries (default
// DefaultMaxEntries). When the store is full, a new entry evicts the oldest
// terminated entry, or, only if every entry is paused, the oldest paused one.
// Reserved scopes ("*", "agent:{agent_id}") never count and are never
// evicted. New refuses n outside [1, MaxEntriesLimit].
func WithMaxEntries(n int) Option {
	return func(o *options) { o.maxEntries = n }
}

// MaxEntriesLimit is the largest cap WithMaxEntries accepts.
const MaxEntriesLimit = 1 << 24

func (o *options) validate() error {
	if o.maxEntries < 1 || o.maxEntries > MaxEntriesLimit {
		return fmt.Errorf("controlstore: WithMaxEntries(%d) is out of range [1, %d]", o.maxEntries, MaxEntriesLimit)
	}
	if o.terminatedHistory < 1 || o.terminatedHistory > MaxTerminatedHistory {
		return fmt.Errorf("controlstore: WithTerminatedHistory(%d) is out of range [1, %d]", o.terminatedHistory, MaxTerminatedHistory)
	}
	if o.resumeSettle < 0 || o.resumeSettle > MaxResumeSettle {
		return fmt.Errorf("controlstore: WithResumeSettle(%v) is out of range [0, %v]", o.resumeSettle, MaxResumeSettle)
	}
	if o.busGrace < 0 || o.busGrace > MaxBusGrace {
		return fmt.Errorf("controlstore: WithBusGrace(%v) is out of range [0, %v]", o.busGrace, MaxBusGrace)
	}
	if o.now == nil {
		o.now = time.Now
	}
	return nil
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

// WithLogger sets where the store logs (default slog.Default()): only
// changes of failing closed, once each. A nil logger discards everything.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return func(o *options) { o.logger = l }
}

// WithTerminatedHistory sets how many compacted per-op terminates the
// store remembers at least (default DefaultTerminatedHistory). When a full
// store evicts a terminated entry, the op is kept as an 8-byte fingerprint
// and stays terminated; it is forgotten, and its calls may run again, only
// after at least n further terminated entries have been compacted after it.
// The fingerprints cost at most about 14 bytes per remembered terminate
// when n is a power of two (16 MiB for the default's 1,179,648), allocated
// a quarter at a time as they are needed. New refuses n outside
// [1, MaxTerminatedHistory].
func WithTerminatedHistory(n int) Option {
	return func(o *options) { o.terminatedHistory = n }
}

// DefaultResumeSettle is how long a gateway's RESUME of the agent or global
// scope settles when WithResumeSettle is not given.
const DefaultResumeSettle = time.Second

// MaxResumeSettle is the longest settle WithResumeSettle accepts.
const MaxResumeSettle = time.Minute

// WithResumeSettle sets how long a RESUME of the agent or global scope
// that a gateway source delivers waits before it applies (default
// DefaultResumeSettle) where the gateway's word stands (no bus source,
// or a bus outage past WithBusGrace), so that a replayed PAUSE, RESUME,
// PAUSE does not release held calls for the moment between (see Source). A newer PAUSE or
// TERMINATE of the scope within the window cancels it. 0 applies such a
// RESUME at once. A longer window covers slower replays, and delays an
// operator's resume that arrives through the gateway alone by as much. New refuses d outside [0, MaxResumeSettle].
func WithResumeSettle(d time.Duration) Option {
	return func(o *options) { o.resumeSettle = d }
}

// afterFunc is time.AfterFunc, returning its Stop.
func afterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// DefaultBusGrace is how long a gateway's RESUME waits for a recovering
// bus source when WithBusGrace is not given.
const DefaultBusGrace = 30 * time.Second

// MaxBusGrace is the longest grace WithBusGrace accepts.
const MaxBusGrace = 10 * time.Minute

// WithBusGrace sets how long a bus outage (a bus source runs, none is
// live) may last before the gateway's word on the agent and global scopes
// stands on its own (default DefaultBusGrace). Within it, a gateway's
// RESUME of those scopes waits for the bus, and what a gateway changes is
// undone if the bus, back, has nothing for the scope (see Source): in a
// deployment with a bus every agent and global halt comes through it,
// while the gateway's copy may be a replay whose later PAUSE was lost.
// Past it, the gateway's RESUMEs apply (after WithResumeSettle), so that a
// bus that stays down cannot leave a scope paused for ever. The grace runs
// on the store's timers, not on WithClock. 0 disables the wait. New
// refuses d outside [0, MaxBusGrace].
func WithBusGrace(d time.Duration) Option {
	return func(o *options) { o.busGrace = d }
}
