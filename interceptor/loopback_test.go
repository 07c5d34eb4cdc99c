package interceptor_test

// End-to-end through a real grpc.ClientConn over TCP to a real tool server on
// 127.0.0.1:0, with real OpenTelemetry SDK spans. The store is driven with
// Apply, exactly as the stream subscriber drives it.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
)

type scopeCase struct {
	scope  controlstore.Scope
	target func(opID string) string
}

var scopeCases = []scopeCase{
	{controlstore.ScopeOp, func(op string) string { return op }},
	{controlstore.ScopeAgent, func(string) string { return agentOpID }},
	{controlstore.ScopeGlobal, func(string) string { return controlstore.GlobalOpID }},
}

func TestLoopbackTerminate(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		for _, sc := range scopeCases {
			t.Run(m.name+"/"+sc.scope.String(), func(t *testing.T) {
				ts, store, cc := loopback(t, m.opt)
				ctx, span, opID := tr.start(context.Background(), "op")
				defer span.End()
				if err := callEcho(ctx, cc); err != nil {
					t.Fatal(err)
				}
				apply(t, store, sc.target(opID), controlstore.SignalTerminate)

				err := callEcho(ctx, cc)
				wantTerminated(t, err, opID, sc.scope, sc.target(opID))
				_, err = cc.NewStream(ctx, chatDesc, methodChat)
				wantTerminated(t, err, opID, sc.scope, sc.target(opID))
				if n := served(ts, methodEcho); n != 1 {
					t.Fatalf("server saw %d calls, want only the one before the terminate", n)
				}

				// A call with no span, and a call of another op.
				for name, c := range map[string]context.Context{"no span": context.Background(), "other op": mustCtx(tr)} {
					err := callEcho(c, cc)
					if sc.scope == controlstore.ScopeOp {
						if err != nil {
							t.Fatalf("%s: refused by another op's terminate: %v", name, err)
						}
						continue
					}
					wantOp := ""
					if spc := trace.SpanContextFromContext(c); spc.IsValid() {
						wantOp = opIDOf(spc)
					}
					wantTerminated(t, err, wantOp, sc.scope, sc.target(opID))
				}
				if n := store.InFlight(); n != 0 {
					t.Fatalf("InFlight = %d", n)
				}
			})
		}
	}
}

func mustCtx(tr *tracing) context.Context {
	ctx, span, _ := tr.start(context.Background(), "other-op")
	span.End() // the span context stays in ctx
	return ctx
}

func TestLoopbackPauseResume(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		for _, sc := range scopeCases {
			t.Run(m.name+"/"+sc.scope.String(), func(t *testing.T) {
				ts, store, cc := loopback(t, m.opt)
				ctx, span, opID := tr.start(context.Background(), "op")
				apply(t, store, sc.target(opID), controlstore.SignalPause)

				unary := async(func() error { return callEcho(ctx, cc) })
				var cs grpc.ClientStream
				stream := async(func() (err error) {
					cs, err = cc.NewStream(ctx, chatDesc, methodChat)
					return err
				})
				waitHeld(t, store, 2)
				notDone(t, unary, "held unary call")
				notDone(t, stream, "held stream open")
				if n := served(ts, methodEcho); n != 0 {
					t.Fatalf("server saw %d calls while paused", n)
				}
				// A RESUME of another id releases nothing.
				apply(t, store, "trace-001:span-001", controlstore.SignalResume)
				notDone(t, unary, "held unary call")

				apply(t, store, sc.target(opID), controlstore.SignalResume)
				if err := recv(t, unary, "resumed unary call"); err != nil {
					t.Fatal(err)
				}
				if err := recv(t, stream, "resumed stream open"); err != nil {
					t.Fatal(err)
				}
				if err := cs.SendMsg(wrapperspb.String("x")); err != nil {
					t.Fatal(err)
				}
				if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
					t.Fatal(err)
				}
				if err := cs.CloseSend(); err != nil {
					t.Fatal(err)
				}
				if err := cs.RecvMsg(new(wrapperspb.StringValue)); !errors.Is(err, io.EOF) {
					t.Fatalf("final RecvMsg = %v, want io.EOF", err)
				}
				span.End()
				ev, ok := eventNamed(tr.endedLast(t, "op"), "opcontrol.held")
				if !ok {
					t.Fatal("no opcontrol.held event on the caller's span")
				}
				if v, _ := attrOf(ev.Attributes, "opcontrol.hold.result"); v.AsString() != "resumed" {
					t.Fatalf("hold result = %q", v.AsString())
				}
				eventually(t, "registrations released", func() bool { return store.InFlight() == 0 })
			})
		}
	}
}

