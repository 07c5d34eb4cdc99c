package stream

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/internal/retry"
)

// DefaultReconnectSpread is the default of WithReconnectSpread. With it,
// of a hundred subscribers re-subscribing after a gateway restart, more
// than 40 fall into one second only with a probability of 9e-5, and each is
// live again within about 5.3 s of the gateway's return (see the package
// documentation, "Reconnecting").
const DefaultReconnectSpread = 5 * time.Second

// Option configures a Subscriber. A nil Option is ignored.
type Option func(*options)

type options struct {
	token           string
	tokenErr        error // what is wrong with the token given; nil if none
	callOpts        []grpc.CallOption
	newBackoff      func() backoff.BackOff
	spread          time.Duration
	failClosed      bool
	failClosedAfter time.Duration
	logger          *slog.Logger
	meterProvider   metric.MeterProvider
	stableAfter     time.Duration
	misconfigWait   time.Duration
	// notes are values that were out of range and adjusted, logged once
	// by NewSubscriber (options run before the logger is known).
	notes []string
}

func defaultOptions() options {
	return options{
		newBackoff:    DefaultBackoff,
		spread:        DefaultReconnectSpread,
		logger:        slog.Default(),
		stableAfter:   retry.StableAfter,
		misconfigWait: retry.MisconfiguredInterval,
	}
}

// WithCredentialToken sends token in the x-aa-credential-token metadata of
// every subscribe: the credential the gateway's agent registry issued to
// this agent. Without it the real gateway answers Unauthenticated. Spaces
// around the token are trimmed. The gateway speaks plaintext only: the
// token crosses the network in clear unless a TLS-terminating proxy sits in
// front of it.
//
// A token that can never authenticate (empty once trimmed, or holding a
// byte that is not printable ASCII, as a token read from a badly written
// environment variable may) is not sent: the subscriber stays in state
// Misconfigured, with a Status.LastError that says what is wrong with the
// token (without quoting it), logs that once at error level, and never
// dials the gateway; it keeps checking slowly, like any misconfiguration,
// so that health probes see it.
//
// To send it as "authorization: Bearer" instead, pass per-RPC credentials
// through WithCallOptions.
func WithCredentialToken(token string) Option {
	tok := strings.TrimSpace(token)
	err := checkToken(tok)
	return func(o *options) {
		o.token, o.tokenErr = tok, err
		if err != nil {
			o.token = ""
		}
	}
}

// checkToken says what makes tok unusable as a credential token, without
// quoting it.
func checkToken(tok string) error {
	if tok == "" {
		return &configError{"WithCredentialToken: the token is empty (or only spaces)"}
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c >= 0x20 && c <= 0x7e {
			continue
		}
		what := "a control character"
		if c >= 0x80 {
			what = "a byte that is not ASCII"
		}
		return &configError{fmt.Sprintf("WithCredentialToken: the token (%d bytes) holds %s at offset %d; a credential token is printable ASCII", len(tok), what, i)}
	}
	return nil
}

// configError is a configuration of the subscriber that cannot work. The
// subscriber reports it as state Misconfigured, with code InvalidArgument,
// instead of dialling.
type configError struct{ msg string }

func (e *configError) Error() string { return "stream: " + e.msg }

// GRPCStatus makes status.Code(err) agree with Status.LastCode.
func (e *configError) GRPCStatus() *status.Status {
	return status.New(codes.InvalidArgument, e.Error())
}

// WithCallOptions adds options to every subscribe call (per-RPC credentials,
// for instance). They come before the subscriber's own, which always win:
// WaitForReady(true), the frame codec and the frame size limit. Nil
// elements are ignored.
func WithCallOptions(opts ...grpc.CallOption) Option {
	return func(o *options) {
		for _, c := range opts {
			if c != nil {
				o.callOpts = append(o.callOpts, c)
			}
		}
	}
}

// WithBackoff sets how long to wait between attempts (default
// DefaultBackoff). newBackoff is called once per Run, because a BackOff is
// not safe for concurrent use; the subscriber calls Reset once a stream has
// been live for 10 s. A BackOff that returns backoff.Stop does not end Run:
// the subscriber waits 5 s (plus jitter) and resets it. It panics when
// newBackoff is nil.
func WithBackoff(newBackoff func() backoff.BackOff) Option {
	if newBackoff == nil {
		panic("stream: WithBackoff needs a non-nil factory")
	}
	return func(o *options) { o.newBackoff = newBackoff }
}

// WithBackOff is WithBackoff.
//
// Deprecated: use WithBackoff.
func WithBackOff(newBackOff func() backoff.BackOff) Option { return WithBackoff(newBackOff) }

// WithReconnectSpread sets how widely re-subscribes are spread (default
// DefaultReconnectSpread): after a lost stream or a failed attempt, once the
// connection is ready again, the subscriber waits a random time in
// [0, d) before it subscribes, so that a fleet whose gateway restarted does
// not re-subscribe in the same instant. The first attempt of Run is never
// delayed. A wider spread eases the gateway's restart and leaves each agent
// blind for longer (d/2 on average); 0 subscribes as soon as the
// connection is ready. A negative d is taken as 0, and logged.
func WithReconnectSpread(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.notes = append(o.notes, fmt.Sprintf("WithReconnectSpread(%v): a negative spread is taken as 0", d))
			d = 0
		}
		o.spread = d
	}
}

// WithFailClosedAfter makes the store fail closed (every gated call fails
// with controlstore.ErrUnavailable) once no gateway stream feeding it has
// been live for d, counting from the start of Run, and stop failing closed
// as soon as one is live again (controlstore.FailClosedAfter: the store
// decides, so that a second subscriber on the same store that is down does
// not make it fail closed while this one is live). d may be 0: fail closed
// whenever no stream is live; a negative d is taken as 0 (the safe side),
// and logged. Without this option, ops with no recorded state run while the
// stream is down (fail-open, like the upstream runtime); recorded pauses and
// terminates hold either way.
//
// When Run returns, the store stops counting this subscriber's limit and
// leaves failing closed as it is: a stopped feed does not make a blind
// store safe.
func WithFailClosedAfter(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.notes = append(o.notes, fmt.Sprintf("WithFailClosedAfter(%v): a negative duration is taken as 0, failing closed whenever the stream is not live", d))
			d = 0
		}
		o.failClosed, o.failClosedAfter = true, d
	}
}

// WithLogger sets where the subscriber logs (default slog.Default(): a
// blind kill switch must not be silent). Volume is bounded: state changes
// once per change, dropped input at most once per reason every 10 s. A nil
// logger discards everything.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return func(o *options) { o.logger = l }
}

// WithMeterProvider sets where the subscriber's metrics go (default: the
// global OpenTelemetry meter provider, a no-op unless the application sets
// one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.meterProvider = mp }
}
