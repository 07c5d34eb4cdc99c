package jetstream

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/metric"

	"github.com/opcontrol/opcontrol/internal/retry"
)

// Option configures a Subscriber. A nil Option is ignored; a value out of
// range makes NewSubscriber return an error.
type Option func(*options)

type options struct {
	newBackOff      func() backoff.BackOff
	failClosed      bool
	failClosedAfter time.Duration
	holdOnLoss      bool
	replay          bool
	heartbeat       time.Duration
	apiTimeout      time.Duration
	checkpoint      time.Duration
	inactive        time.Duration
	logger          *slog.Logger
	meterProvider   metric.MeterProvider
	stableAfter     time.Duration
	slowWait        time.Duration
	errs            []error
}

func defaultOptions() options {
	return options{
		newBackOff:  DefaultBackoff,
		heartbeat:   DefaultHeartbeat,
		apiTimeout:  DefaultAPITimeout,
		checkpoint:  DefaultCheckpointInterval,
		inactive:    DefaultInactiveThreshold,
		logger:      slog.Default(),
		stableAfter: retry.StableAfter,
		slowWait:    retry.MisconfiguredInterval,
	}
}

func (o *options) fail(format string, args ...any) {
	o.errs = append(o.errs, fmt.Errorf("jetstream: "+format, args...))
}

// WithReplayRetained makes the first start of Run apply every halt the
// stream still retains (up to its max age, 10 minutes), instead of only
// those published after Run began.
//
// With it, an agent process restarted within the retention comes back
// halted as it was: a terminate or pause published shortly before the
// restart is not forgotten. The price: a fleet-wide TERMINATE also stops
// every process started afterwards until it expires, and a PAUSE still
// retained pauses new processes (until a RESUME, also retained, follows
// it). Without it (the default), a new process starts running whatever
// was halted before it began, which is what a fresh deployment after a
// halt expects, but a crash-looping process escapes a halt of its previous
// incarnation. The choice only concerns the first start: afterwards the
// subscriber resumes from its position either way.
func WithReplayRetained() Option {
	return func(o *options) { o.replay = true }
}

// WithFailClosedAfter makes the store fail closed (every gated call fails
// with controlstore.ErrUnavailable) once no bus source has been live for d,
// and stop as soon as one is live again (controlstore.FailClosedAfter).
// d = 0 fails closed whenever the bus is not live. A negative d is an
// error.
func WithFailClosedAfter(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.fail("WithFailClosedAfter needs d >= 0, got %v", d)
			return
		}
		o.failClosed, o.failClosedAfter = true, d
	}
}

// WithFailClosedOnLoss makes a detected loss hold the store failing closed
// (controlstore.Source.HoldFailClosed) until AcknowledgeLoss is called: an
// agent that may have missed a halt stops everything until an operator has
// looked. Without it a loss is reported (state Lost, Status.Loss, a
// counter, an error log) and the agent runs on.
func WithFailClosedOnLoss() Option {
	return func(o *options) { o.holdOnLoss = true }
}

// WithBackoff sets how long to wait between failed attempts (default
// DefaultBackoff). newBackOff is called once per Run; the backoff is reset
// once the subscriber has been live for 10 s. A BackOff that returns
// backoff.Stop does not end Run: the subscriber waits the slow retry
// interval (5-7.5 s) and resets it. A nil factory is an error.
func WithBackoff(newBackOff func() backoff.BackOff) Option {
	return func(o *options) {
		if newBackOff == nil {
			o.fail("WithBackoff needs a non-nil factory")
			return
		}
		o.newBackOff = newBackOff
	}
}

// WithHeartbeat sets the consumers' idle heartbeat (default
// DefaultHeartbeat): a consumer that sends neither a message nor a
// heartbeat for twice this long is taken as lost and replaced. It must be
// between 100 ms and 1 minute.
func WithHeartbeat(d time.Duration) Option {
	return func(o *options) {
		if d < 100*time.Millisecond || d > time.Minute {
			o.fail("WithHeartbeat needs 100ms <= d <= 1m, got %v", d)
			return
		}
		o.heartbeat = d
	}
}

// WithAPITimeout bounds each JetStream API request (default
// DefaultAPITimeout). It must be between 10 ms and 1 minute.
func WithAPITimeout(d time.Duration) Option {
	return func(o *options) {
		if d < 10*time.Millisecond || d > time.Minute {
			o.fail("WithAPITimeout needs 10ms <= d <= 1m, got %v", d)
			return
		}
		o.apiTimeout = d
	}
}

// WithCheckpointInterval sets how often a live subscriber confirms its
// position on a quiet stream (default DefaultCheckpointInterval; see the
// package documentation, Loss detection). Shorter means fewer false loss
// reports after a long outage, at one stream info request per interval
// and two consumer info requests when the stream has grown. It must be
// between 100 ms and 1 hour.
func WithCheckpointInterval(d time.Duration) Option {
	return func(o *options) {
		if d < 100*time.Millisecond || d > time.Hour {
			o.fail("WithCheckpointInterval needs 100ms <= d <= 1h, got %v", d)
			return
		}
		o.checkpoint = d
	}
}

// WithLogger sets where the subscriber logs (default slog.Default(): a
// blind kill switch must not be silent). Volume is bounded: state changes
// once per change, dropped messages at most once per reason every
// 10 s, a loss once. A nil logger discards everything.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return func(o *options) { o.logger = l }
}

// WithMeterProvider sets where the subscriber's metrics go (default: the
// global OpenTelemetry meter provider).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.meterProvider = mp }
}

// withStableAfter and withSlowWait shorten schedules in tests.
func withStableAfter(d time.Duration) Option { return func(o *options) { o.stableAfter = d } }
func withSlowWait(d time.Duration) Option    { return func(o *options) { o.slowWait = d } }

func (o *options) err() error { return errors.Join(o.errs...) }

// WithBackOff is WithBackoff.
//
// Deprecated: use WithBackoff (the house spelling, as in package stream).
func WithBackOff(newBackOff func() backoff.BackOff) Option { return WithBackoff(newBackOff) }
