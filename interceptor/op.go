package interceptor

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"github.com/opcontrol/opcontrol/controlstore"
)

// opIDKey is the context key of an explicit op.
type opIDKey struct{}

// ContextWithOpID returns a copy of ctx whose gated calls belong to the op
// with the gateway op id id, whatever span ctx carries. Use it when the
// span_id that reached the gateway in the agent's policy check is not the
// span that is current when the tool call is made. An id in OpenTelemetry
// form ("{32 hex}:{16 hex}", lowercase) is parsed once, here; any other id
// matches only the exact same string.
//
// An empty id removes an explicit op set further up, so that the call's op
// is found as if ContextWithOpID had not been used.
//
// Precedence, per call: the op id set by ContextWithOpID, then the function
// given to WithOpFunc, then the caller's span.
func ContextWithOpID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, opIDKey{}, controlstore.OpFromID(id))
}

// op returns the op of a call: one or two context lookups.
func (g *gate) op(ctx context.Context) controlstore.Op { return opOf(ctx, g.opFunc) }

// opOf finds the op of ctx in the documented order of precedence; f is the
// function given to WithOpFunc, or nil.
func opOf(ctx context.Context, f func(context.Context) controlstore.Op) controlstore.Op {
	if op, ok := ctx.Value(opIDKey{}).(controlstore.Op); ok && !op.IsZero() {
		return op
	}
	if f != nil {
		return f(ctx)
	}
	return controlstore.OpFromSpanContext(trace.SpanContextFromContext(ctx))
}

// opScope is the context value of ContextWithOpCancel: the context below
// it is cancelled by a terminate of op recorded in store.
type opScope struct {
	store *controlstore.Store
	op    controlstore.Op
}

type opScopeKey struct{}

// ContextWithOpCancel returns a copy of ctx that store cancels when the op
// of ctx, this agent or every agent is terminated, with the
// *controlstore.TerminatedError as cause, and a function that ends that:
// call it when the op is over, as with context.WithCancel (it cancels the
// returned context and releases the registration).
//
// It makes in-flight cancellation cost nothing per call. Make the context
// once, where the op's span starts, and pass it to the op's tool calls:
//
//	ctx, span := tracer.Start(ctx, "plan-step")
//	defer span.End()
//	ctx, done := interceptor.ContextWithOpCancel(ctx, store)
//	defer done()
//
// A gate of the same store sees, with one context lookup, that such a call
// is already covered, and passes its context through to gRPC unchanged: no
// cancellable context and no registration of its own. The op is found as a
// gate without WithOpFunc finds it (ContextWithOpID, then the span); a call
// whose gate finds another op, or a call gated by another store, is gated
// as without it. A terminate cancels every call running under the context,
// so use one per op. It panics when store is nil.
func ContextWithOpCancel(ctx context.Context, store *controlstore.Store) (context.Context, context.CancelFunc) {
	if store == nil {
		panic("interceptor: ContextWithOpCancel needs a non-nil *controlstore.Store")
	}
	op := opOf(ctx, nil)
	// The value sits under the cancellable context, so that gRPC's per-call
	// context finds the cancelCtx first and joins its children.
	ctx, cancel := context.WithCancelCause(context.WithValue(ctx, opScopeKey{}, &opScope{store: store, op: op}))
	call := store.TrackContext(ctx, op, cancel)
	return ctx, func() {
		call.Release()
		cancel(nil)
	}
}

// scoped reports whether ctx comes from ContextWithOpCancel for op and
// this gate's store, so that a terminate of op already cancels it.
func (g *gate) scoped(ctx context.Context, op controlstore.Op) bool {
	sc, ok := ctx.Value(opScopeKey{}).(*opScope)
	return ok && sc.store == g.store && sc.op == op
}