// endedLast returns the most recently ended span named name.
func (tr *tracing) endedLast(t testing.TB, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	ended := tr.rec.Ended()
	for i := len(ended) - 1; i >= 0; i-- {
		if ended[i].Name() == name {
			return ended[i]
		}
	}
	t.Fatalf("no ended span %q", name)
	return nil
}

func TestLoopbackTerminateWhileHeld(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		for _, sc := range scopeCases {
			t.Run(m.name+"/"+sc.scope.String(), func(t *testing.T) {
				ts, store, cc := loopback(t, m.opt)
				ctx, span, opID := tr.start(context.Background(), "op")
				defer span.End()
				// Paused at one scope, terminated at another (or the same).
				apply(t, store, opID, controlstore.SignalPause)
				done := async(func() error { return callEcho(ctx, cc) })
				waitHeld(t, store, 1)
				apply(t, store, sc.target(opID), controlstore.SignalTerminate)
				wantTerminated(t, recv(t, done, "held call"), opID, sc.scope, sc.target(opID))
				if n := served(ts, methodEcho); n != 0 {
					t.Fatalf("server saw %d calls", n)
				}
				// Sticky: a RESUME never lifts it.
				apply(t, store, sc.target(opID), controlstore.SignalResume)
				wantTerminated(t, callEcho(ctx, cc), opID, sc.scope, sc.target(opID))
			})
		}
	}
}

func TestLoopbackHeldUntilContextEnds(t *testing.T) {
	tr := newTracing(t)
	ts, store, cc := loopback(t)
	apply(t, store, agentOpID, controlstore.SignalPause)

	check := func(err error, code codes.Code, ctxErr error, opID string) {
		t.Helper()
		if status.Code(err) != code {
			t.Fatalf("code = %v, want %v (%v)", status.Code(err), code, err)
		}
		if !errors.Is(err, ctxErr) || !errors.Is(err, controlstore.ErrPaused) {
			t.Fatalf("err %v does not match %v and ErrPaused", err, ctxErr)
		}
		if msg := status.Convert(err).Message(); !strings.Contains(msg, agentOpID) || !strings.Contains(msg, "paused") {
			t.Fatalf("message %q does not name the paused id", msg)
		}
		ei := errorInfo(t, err)
		if ei.Reason != interceptor.ReasonPaused || ei.Metadata["paused_id"] != agentOpID || ei.Metadata["scope"] != "agent" || ei.Metadata["op_id"] != opID {
			t.Fatalf("ErrorInfo = %v", ei)
		}
	}

	// Deadline.
	ctx, span, opID := tr.start(context.Background(), "deadline")
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := callEcho(dctx, cc)
	cancel()
	check(err, codes.DeadlineExceeded, context.DeadlineExceeded, opID)
	span.End()
	ev, ok := eventNamed(tr.ended(t, "deadline"), "opcontrol.held")
	if !ok {
		t.Fatal("no held event")
	}
	if v, _ := attrOf(ev.Attributes, "opcontrol.hold.result"); v.AsString() != "abandoned" {
		t.Fatalf("hold result %q", v.AsString())
	}

	// Cancellation, with no span: still held by the agent pause.
	cctx, cancel := context.WithCancel(context.Background())
	done := async(func() error { return callEcho(cctx, cc) })
	waitHeld(t, store, 1)
	cancel()
	check(recv(t, done, "cancelled call"), codes.Canceled, context.Canceled, "")

	// Streams too.
	sctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err = cc.NewStream(sctx, watchDesc, methodWatch)
	cancel()
	check(err, codes.DeadlineExceeded, context.DeadlineExceeded, "")
	if n := served(ts, methodEcho); n != 0 {
		t.Fatalf("server saw %d calls", n)
	}
}

func TestLoopbackFailClosed(t *testing.T) {
	_, store, cc := loopback(t)
	apply(t, store, controlstore.GlobalOpID, controlstore.SignalPause)
	held := async(func() error { return callEcho(context.Background(), cc) })
	waitHeld(t, store, 1)
	release := holdFailClosed(store) // held calls fail closed, and new ones
	for _, err := range []error{recv(t, held, "held call"), callEcho(context.Background(), cc)} {
		if status.Code(err) != codes.Unavailable || errorInfo(t, err).Reason != interceptor.ReasonUnavailable {
			t.Fatalf("err = %v, want Unavailable/OP_CONTROL_UNAVAILABLE", err)
		}
	}
	release()
	apply(t, store, controlstore.GlobalOpID, controlstore.SignalResume)
	if err := callEcho(context.Background(), cc); err != nil {
		t.Fatal(err)
	}
}

