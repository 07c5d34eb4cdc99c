package interceptor

import (
	"context"
	"strconv"

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

// op returns the op of a call. It costs one or two context lookups, so the
// interceptors call it only when the store is armed or a call must be
// tracked.
func (g *gate) op(ctx context.Context) controlstore.Op {
	if op, ok := ctx.Value(opIDKey{}).(controlstore.Op); ok && !op.IsZero() {
		return op
	}
	if g.opFunc != nil {
		return g.opFunc(ctx)
	}
	return controlstore.OpFromSpanContext(trace.SpanContextFromContext(ctx))
}

func quote(s string) string { return strconv.Quote(s) }
