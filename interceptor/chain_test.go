package interceptor_test

// Chain placement, proved in real chains over a real connection.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
)

// go-grpc-middleware's selector exempts chosen calls from the gate.
func TestChainSelectorExempts(t *testing.T) {
	ts := startServer(t)
	store := newStore(t)
	exemptOther := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.FullMethod() != methodBlock && c.FullMethod() != methodWatch
	})
	cc := dial(t, ts,
		grpc.WithChainUnaryInterceptor(selector.UnaryClientInterceptor(interceptor.UnaryClientInterceptor(store), exemptOther)),
		grpc.WithChainStreamInterceptor(selector.StreamClientInterceptor(interceptor.StreamClientInterceptor(store), exemptOther)),
	)
	apply(t, store, controlstore.GlobalOpID, controlstore.SignalTerminate)

	wantTerminated(t, callEcho(context.Background(), cc), "", controlstore.ScopeGlobal, controlstore.GlobalOpID)
	if err := cc.Invoke(context.Background(), methodBlock, durationpb.New(0), new(wrapperspb.StringValue)); err != nil {
		t.Fatalf("selector-exempt unary call refused: %v", err)
	}
	_, err := cc.NewStream(context.Background(), chatDesc, methodChat)
	wantTerminated(t, err, "", controlstore.ScopeGlobal, controlstore.GlobalOpID)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs, err := cc.NewStream(ctx, watchDesc, methodWatch)
	if err != nil {
		t.Fatalf("selector-exempt stream refused: %v", err)
	}
	if err := cs.SendMsg(wrapperspb.Int64(1)); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(wrapperspb.Int64Value)); err != nil {
		t.Fatal(err)
	}
	if e, w := served(ts, methodEcho), served(ts, methodBlock); e != 0 || w != 1 {
		t.Fatalf("server answered %d Echo and %d Work calls, want 0 and 1 (the exempt one)", e, w)
	}
}

// go-grpc-middleware's retry, placed inside the gate, never retries a
// terminated call: a refused call never reaches it, and a call cancelled in
// flight is not retried because every attempt's context derives from the
// cancelled one, with or without a per-retry timeout.
func TestChainRetryNeverRetriesTerminated(t *testing.T) {
	tr := newTracing(t)
	for _, tc := range []struct {
		name string
		opts []retry.CallOption
	}{
		{"plain", nil},
		{"per-retry-timeout", []retry.CallOption{retry.WithPerRetryTimeout(waitFor)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t)
			store := newStore(t)
			// Retry everything a terminate could look like.
			ropts := append([]retry.CallOption{
				retry.WithMax(5),
				retry.WithBackoff(retry.BackoffLinear(time.Millisecond)),
				retry.WithCodes(codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.FailedPrecondition, codes.Aborted, codes.Unknown),
			}, tc.opts...)
			dopts := append(interceptor.DialOptions(store),
				grpc.WithChainUnaryInterceptor(retry.UnaryClientInterceptor(ropts...)),
				grpc.WithChainStreamInterceptor(retry.StreamClientInterceptor(ropts...)))
			cc := dial(t, ts, dopts...)

			// The retry interceptor is live: Flaky fails once, then succeeds.
			if err := cc.Invoke(context.Background(), methodFlaky, wrapperspb.String("f"), new(wrapperspb.StringValue)); err != nil {
				t.Fatalf("retry not active: %v", err)
			}
			if n := served(ts, methodFlaky); n != 2 {
				t.Fatalf("Flaky attempts = %d, want 2", n)
			}

			// In flight: cancelled once, never retried.
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			done := async(func() error { return callBlock(ctx, cc) })
			waitEntered(t, ts, methodBlock, 1)
			apply(t, store, opID, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, done, "cancelled call"), opID, controlstore.ScopeOp, opID)
			waitServerCancelled(t, ts, methodBlock, 1)
			if n := ts.Entered(methodBlock); n != 1 {
				t.Fatalf("Block attempted %d times, want 1", n)
			}

			// Refused before any attempt.
			wantTerminated(t, callBlock(ctx, cc), opID, controlstore.ScopeOp, opID)
			if n := ts.Entered(methodBlock); n != 1 {
				t.Fatalf("Block attempted %d times after the terminate", n)
			}

			// Server-streaming, retried by the stream retry interceptor on
			// RecvMsg: cancelled in flight, not re-established.
			ctx2, span2, opID2 := tr.start(context.Background(), "op2")
			defer span2.End()
			cs, err := cc.NewStream(ctx2, watchDesc, methodWatch)
			if err != nil {
				t.Fatal(err)
			}
			if err := cs.SendMsg(wrapperspb.Int64(1)); err != nil {
				t.Fatal(err)
			}
			if err := cs.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if err := cs.RecvMsg(new(wrapperspb.Int64Value)); err != nil {
				t.Fatal(err)
			}
			recvd := async(func() error { return cs.RecvMsg(new(wrapperspb.Int64Value)) })
			apply(t, store, opID2, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, recvd, "blocked RecvMsg"), opID2, controlstore.ScopeOp, opID2)
			waitServerCancelled(t, ts, methodWatch, 1)
			if n := len(ts.Headers(methodWatch)); n != 1 {
				t.Fatalf("Watch opened %d times: a terminated stream was re-established by retry", n)
			}
			eventually(t, "registrations released", func() bool { return store.InFlight() == 0 })
		})
	}
}