func TestLoopbackInFlightUnaryCancelled(t *testing.T) {
	tr := newTracing(t)
	for _, sc := range scopeCases {
		t.Run(sc.scope.String(), func(t *testing.T) {
			ts, store, cc := loopback(t)
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			done := async(func() error { return callBlock(ctx, cc) })
			waitEntered(t, ts, methodBlock, 1)
			apply(t, store, sc.target(opID), controlstore.SignalTerminate)
			err := recv(t, done, "cancelled call")
			wantTerminated(t, err, opID, sc.scope, sc.target(opID))
			waitServerCancelled(t, ts, methodBlock, 1)
			if n := store.InFlight(); n != 0 {
				t.Fatalf("InFlight = %d", n)
			}
		})
	}
}

func TestLoopbackInFlightStreamCancelled(t *testing.T) {
	tr := newTracing(t)
	for _, sc := range scopeCases {
		t.Run("bidi/"+sc.scope.String(), func(t *testing.T) {
			ts, store, cc := loopback(t)
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			cs, err := cc.NewStream(ctx, chatDesc, methodChat)
			if err != nil {
				t.Fatal(err)
			}
			if err := cs.SendMsg(wrapperspb.String("a")); err != nil {
				t.Fatal(err)
			}
			if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
				t.Fatal(err)
			}
			// RecvMsg blocked when the terminate lands.
			recvd := async(func() error { return cs.RecvMsg(new(wrapperspb.StringValue)) })
			apply(t, store, sc.target(opID), controlstore.SignalTerminate)
			wantTerminated(t, recv(t, recvd, "blocked RecvMsg"), opID, sc.scope, sc.target(opID))
			wantTerminated(t, cs.SendMsg(wrapperspb.String("b")), opID, sc.scope, sc.target(opID))
			wantTerminated(t, cs.RecvMsg(new(wrapperspb.StringValue)), opID, sc.scope, sc.target(opID))
			waitServerCancelled(t, ts, methodChat, 1)
			eventually(t, "stream released", func() bool { return store.InFlight() == 0 })
		})
	}
	t.Run("server-streaming", func(t *testing.T) {
		ts, store, cc := loopback(t)
		ctx, span, opID := tr.start(context.Background(), "op")
		defer span.End()
		cs, err := cc.NewStream(ctx, watchDesc, methodWatch)
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
		// The handler has sent its one message and waits to be cancelled.
		recvd := async(func() error { return cs.RecvMsg(new(wrapperspb.Int64Value)) })
		apply(t, store, controlstore.GlobalOpID, controlstore.SignalTerminate)
		wantTerminated(t, recv(t, recvd, "blocked RecvMsg"), opID, controlstore.ScopeGlobal, controlstore.GlobalOpID)
		waitServerCancelled(t, ts, methodWatch, 1)
		if n := store.InFlight(); n != 0 {
			t.Fatalf("InFlight = %d after the final RecvMsg", n)
		}
	})
}

func TestLoopbackStreamSendHeld(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ts, store, cc := loopback(t, m.opt)
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			cs, err := cc.NewStream(ctx, chatDesc, methodChat)
			if err != nil {
				t.Fatal(err)
			}

			// Pause: SendMsg held; resume: sent.
			apply(t, store, opID, controlstore.SignalPause)
			sent := async(func() error { return cs.SendMsg(wrapperspb.String("held")) })
			waitHeld(t, store, 1)
			notDone(t, sent, "held SendMsg")
			apply(t, store, opID, controlstore.SignalResume)
			if err := recv(t, sent, "resumed SendMsg"); err != nil {
				t.Fatal(err)
			}
			out := new(wrapperspb.StringValue)
			if err := cs.RecvMsg(out); err != nil || out.GetValue() != "held" {
				t.Fatalf("RecvMsg = %v %q", err, out.GetValue())
			}

			// Pause then terminate while a SendMsg is held.
			apply(t, store, agentOpID, controlstore.SignalPause)
			sent = async(func() error { return cs.SendMsg(wrapperspb.String("never")) })
			waitHeld(t, store, 1)
			apply(t, store, opID, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, sent, "held SendMsg"), opID, controlstore.ScopeOp, opID)
			wantTerminated(t, cs.RecvMsg(out), opID, controlstore.ScopeOp, opID)
			waitServerCancelled(t, ts, methodChat, 1)
			eventually(t, "stream released", func() bool { return store.InFlight() == 0 })
		})
	}
}

