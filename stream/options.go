package stream

import (
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
)

// Option configures a Subscriber.
type Option func(*options)

type options struct {
	token           string
	callOpts        []grpc.CallOption
	newBackOff      func() backoff.BackOff
	failClosed      bool
	failClosedAfter time.Duration
	logger          *slog.Logger
	meterProvider   metric.MeterProvider
	stableAfter     time.Duration
	misconfigWait   time.Duration
}

func defaultOptions() options {
	return options{
		newBackOff:    DefaultBackOff,
		logger:        slog.Default(),
		stableAfter:   StableAfter,
		misconfigWait: MisconfiguredRetryInterval,
	}
}

// WithCredentialToken sends token in the x-aa-credential-token metadata of
// every subscribe: the credential the gateway's agent registry issued to
// this agent. Without it the real gateway answers Unauthenticated. It
// panics when token, trimmed of spaces, is empty or holds anything but
// printable ASCII (such a token can never authenticate). The gateway speaks
// plaintext only: the token crosses the network in clear unless a
// TLS-terminating proxy sits in front of it.
//
// To send it as "authorization: Bearer" instead, pass per-RPC credentials
// through WithCallOptions.
func WithCredentialToken(token string) Option {
	tok := strings.TrimSpace(token)
	if tok == "" {
		panic("stream: WithCredentialToken needs a non-empty token")
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x20 || c > 0x7e {
			panic("stream: WithCredentialToken: the token holds a byte that is not printable ASCII at offset " + strconv.Itoa(i))
		}
	}
	return func(o *options) { o.token = tok }
}

// WithCallOptions adds options to every subscribe call (per-RPC credentials,
// for instance). They come before the subscriber's own, which always win:
// WaitForReady(true) and the frame codec.
func WithCallOptions(opts ...grpc.CallOption) Option {
	return func(o *options) { o.callOpts = append(o.callOpts, opts...) }
}

// WithBackOff sets how long to wait between attempts (default
// DefaultBackOff). newBackOff is called once per Run, because a BackOff is
// not safe for concurrent use; the subscriber calls Reset once a stream has
// been live for StableAfter. A BackOff that returns backoff.Stop does not
// end Run: the subscriber waits MisconfiguredRetryInterval and resets it.
// It panics when newBackOff is nil.
func WithBackOff(newBackOff func() backoff.BackOff) Option {
	if newBackOff == nil {
		panic("stream: WithBackOff needs a non-nil factory")
	}
	return func(o *options) { o.newBackOff = newBackOff }
}

// WithFailClosedAfter makes the store fail closed (every gated call fails
// with controlstore.ErrUnavailable) once the stream has not been live for
// d, counting from the start of Run, and stop failing closed as soon as it
// is live again. d may be 0: fail closed whenever the stream is not live.
// Without this option, ops with no recorded state run while the stream is
// down (fail-open, like the upstream runtime); recorded pauses and
// terminates hold either way. It panics when d < 0.
//
// When Run returns, the store is marked not live and the switch is left as
// it is: a stopped subscriber arms no timer.
func WithFailClosedAfter(d time.Duration) Option {
	if d < 0 {
		panic("stream: WithFailClosedAfter needs d >= 0, got " + d.String())
	}
	return func(o *options) { o.failClosed, o.failClosedAfter = true, d }
}

// WithLogger sets where the subscriber logs (default slog.Default(): a
// blind kill switch must not be silent). Volume is bounded: state changes
// once per change, dropped input at most once per reason every
// LogInterval. A nil logger discards everything.
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
