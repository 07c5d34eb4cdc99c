package interceptor

import (
	"context"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/metric"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Option configures the interceptors. A nil Option is ignored.
type Option func(*options)

type options struct {
	opFunc        func(context.Context) controlstore.Op
	inFlight      bool
	spanEvents    bool
	exempt        []string
	meterProvider metric.MeterProvider
}

func evaluateOptions(opts []Option) options {
	o := options{inFlight: true, spanEvents: true}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// WithOpFunc sets how a call's op is found when its context carries no
// explicit op id (see ContextWithOpID). The default is the caller's span:
// controlstore.OpFromSpanContext(trace.SpanContextFromContext(ctx)). Return
// the zero Op for "no op"; such a call is still stopped by agent and global
// halts. f must be cheap and safe for concurrent use. A nil f means the
// default.
func WithOpFunc(f func(ctx context.Context) controlstore.Op) Option {
	return func(o *options) { o.opFunc = f }
}

// WithInFlightCancellation sets whether a call that is already running is
// cancelled when its op, its agent or every agent is terminated (default
// true). When on, every call gets a cancellable context of its own and a
// registration with the store for its lifetime, unless it runs under a
// context made by ContextWithOpCancel for its op (see the package
// documentation for what each costs). When off, calls are gated only when
// they start, and streams also at every message.
func WithInFlightCancellation(on bool) Option {
	return func(o *options) { o.inFlight = on }
}

// WithSpanEvents sets whether held, refused and cancelled calls are recorded
// as events on the caller's span (default true). Events are only ever added
// off the fast path, to spans that are recording.
func WithSpanEvents(on bool) Option {
	return func(o *options) { o.spanEvents = on }
}

// WithExemptMethods exempts calls of the given full method names
// ("/package.Service/Method") from op control. OpControlStreamMethod is always
// exempt. For exemptions that depend on more than the method name, wrap the
// interceptors in go-grpc-middleware's selector instead.
//
// A name that is not a full method name (it does not start with '/', or has
// no service or method part) could never match a call: it is ignored, and
// logged with log/slog's default logger.
func WithExemptMethods(methods ...string) Option {
	valid := make([]string, 0, len(methods))
	for _, m := range methods {
		if !isFullMethod(m) {
			slog.Warn("interceptor: WithExemptMethods: ignoring a name that is not a full method name and can never match", "name", m)
			continue
		}
		valid = append(valid, m)
	}
	return func(o *options) { o.exempt = append(o.exempt, valid...) }
}

// isFullMethod reports whether m has the form "/service/method" with both
// parts non-empty, as grpc passes method names to interceptors.
func isFullMethod(m string) bool {
	i := strings.LastIndexByte(m, '/')
	return strings.HasPrefix(m, "/") && i > 1 && i < len(m)-1
}

// WithMeterProvider sets where the interceptors' metrics go (default: the
// global OpenTelemetry meter provider, a no-op unless the application sets
// one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.meterProvider = mp }
}
