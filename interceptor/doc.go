// Package interceptor provides gRPC client interceptors that put every
// outbound RPC of an agent's tool clients under op control: calls of an op
// the operator terminated fail, calls of a paused op wait, and calls already
// running when a terminate arrives are cancelled.
//
// The interceptors read a *controlstore.Store, which the stream subscriber
// keeps up to date with the gateway's signals.
//
// # Set-up
//
// Two lines, on every tool client connection:
//
//	opts := append(interceptor.DialOptions(store), grpc.WithTransportCredentials(creds))
//	conn, err := grpc.NewClient(target, opts...)
//
// # Which op a call belongs to
//
// Every call is checked against three scopes: its op, this agent
// ("agent:{agent_id}") and every agent ("*"). A call with no op is still
// stopped by agent and global halts. The op is, in order of precedence:
//
//  1. the id set with ContextWithOpID on the call's context;
//  2. what the function given to WithOpFunc returns;
//  3. the caller's span: trace.SpanContextFromContext(ctx), i.e.
//     "{trace_id}:{span_id}" as the gateway forms it. No valid span: no op.
//
// The span must be the one whose ids reached the gateway in the agent's
// policy check. The interceptors run before gRPC's stats handlers, so with
// otelgrpc.NewClientHandler installed the op is the caller's span, never the
// RPC's own client span.
//
// OpControlStreamMethod is never gated, so a global pause cannot hold the
// stream that would deliver its resume.
//
// # Error contract
//
// Every error is an *Error: a gRPC status error (status.Code and
// status.FromError work on it) carrying an errdetails.ErrorInfo with domain
// "opcontrol", which also wraps the controlstore error that decided (so
// errors.Is and errors.As work). ErrorInfo metadata always holds "op_id", the
// caller's op id ("" for none).
//
//	situation                          code                reason                  errors.Is
//	op, agent or all terminated,       FailedPrecondition  OP_TERMINATED           controlstore.ErrTerminated
//	  before or while the call runs                        (+ scope, terminated_id)
//	held while paused, context ended   DeadlineExceeded /  OP_PAUSED               controlstore.ErrPaused and
//	  first (message names the op)     Canceled            (+ scope, paused_id)    the context error
//	failing closed (subscriber blind), Unavailable         OP_CONTROL_UNAVAILABLE  controlstore.ErrUnavailable
//	  or held op evicted                                   (+ evicted_id)
//
// The invoker (or streamer) is never called for a refused call. A running
// unary call cancelled by a terminate returns the terminated error, not a
// bare Canceled. A stream is gated when it opens; each SendMsg is held while
// the op is paused; on terminate the stream's context is cancelled and later
// SendMsg, RecvMsg and Header return the terminated error. A stream's
// registration ends when gRPC says the stream is over (RecvMsg returns an
// error, Header or SendMsg a non-EOF error) or when its context is done;
// like gRPC itself, a stream that is neither drained nor cancelled stays
// registered until its context ends.
//
// With WithInFlightCancellation(false), calls are gated only when they start
// and streams when they open and at each SendMsg (a SendMsg that finds the
// op terminated also ends the stream); a terminate does not cancel a running
// unary call or a stream waiting in RecvMsg.
//
// # Chain placement
//
// The gate must be the outermost client interceptor: list DialOptions before
// any other interceptor option (an interceptor installed with
// grpc.WithUnaryInterceptor always runs before chained ones, so do not use
// that for others). Outermost, it sees the caller's context before any
// interceptor replaces its span (a tracing interceptor that starts a client
// span would otherwise change the op), holds a paused call before any
// per-attempt timeout starts, and one registration covers every attempt.
// Then:
//
//   - a retry interceptor (go-grpc-middleware's retry) runs inside the gate:
//     a refused call is never attempted, and a call cancelled by a terminate
//     is not retried, with or without a per-retry timeout, because the
//     context every attempt derives from is cancelled;
//   - go-grpc-middleware's selector may wrap the interceptors to exempt calls
//     chosen at run time; WithExemptMethods exempts by method name.
//
// # Cost
//
// While nothing is signalled, with in-flight cancellation off, a call costs
// a method-name comparison, one atomic load and an atomic add, and
// allocates nothing. Once something is signalled (terminates are sticky, so
// usually for the rest of the process) the op is resolved from the context
// and looked up without locks or allocations. With in-flight cancellation on
// (the default) every call also gets a cancellable context and a store
// registration: 3 allocations. See the package benchmarks.
//
// # Observability
//
// Through the OpenTelemetry API. On the caller's span, the events
// "opcontrol.held" (with the hold duration and how it ended),
// "opcontrol.denied" and "opcontrol.cancelled"; WithSpanEvents turns them
// off. Metrics (see WithMeterProvider): MetricDecisions, an observable
// counter fed by atomics so that counting costs no more than an atomic add;
// MetricHoldDuration; MetricInFlightCancelled. Metric attributes never
// contain op ids.
package interceptor
