package interceptor

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/metric"

	"github.com/opcontrol/opcontrol/controlstore"
)

// Option configures the interceptors.
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
		opt(&o)
	}
	return o
}

// WithOpFunc sets how a call's op is found when its context carries no
// explicit op id (see ContextWithOpID). The default is the caller's span:
// controlstore.OpFromSpanContext(trace.SpanContextFromContext(ctx)). Return
// the zero Op for "no op"; such a call is still stopped by agent and global
// halts. f must be cheap and safe for concurrent use. It panics when f is
// nil.
func WithOpFunc(f func(ctx context.Context) controlstore.Op) Option {
	if f == nil {
		panic("interceptor: WithOpFunc needs a non-nil function")
	}
	return func(o *options) { o.opFunc = f }
}

// WithInFlightCancellation sets whether a call that is already running is
// cancelled when its op, its agent or every agent is terminated (default
// true). When on, every call is registered with the store for its lifetime,
// which costs a cancellable context and a registration per call (see the
// package benchmarks). When off, calls are only gated when they start (and
// streams at every SendMsg).
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
// interceptors in go-grpc-middleware's selector instead. It panics on a name
// that does not start with '/' or has no method part: such a name could never
// match.
func WithExemptMethods(methods ...string) Option {
	for _, m := range methods {
		if !strings.HasPrefix(m, "/") || strings.LastIndexByte(m, '/') < 2 || strings.HasSuffix(m, "/") {
			panic("interceptor: WithExemptMethods needs full method names like \"/pkg.Service/Method\", got " + quote(m))
		}
	}
	cp := append([]string(nil), methods...)
	return func(o *options) { o.exempt = append(o.exempt, cp...) }
}

// WithMeterProvider sets where the interceptors' metrics go (default: the
// global OpenTelemetry meter provider, a no-op unless the application sets
// one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.meterProvider = mp }
}
