package interceptor

import (
	"context"
	"errors"
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
// op is paused, and (unless WithInFlightCancellation(false)) cancels the
// stream when a terminate arrives, after which SendMsg and RecvMsg return the
// terminated error. It must be the outermost interceptor; see the package
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

// quiet reports whether nothing at all is signalled, so that no call can be
// held or refused and the op need not be resolved: one atomic load.
func (g *gate) quiet() bool {
	return !g.store.Armed()
}

func (g *gate) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if g.isExempt(method) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	if !g.inFlight {
		if g.quiet() {
			g.m.decision(outcomeAllowed)
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		op := g.op(ctx)
		if err := g.admit(ctx, op, true); err != nil {
			return err
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}

	// Register first, check second: a terminate that lands before Track is
	// seen by the check, one that lands after cancels callCtx.
	op := g.op(ctx)
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	call := g.store.Track(op, cancel)
	defer call.Release()
	if err := g.admit(ctx, op, true); err != nil {
		return err
	}
	err := invoker(callCtx, method, req, reply, cc, opts...)
	if err != nil {
		if te := terminatedCause(callCtx); te != nil {
			return g.cancelled(ctx, op, te)
		}
	}
	return err
}

// admit decides whether a call (perCall) or a stream message of op may go
// ahead now: nil, or the *Error that stops it. It holds while op is paused.
func (g *gate) admit(ctx context.Context, op controlstore.Op, perCall bool) error {
	err := g.store.Check(op)
	if err == nil {
		if perCall {
			g.m.decision(outcomeAllowed)
		}
		return nil
	}
	var pe *controlstore.PausedError
	if errors.As(err, &pe) {
		start := time.Now()
		err = g.store.Wait(ctx, op)
		d := time.Since(start)
		// A terminate that cancelled ctx may win the race with the
		// store's own wakeup: report the terminate, not the context.
		var gaveUp *controlstore.PausedError
		if errors.As(err, &gaveUp) && gaveUp.Err != nil {
			if te := terminatedCause(ctx); te != nil {
				err = te
			}
		}
		g.held(ctx, op, pe, d, err)
		if err == nil {
			g.m.decision(outcomeHeld)
			return nil
		}
	}
	e := newError(op, err)
	g.refused(ctx, e)
	return e
}

// held records a hold of op, started by pe, that ended with err after d
// (nil: the call went ahead).
func (g *gate) held(ctx context.Context, op controlstore.Op, pe *controlstore.PausedError, d time.Duration, err error) {
	r := holdResumed
	switch {
	case err == nil:
	case errors.Is(err, controlstore.ErrTerminated):
		r = holdTerminated
	case errors.Is(err, controlstore.ErrUnavailable):
		r = holdUnavailable
	default:
		r = holdAbandoned
	}
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
	switch {
	case errors.Is(e.cause, controlstore.ErrTerminated):
		g.m.decision(outcomeDenied)
	case errors.Is(e.cause, controlstore.ErrUnavailable):
		g.m.decision(outcomeUnavailable)
	default:
		g.m.decision(outcomeHeld)
		return
	}
	g.event(ctx, "opcontrol.denied", e)
}

// cancelled records a running call cancelled by te and returns its error.
func (g *gate) cancelled(ctx context.Context, op controlstore.Op, te *controlstore.TerminatedError) *Error {
	e := newError(op, te)
	g.m.cancel(ctx, te.Scope)
	g.event(ctx, "opcontrol.cancelled", e)
	return e
}

func (g *gate) event(ctx context.Context, name string, e *Error) {
	if !g.spanEvents {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{
		attribute.String("opcontrol.op_id", e.opID),
		attribute.String("opcontrol.code", e.st.Code().String()),
	}
	var te *controlstore.TerminatedError
	if errors.As(e.cause, &te) {
		attrs = append(attrs, attribute.String("opcontrol.reason", ReasonTerminated),
			attribute.String("opcontrol.scope", te.Scope.String()),
			attribute.String("opcontrol.terminated_id", te.OpID))
	} else {
		attrs = append(attrs, attribute.String("opcontrol.reason", ReasonUnavailable))
	}
	span.AddEvent(name, trace.WithAttributes(attrs...))
}
