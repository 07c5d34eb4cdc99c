package interceptor_test

// Chain placement, proved in real chains over a real connection.

import (
	"context"
	"errors"
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
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
)

// go-grpc-middleware's selector exempts chosen calls from the gate.
func TestChainSelectorExempts(t *testing.T) {
	ts := startServer(t)
	store := newStore(t)
	exemptOther := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.FullMethod() != methodOther && c.FullMethod() != methodWatch
	})
	cc := dial(t, ts,
		grpc.WithChainUnaryInterceptor(selector.UnaryClientInterceptor(interceptor.UnaryClientInterceptor(store), exemptOther)),
		grpc.WithChainStreamInterceptor(selector.StreamClientInterceptor(interceptor.StreamClientInterceptor(store), exemptOther)),
	)
	apply(t, store, controlstore.GlobalOpID, controlstore.SignalTerminate)

	wantTerminated(t, callEcho(context.Background(), cc), "", controlstore.ScopeGlobal, controlstore.GlobalOpID)
	if err := cc.Invoke(context.Background(), methodOther, wrapperspb.String("x"), new(wrapperspb.StringValue)); err != nil {
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
	if err := cs.SendMsg(wrapperspb.String("w")); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
		t.Fatal(err)
	}
	if ts.echoes.Load() != 1 {
		t.Fatalf("server saw %d echo calls, want 1 (the exempt one)", ts.echoes.Load())
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
			if n := ts.flakes.Load(); n != 2 {
				t.Fatalf("Flaky attempts = %d, want 2", n)
			}

			// In flight: cancelled once, never retried.
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			done := async(func() error { return callBlock(ctx, cc) })
			recv(t, ts.entered, "first attempt")
			apply(t, store, opID, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, done, "cancelled call"), opID, controlstore.ScopeOp, opID)
			if sErr := recv(t, ts.exited, "handler to end"); !errors.Is(sErr, context.Canceled) {
				t.Fatalf("handler ended with %v, want its context cancelled", sErr)
			}
			if n := ts.blocks.Load(); n != 1 {
				t.Fatalf("Block attempted %d times, want 1", n)
			}

			// Refused before any attempt.
			wantTerminated(t, callBlock(ctx, cc), opID, controlstore.ScopeOp, opID)
			if n := ts.blocks.Load(); n != 1 {
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
			if err := cs.SendMsg(wrapperspb.String("w")); err != nil {
				t.Fatal(err)
			}
			if err := cs.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
				t.Fatal(err)
			}
			recv(t, ts.entered, "watch to block")
			recvd := async(func() error { return cs.RecvMsg(new(wrapperspb.StringValue)) })
			apply(t, store, opID2, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, recvd, "blocked RecvMsg"), opID2, controlstore.ScopeOp, opID2)
			if sErr := recv(t, ts.exited, "watch to end"); !errors.Is(sErr, context.Canceled) {
				t.Fatalf("watch ended with %v, want its context cancelled", sErr)
			}
			select {
			case <-ts.entered:
				t.Fatal("terminated stream re-established by retry")
			default:
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
	in := recv(t, ts.entered, "stream to open")
	rpcOp := rpcSpanOp(t, in.md.Get("traceparent"))
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

	// The recorded client span is a child of the caller's span.
	var found bool
	for _, s := range tr.rec.Ended() {
		if s.SpanKind() == trace.SpanKindClient && s.Parent().SpanID() == span.SpanContext().SpanID() {
			found = opIDOf(s.SpanContext()) == rpcOp
		}
	}
	if !found {
		t.Fatal("no client span with the caller as parent and the traceparent's ids")
	}
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
