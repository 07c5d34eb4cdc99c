package controlstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
)

func TestTrackCancelsOnTerminate(t *testing.T) {
	agentHalt := controlstore.AgentOpIDPrefix + agentID
	for _, scope := range []string{"op", agentHalt, "*"} {
		t.Run(scope, func(t *testing.T) {
			s := newStore(t)
			o, id := op(1)
			other, _ := op(2)
			if scope == "op" {
				scope = id
			}
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			otherCtx, otherCancel := context.WithCancelCause(context.Background())
			defer otherCancel(nil)
			noOpCtx, noOpCancel := context.WithCancelCause(context.Background())
			defer noOpCancel(nil)

			c := s.Track(o, cancel)
			defer c.Release()
			oc := s.Track(other, otherCancel)
			defer oc.Release()
			nc := s.Track(controlstore.Op{}, noOpCancel)
			defer nc.Release()
			if s.InFlight() != 3 {
				t.Fatalf("InFlight = %d, want 3", s.InFlight())
			}

			mustApply(t, s, scope, controlstore.SignalTerminate)
			cause := context.Cause(ctx)
			var te *controlstore.TerminatedError
			if ctx.Err() == nil || !errors.As(cause, &te) || te.OpID != scope {
				t.Fatalf("cause = %v, want the TerminatedError for %s", cause, scope)
			}
			reserved := scope != id
			if (otherCtx.Err() != nil) != reserved || (noOpCtx.Err() != nil) != reserved {
				t.Fatalf("other op cancelled=%v, no-op cancelled=%v; want both %v", otherCtx.Err() != nil, noOpCtx.Err() != nil, reserved)
			}
		})
	}
}

func TestTrackAfterTerminateCancelsAtOnce(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	mustApply(t, s, id, controlstore.SignalTerminate)
	ctx, cancel := context.WithCancelCause(context.Background())
	c := s.Track(o, cancel)
	defer c.Release()
	if !errors.Is(context.Cause(ctx), controlstore.ErrTerminated) {
		t.Fatalf("cause = %v, want ErrTerminated", context.Cause(ctx))
	}
}

func TestReleaseUnregisters(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	var calls []*controlstore.Call
	var cancels []context.CancelCauseFunc
	var ctxs []context.Context
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithCancelCause(context.Background())
		ctxs, cancels = append(ctxs, ctx), append(cancels, cancel)
		calls = append(calls, s.Track(o, cancel))
	}
	// Release from the middle, the head and the tail of the op's list.
	for _, i := range []int{2, 4, 0} {
		calls[i].Release()
		calls[i].Release() // idempotent
	}
	if s.InFlight() != 2 {
		t.Fatalf("InFlight = %d, want 2", s.InFlight())
	}
	mustApply(t, s, id, controlstore.SignalTerminate)
	for i, ctx := range ctxs {
		released := i == 0 || i == 2 || i == 4
		if (ctx.Err() == nil) != released {
			t.Errorf("call %d: cancelled=%v, want %v", i, ctx.Err() != nil, !released)
		}
		cancels[i](nil)
	}
	calls[1].Release()
	calls[3].Release()
	if s.InFlight() != 0 {
		t.Fatalf("InFlight = %d, want 0", s.InFlight())
	}
}