func TestLoopbackOpControlStreamNeverGated(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ts := startServer(t, withOpControlStream())
			store := newStore(t)
			cc := dial(t, ts, interceptor.DialOptions(store, m.opt)...)
			apply(t, store, controlstore.GlobalOpID, controlstore.SignalPause)
			holdFailClosed(store)
			for i, sig := range []controlstore.Signal{controlstore.SignalPause, controlstore.SignalTerminate} {
				apply(t, store, controlstore.GlobalOpID, sig)
				ctx, cancel := context.WithTimeout(context.Background(), waitFor)
				cs, err := cc.NewStream(ctx, opCtlDesc, interceptor.OpControlStreamMethod)
				if err != nil {
					t.Fatalf("%d: op-control stream gated: %v", i, err)
				}
				if err := cs.SendMsg(wrapperspb.String("subscribe")); err != nil {
					t.Fatal(err)
				}
				if err := cs.CloseSend(); err != nil {
					t.Fatal(err)
				}
				out := new(wrapperspb.StringValue)
				if err := cs.RecvMsg(out); err != nil || out.GetValue() != "signal" {
					t.Fatalf("RecvMsg = %v %q", err, out.GetValue())
				}
				if err := cs.RecvMsg(out); !errors.Is(err, io.EOF) {
					t.Fatalf("final RecvMsg = %v", err)
				}
				cancel()
			}
		})
	}
}

// TestLoopbackConcurrent races calls of many ops against a stream of
// signals. Invariants: every error is an *interceptor.Error of the right
// kind or a call cancelled in flight; a call started after a terminate of
// its op returned is refused; nothing stays registered.
func TestLoopbackConcurrent(t *testing.T) {
	tr := newTracing(t)
	_, store, cc := loopback(t)

	const nOps = 16
	type opState struct {
		ctx        context.Context
		id         string
		terminated atomic.Bool // set after Apply(TERMINATE) returned
	}
	ops := make([]*opState, nOps)
	for i := range ops {
		ctx, span, id := tr.start(context.Background(), fmt.Sprintf("op-%d", i))
		span.End()
		ops[i] = &opState{ctx: ctx, id: id}
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	var calls, refused atomic.Int64
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := ops[r.IntN(nOps)]
				wasTerminated := o.terminated.Load()
				ctx, cancel := context.WithTimeout(o.ctx, waitFor)
				var err error
				if r.IntN(4) == 0 {
					var cs grpc.ClientStream
					if cs, err = cc.NewStream(ctx, chatDesc, methodChat); err == nil {
						if err = cs.SendMsg(wrapperspb.String("c")); err == nil {
							err = cs.RecvMsg(new(wrapperspb.StringValue))
						}
					}
				} else {
					err = callEcho(ctx, cc)
				}
				cancel()
				calls.Add(1)
				if err == nil {
					if wasTerminated {
						errs <- fmt.Errorf("call of op %s started after its terminate and succeeded", o.id)
						return
					}
					continue
				}
				refused.Add(1)
				if !errors.Is(err, controlstore.ErrTerminated) || status.Code(err) != codes.FailedPrecondition {
					errs <- fmt.Errorf("unexpected error: %w", err)
					return
				}
			}
		}()
	}
	// The signaller: pause/resume the first half, terminate the second half.
	r := rand.New(rand.NewPCG(99, 99))
	for i := 0; i < 300; i++ {
		// Pace the signals by the calls so that they interleave. Workers
		// can all be held on paused ops, so this only paces: it gives up
		// after a moment and never decides the outcome.
		for want, until := calls.Load()+2, time.Now().Add(20*time.Millisecond); calls.Load() < want && time.Now().Before(until); {
			time.Sleep(time.Millisecond)
		}
		k := r.IntN(nOps)
		o := ops[k]
		switch {
		case k < nOps/2 && r.IntN(2) == 0:
			apply(t, store, o.id, controlstore.SignalPause)
		case k < nOps/2:
			apply(t, store, o.id, controlstore.SignalResume)
		case r.IntN(8) == 0:
			apply(t, store, o.id, controlstore.SignalTerminate)
			o.terminated.Store(true)
		}
		if i%50 == 0 {
			apply(t, store, agentOpID, controlstore.SignalPause)
			apply(t, store, agentOpID, controlstore.SignalResume)
		}
	}
	for _, o := range ops[:nOps/2] {
		apply(t, store, o.id, controlstore.SignalResume)
	}
	// Let the workers make progress after the last signal, then stop.
	after := calls.Load() + 200
	eventually(t, "calls after the last signal", func() bool { return calls.Load() > after })
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	eventually(t, "every registration released", func() bool { return store.InFlight() == 0 })
	t.Logf("%d calls, %d refused", calls.Load(), refused.Load())
}
