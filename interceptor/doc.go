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
// ErrorDomain ("opcontrol"), which also wraps the controlstore error that
// decided (so errors.Is and errors.As work). This table is the contract;
// README and the Error type only summarise it.
//
//	situation                            code                 reason (ErrorInfo)       errors.Is
//	op, agent or all terminated, before  FailedPrecondition   OP_TERMINATED            controlstore.ErrTerminated
//	  the call or while it runs                               scope, terminated_id
//	held while paused, and the caller's  DeadlineExceeded or  OP_PAUSED                controlstore.ErrPaused and
//	  context ended first                Canceled (as ctx)    scope, paused_id         the context error
//	failing closed (subscriber blind)    Unavailable          OP_CONTROL_UNAVAILABLE   controlstore.ErrUnavailable
//	held op's entry evicted              Unavailable          OP_CONTROL_UNAVAILABLE   controlstore.ErrEvicted and
//	                                                          evicted_id                 ErrUnavailable
//
// ErrorInfo metadata always holds "op_id", the caller's op id ("" for
// none); the other keys are the Metadata constants. No other pair of code
// and reason occurs.
//
// A refused call never reaches the invoker (or streamer). A running call
// that a terminate cancels returns the terminated error, not a bare
// Canceled. A terminate is reported only when the store terminated the
// call's own op, agent or fleet: a call whose context ends for another
// reason keeps its own error, even when the cause wraps another op's
// *controlstore.TerminatedError (as errgroup.WithContext's does when a
// sibling call was terminated); so does a held call.
//
// # Streams
//
// A stream is gated when it opens, and each SendMsg is held while the op is
// paused. Once the store has applied a terminate of the stream's op,
// SendMsg, RecvMsg and Header return the terminated error, in either mode:
// no message that gRPC had already received is delivered after it, and
// Header returns no metadata (gRPC's own Header never reports an error;
// the gate does for this one). Without in-flight cancellation the gate
// cancels the stream when one of these calls first finds the terminate, so
// the server sees it end too; with it, the terminate cancels the stream at
// once, waking a RecvMsg that waits.
//
// A stream's registration ends when gRPC says the stream is over (RecvMsg
// returns an error, or a non-server-streaming stream's reply; SendMsg a
// non-EOF error) or when its context is done, so a stream the application
// abandons by cancelling its context is released. Like gRPC itself, a
// stream that is neither drained nor cancelled lives until its context
// ends.
//
// # In-flight cancellation and what it costs
//
// In-flight cancellation (WithInFlightCancellation, on by default) is what
// makes a terminate kill a call that is already running. It needs a
// context that the store can cancel under each running call, and there are
// two ways to have one:
//
//   - Per call (the default, no call-site change): each call gets
//     context.WithCancelCause of the caller's context and a registration
//     with the store. The registration allocates nothing and takes only a
//     lock of the processor it runs on, so concurrent calls, of one op or
//     of many, share no lock and no cache line; the context costs what
//     Go's context package costs (two allocations, and gRPC then links its
//     own per-call context under it: about 5 allocations per RPC in all).
//   - Per op (ContextWithOpCancel): one cancellable context made where the
//     op starts and registered once. The gate recognises it in the lookup
//     that finds the op and passes it through: a call costs what it costs
//     with in-flight cancellation off, and gRPC's context joins the op
//     context's children as it would join the caller's.
//
// With WithInFlightCancellation(false), calls are gated only when they
// start (and stream messages when they are sent); a terminate does not
// cancel a running unary call. Calls under a ContextWithOpCancel scope are
// still cancelled by it, since the scope, not the gate, registered them.
//
// While nothing is signalled, with in-flight cancellation off, a call costs
// a method-name comparison, one atomic load and a per-processor count, and
// allocates nothing. Once something is signalled (terminates are sticky, so
// usually for the rest of the process) the op is resolved from the context
// and looked up without locks or allocations. BENCHMARKS.md in the
// repository has the figures.
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
// # Observability
//
// Through the OpenTelemetry API. On the caller's span, the events
// "opcontrol.held" (with the hold duration and how it ended),
// "opcontrol.denied" and "opcontrol.cancelled"; WithSpanEvents turns them
// off. Metrics (see WithMeterProvider): MetricDecisions, an observable
// counter fed by per-processor atomics; MetricHoldDuration;
// MetricInFlightCancelled. Metric attributes never contain op ids.
// Instruments that cannot be created are no-ops, reported once to
// otel.Handle.
package interceptor
