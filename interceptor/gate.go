package interceptor

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/contract"
)

// OpControlStreamMethod is the full method of the gateway's op-control
// stream. It is never gated, so that a global pause can never hold the
// stream that would deliver its resume, even when the interceptors are
// installed on the gateway connection.
const OpControlStreamMethod = contract.OpControlStreamMethod

// gate is the state shared by the unary and stream interceptors built by
// one constructor call. It is immutable after newGate.
type gate struct {
	store      *controlstore.Store
	opFunc     func(context.Context) controlstore.Op
	inFlight   bool
	spanEvents bool
	exempt     []string
	m          *metrics
}

func newGate(store *controlstore.Store, opts []Option) *gate {
	if store == nil {
		panic("interceptor: needs a non-nil *controlstore.Store (create one with controlstore.New)")
	}
	o := evaluateOptions(opts)
	g := &gate{
		store:      store,
		opFunc:     o.opFunc,
		inFlight:   o.inFlight,
		spanEvents: o.spanEvents,
		exempt:     o.exempt,
	}
	g.m = newMetrics(o.meterProvider, g)
	return g
}

// UnaryClientInterceptor returns a unary client interceptor that gates every
// call on store: it fails terminated calls without invoking them, holds calls
// while their op, agent or every agent is paused, and (unless
// WithInFlightCancellation(false)) cancels a running call when a terminate
// arrives. It must be the outermost interceptor; see the package
// documentation. It panics when store is nil.
func UnaryClientInterceptor(store *controlstore.Store, opts ...Option) grpc.UnaryClientInterceptor {
	return newGate(store, opts).unary
}

// StreamClientInterceptor returns a stream client interceptor that gates
// every stream on store when it opens, holds each SendMsg while the stream's
// op is paused, and stops the stream once its op is terminated: after
// that, SendMsg, RecvMsg and Header return the terminated error. Unless
// WithInFlightCancellation(false), the terminate also cancels the stream at
// once. It must be the outermost interceptor; see the package
// documentation. It panics when store is nil.
func StreamClientInterceptor(store *controlstore.Store, opts ...Option) grpc.StreamClientInterceptor {
	return newGate(store, opts).stream
}

// DialOptions returns the dial options that install both interceptors, with
// grpc.WithChainUnaryInterceptor and grpc.WithChainStreamInterceptor, so that
// the application's own chains still compose. List them before any other
// interceptor option: chained interceptors run in the order their options
// are given, and the gate must be outermost. (An interceptor installed with
// grpc.WithUnaryInterceptor or grpc.WithStreamInterceptor always runs before
// every chained one.) It panics when store is nil.
func DialOptions(store *controlstore.Store, opts ...Option) []grpc.DialOption {
	g := newGate(store, opts)
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(g.unary),
		grpc.WithChainStreamInterceptor(g.stream),
	}
}

// isExempt reports whether method is never gated. The common case is one
// string comparison that fails on the length.
func (g *gate) isExempt(method string) bool {
	if method == OpControlStreamMethod {
		return true
	}
	for _, m := range g.exempt {
		if method == m {
			return true
		}
	}
	return false
}

func (g *gate) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if g.isExempt(method) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	if !g.inFlight {
		if !g.store.Armed() {
			// Nothing signalled: nothing can hold or refuse the call, and
			// the op need not be resolved.
			g.m.decision(outcomeAllowed)
			err := invoker(ctx, method, req, reply, cc, opts...)
			if err != nil && g.store.Armed() {
				return g.ran(ctx, g.op(ctx), false, err)
			}
			return err
		}
		op := g.op(ctx)
		if err := g.admit(ctx, op, true, false); err != nil {
			return err
		}
		return g.ran(ctx, op, false, invoker(ctx, method, req, reply, cc, opts...))
	}

	op, scoped := g.resolve(ctx)
	if scoped {
		// ContextWithOpCancel: a terminate of op cancels ctx already, and
		// gRPC's per-call context joins ctx's children as on a bare call.
		if err := g.admit(ctx, op, true, false); err != nil {
			return err
		}
		return g.ran(ctx, op, true, invoker(ctx, method, req, reply, cc, opts...))
	}
	return g.unaryTracked(ctx, op, method, req, reply, cc, invoker, opts)
}

// unaryTracked runs a call of op with a cancellable context of its own,
// registered with the store for the call's lifetime. It is kept apart, with
// one return, so that its defers are open-coded (a few ns, not a deferred
// record per call).
func (g *gate) unaryTracked(ctx context.Context, op controlstore.Op, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) (err error) {
	// Register first, check second: a terminate that lands before Track is
	// seen by the check (Track's or admit's), one that lands after cancels
	// callCtx.
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	call := g.store.Track(op, cancel)
	defer call.Release()
	if err = g.admit(ctx, op, true, false); err == nil {
		err = g.ran(ctx, op, true, invoker(callCtx, method, req, reply, cc, opts...))
	}
	return err
}

