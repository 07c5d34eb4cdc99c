package interceptor_test

// Errors say the truth: a call reports a terminate only when the store
// terminated its own op. errgroup.WithContext cancels the group's context
// with the first error of any member as cause; when a sibling call failed
// terminated, that cause wraps the sibling's *TerminatedError.

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/toolserver"
)

// group is errgroup.WithContext's cancellation, without the dependency: the
// group's context, and the function a failing member's error goes to.
func group(parent context.Context) (context.Context, func(error)) {
	ctx, cancel := context.WithCancelCause(parent)
	return ctx, func(err error) { cancel(err) }
}

// wantNotTerminated checks that err is the caller's own cancellation, not
// a terminate.
func wantNotTerminated(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if err == nil {
		t.Fatal("call succeeded, want it cancelled by its caller")
	}
	if errors.Is(err, controlstore.ErrTerminated) || status.Code(err) == codes.FailedPrecondition {
		t.Fatalf("err = %v: a call whose op was never terminated reports a terminate", err)
	}
	if c := status.Code(err); c != code {
		t.Fatalf("code = %v, want %v (err %v)", c, code, err)
	}
}

func TestSiblingTerminateIsNotOurs(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ts := startServer(t)
			store := newStore(t)
			mr, mp := newMetrics(t)
			cc := dial(t, ts, interceptor.DialOptions(store, m.opt, interceptor.WithMeterProvider(mp))...)
			tools := toolserver.NewClient(cc)

			// The sibling's op is terminated: its call fails terminated.
			sibCtx, sibSpan, sibOp := tr.start(context.Background(), "sibling")
			defer sibSpan.End()
			apply(t, store, sibOp, controlstore.SignalTerminate)
			_, sibErr := tools.Echo(sibCtx, "x")
			wantTerminated(t, sibErr, sibOp, controlstore.ScopeOp, sibOp)

			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()

			// In flight: a running call of our op when the group fails.
			gctx, fail := group(ctx)
			done := async(func() error { return tools.Work(gctx, longWork) })
			waitEntered(t, ts, methodBlock, 1)
			fail(sibErr)
			wantNotTerminated(t, recv(t, done, "call of the failed group"), codes.Canceled)

			// Held: our op is paused when the group fails.
			apply(t, store, opID, controlstore.SignalPause)
			gctx, fail = group(ctx)
			done = async(func() error { _, err := tools.Echo(gctx, "held"); return err })
			waitHeld(t, store, 1)
			fail(sibErr)
			err := recv(t, done, "held call of the failed group")
			wantNotTerminated(t, err, codes.Canceled)
			if !errors.Is(err, controlstore.ErrPaused) || errorInfo(t, err).Reason != interceptor.ReasonPaused {
				t.Fatalf("held call: %v, want OP_PAUSED", err)
			}
			apply(t, store, opID, controlstore.SignalResume)

			// A stream of our op, waiting for output when the group fails.
			gctx, fail = group(ctx)
			ps, err := tools.Burst(gctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ps.Recv(); err != nil {
				t.Fatal(err)
			}
			recvd := async(func() error { _, err := ps.Recv(); return err })
			fail(sibErr)
			wantNotTerminated(t, recv(t, recvd, "stream of the failed group"), codes.Canceled)

			if n := mr.sum(t, interceptor.MetricInFlightCancelled, "scope", "op"); n != 0 {
				t.Fatalf("%d in-flight cancellations counted; the store cancelled nothing", n)
			}
			eventually(t, "registrations released", func() bool { return store.InFlight() == 0 })
		})
	}
}
