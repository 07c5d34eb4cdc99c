package interceptor

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"github.com/opcontrol/opcontrol/controlstore"
)

// opValueKey is the context key of an *opValue.
type opValueKey struct{}

// opValue is what ContextWithOpID and ContextWithOpCancel put in a context,
// under one key so that a call finds the innermost of them with one lookup.
type opValue struct {
	op controlstore.Op
	// explicit: op was named with ContextWithOpID (here or, for a scope,
	// further up), so it takes precedence over WithOpFunc and the span.
	explicit bool
	// store is set by ContextWithOpCancel: the context under this value
	// is cancelled by a terminate of op recorded in store.
	store *controlstore.Store
}

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
	return context.WithValue(ctx, opValueKey{}, &opValue{op: controlstore.OpFromID(id), explicit: true})
}

// resolve returns the op of a call and whether ctx is a ContextWithOpCancel
// scope of that op for this gate's store: two context lookups (ours, then
// the span's unless an explicit op decides).
func (g *gate) resolve(ctx context.Context) (op controlstore.Op, scoped bool) {
	v, _ := ctx.Value(opValueKey{}).(*opValue)
	op = opOf(ctx, v, g.opFunc)
	return op, v != nil && v.store == g.store && v.op == op
}

// op returns the op of a call.
func (g *gate) op(ctx context.Context) controlstore.Op {
	op, _ := g.resolve(ctx)
	return op
}

// opOf finds the op of ctx in the documented order of precedence; v is
// ctx's *opValue (or nil) and f the function given to WithOpFunc (or nil).
func opOf(ctx context.Context, v *opValue, f func(context.Context) controlstore.Op) controlstore.Op {
	if v != nil && v.explicit && !v.op.IsZero() {
		return v.op
	}
	if f != nil {
		return f(ctx)
	}
	return controlstore.OpFromSpanContext(trace.SpanContextFromContext(ctx))
}

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
// A gate of the same store sees, in the lookup that finds the call's op,
// that such a call is already covered, and passes its context through to
// gRPC unchanged: no cancellable context and no registration of its own.
// The op is found as a gate without WithOpFunc finds it (ContextWithOpID,
// then the span). A call whose gate finds another op (a child span started
// under the scope, WithOpFunc, a ContextWithOpID inside it), or a call
// gated by another store, is gated as without it. A terminate cancels every
// call running under the context, so use one per op. It panics when store
// is nil.
func ContextWithOpCancel(ctx context.Context, store *controlstore.Store) (context.Context, context.CancelFunc) {
	if store == nil {
		panic("interceptor: ContextWithOpCancel needs a non-nil *controlstore.Store")
	}
	outer, _ := ctx.Value(opValueKey{}).(*opValue)
	v := &opValue{op: opOf(ctx, outer, nil), store: store}
	v.explicit = outer != nil && outer.explicit && !outer.op.IsZero()
	// The value sits under the cancellable context, so that gRPC's per-call
	// context finds the cancelCtx first and joins its children.
	ctx, cancel := context.WithCancelCause(context.WithValue(ctx, opValueKey{}, v))
	call := store.TrackContext(ctx, v.op, cancel)
	return ctx, func() {
		call.Release()
		cancel(nil)
	}
}