// ran returns what a call of op that ran returns: its own err, or the
// terminated error when err is the store stopping it, i.e. the store has
// terminated op and a terminate of op cancels the call's context (covered:
// its registration, or a ContextWithOpCancel scope). A call whose context
// ended for another reason, such as a parent cancelled with another op's
// terminated error as cause, keeps its own error.
func (g *gate) ran(ctx context.Context, op controlstore.Op, covered bool, err error) error {
	if err == nil || !g.store.Armed() {
		return err
	}
	if !covered && !g.scopedFor(ctx, op) {
		return err
	}
	te := g.terminated(op)
	if te == nil {
		return err
	}
	return g.cancelled(ctx, op, te)
}

// scopedFor reports whether ctx is a ContextWithOpCancel scope of op for
// this gate's store. Error paths only.
func (g *gate) scopedFor(ctx context.Context, op controlstore.Op) bool {
	v, _ := ctx.Value(opValueKey{}).(*opValue)
	return v != nil && v.store == g.store && v.op == op
}

// terminated returns the store's *TerminatedError for op, or nil when no
// scope of op is terminated.
func (g *gate) terminated(op controlstore.Op) *controlstore.TerminatedError {
	te, _ := g.store.Check(op).(*controlstore.TerminatedError) //nolint:errorlint // Check returns the store's own errors, never wrapped
	return te
}

// admit decides whether a call (perCall) or a stream message of op may go
// ahead now: nil, or the *Error that stops it. It holds while op is paused.
// covered says that a terminate of op cancels ctx (a stream's registered
// context); a ContextWithOpCancel scope is recognised by itself.
func (g *gate) admit(ctx context.Context, op controlstore.Op, perCall, covered bool) error {
	err := g.store.Check(op)
	if err == nil {
		if perCall {
			g.m.decision(outcomeAllowed)
		}
		return nil
	}
	if pe, held := err.(*controlstore.PausedError); held { //nolint:errorlint // Check returns the store's own errors, never wrapped
		start := time.Now()
		err = g.store.Wait(ctx, op)
		d := time.Since(start)
		if _, gaveUp := err.(*controlstore.PausedError); gaveUp { //nolint:errorlint // Wait returns the store's own errors, never wrapped
			// ctx ended while held. If it ended because the store
			// terminated op, that is the verdict; any other cause,
			// whatever it wraps, is the caller's.
			if te := g.terminated(op); te != nil && (covered || g.scopedFor(ctx, op)) {
				err = te
			}
		}
		if err == nil {
			g.held(ctx, op, pe, d, holdResumed)
			g.m.decision(outcomeHeld)
			return nil
		}
		e := newError(op, err)
		g.held(ctx, op, pe, d, e.v.hold)
		g.refused(ctx, e)
		return e
	}
	e := newError(op, err)
	g.refused(ctx, e)
	return e
}

// held records a hold of op, started by pe, that ended with r after d.
func (g *gate) held(ctx context.Context, op controlstore.Op, pe *controlstore.PausedError, d time.Duration, r holdResult) {
	g.m.hold(ctx, d, r)
	if !g.spanEvents {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.AddEvent("opcontrol.held", trace.WithAttributes(
		attribute.String("opcontrol.op_id", op.String()),
		attribute.String("opcontrol.scope", pe.Scope.String()),
		attribute.String("opcontrol.paused_id", pe.OpID),
		attribute.Float64("opcontrol.hold.duration", d.Seconds()),
		attribute.String("opcontrol.hold.result", holdResultNames[r]),
	))
}

// refused records a call or message stopped by e. A caller that gave up
// while held counts as held, and its hold event says so: the gate refused
// nothing.
func (g *gate) refused(ctx context.Context, e *Error) {
	g.m.decision(e.v.outcome)
	if e.v.outcome != outcomeHeld {
		g.event(ctx, "opcontrol.denied", e)
	}
}

// cancelled records a running call (or stream) of op stopped by te and
// returns its error.
func (g *gate) cancelled(ctx context.Context, op controlstore.Op, te *controlstore.TerminatedError) *Error {
	e := newError(op, te)
	g.recordCancelled(ctx, e)
	return e
}

func (g *gate) recordCancelled(ctx context.Context, e *Error) {
	g.m.cancel(ctx, e.v.scope)
	g.event(ctx, "opcontrol.cancelled", e)
}

func (g *gate) event(ctx context.Context, name string, e *Error) {
	if !g.spanEvents {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	v := &e.v
	attrs := []attribute.KeyValue{
		attribute.String("opcontrol.op_id", v.opID),
		attribute.String("opcontrol.code", v.code.String()),
		attribute.String("opcontrol.reason", v.reason),
	}
	if v.scoped {
		attrs = append(attrs, attribute.String("opcontrol.scope", v.scope.String()))
	}
	if v.idKey != "" {
		attrs = append(attrs, attribute.String("opcontrol."+v.idKey, v.id))
	}
	span.AddEvent(name, trace.WithAttributes(attrs...))
}