// With otelgrpc's stats handler installed, the RPC's client span is created
// after the interceptors run, so the op is the caller's span, not the RPC
// span whose ids travel in traceparent.
func TestChainOtelgrpcStatsHandlerUsesCallerSpan(t *testing.T) {
	tr := newTracing(t)
	ts := startServer(t)
	store := newStore(t)
	dopts := append(interceptor.DialOptions(store),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(tr.tp),
			otelgrpc.WithPropagators(propagation.TraceContext{}))))
	cc := dial(t, ts, dopts...)

	ctx, span, callerOp := tr.start(context.Background(), "caller")
	cs, err := cc.NewStream(ctx, chatDesc, methodChat)
	if err != nil {
		t.Fatal(err)
	}
	opened, cancelOpen := context.WithTimeout(context.Background(), waitFor)
	defer cancelOpen()
	if err := ts.Wait(opened, func() bool { return len(ts.Headers(methodChat)) > 0 }); err != nil {
		t.Fatal("the stream never reached the tool server")
	}
	rpcOp := rpcSpanOp(t, ts.Headers(methodChat)[0].Get("traceparent"))
	if rpcOp == callerOp {
		t.Fatal("traceparent carries the caller's span; the stats handler made no client span")
	}
	if !strings.HasPrefix(rpcOp, callerOp[:32]) {
		t.Fatalf("RPC span %s not in the caller's trace %s", rpcOp, callerOp)
	}

	// Terminating the RPC span's op does not touch the call...
	apply(t, store, rpcOp, controlstore.SignalTerminate)
	if err := cs.SendMsg(wrapperspb.String("still")); err != nil {
		t.Fatalf("SendMsg after terminating the RPC span's op: %v", err)
	}
	if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
		t.Fatalf("RecvMsg after terminating the RPC span's op: %v", err)
	}
	// ...terminating the caller's op does.
	apply(t, store, callerOp, controlstore.SignalTerminate)
	wantTerminated(t, cs.RecvMsg(new(wrapperspb.StringValue)), callerOp, controlstore.ScopeOp, callerOp)

	// Unary: refused before the stats handler makes a client span.
	before := len(tr.rec.Started())
	wantTerminated(t, callEcho(ctx, cc), callerOp, controlstore.ScopeOp, callerOp)
	if after := len(tr.rec.Started()); after != before {
		t.Fatalf("%d spans started for a refused call; the gate must run before the stats handler", after-before)
	}
	span.End()

	// The recorded client span is a child of the caller's span. The gate
	// returned the terminated error as soon as the store applied the
	// terminate; gRPC ends the cancelled stream (and its span) right after.
	eventually(t, "a client span with the caller as parent and the traceparent's ids", func() bool {
		for _, s := range tr.rec.Ended() {
			if s.SpanKind() == trace.SpanKindClient && s.Parent().SpanID() == span.SpanContext().SpanID() &&
				opIDOf(s.SpanContext()) == rpcOp {
				return true
			}
		}
		return false
	})
	eventually(t, "registrations released", func() bool { return store.InFlight() == 0 })
}

// rpcSpanOp turns a W3C traceparent ("00-{trace}-{span}-{flags}") into an op id.
func rpcSpanOp(t testing.TB, tp []string) string {
	t.Helper()
	if len(tp) != 1 {
		t.Fatalf("traceparent = %q", tp)
	}
	parts := strings.Split(tp[0], "-")
	if len(parts) != 4 {
		t.Fatalf("traceparent = %q", tp[0])
	}
	return parts[1] + ":" + parts[2]
}
