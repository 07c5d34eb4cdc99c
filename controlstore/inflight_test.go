package controlstore_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

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
	var calls []controlstore.Call
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

// deadline is how long a test waits for something that must not block.
const deadline = 20 * time.Second

// finishes runs f and fails the test if it does not return within the
// deadline: a registry lock left held would block it for ever.
func finishes(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(deadline):
		t.Fatalf("%s blocked: a lock of the in-flight registry is held for ever", what)
	}
}

func TestTrackRefusesNilCancel(t *testing.T) {
	s := newStore(t)
	o, _ := op(1)
	defer func() {
		r, _ := recover().(string)
		if !strings.Contains(r, "non-nil cancel") {
			t.Fatalf("Track(op, nil) panicked with %q, want a clear message", r)
		}
		if n := s.InFlight(); n != 0 {
			t.Fatalf("InFlight = %d after a refused Track", n)
		}
	}()
	s.Track(o, nil)
	t.Fatal("Track(op, nil) returned")
}

// A cancel function that panics cannot wedge the store: the terminate still
// cancels every other call, the panic comes back out of Apply, and every
// later Track, Release, InFlight and terminate proceeds.
func TestPanickingCancelCannotWedge(t *testing.T) {
	for _, scope := range []string{"op", "agent"} {
		t.Run(scope, func(t *testing.T) {
			s := newStore(t)
			o, id := op(1)
			target := id
			if scope == "agent" {
				target = controlstore.AgentOpIDPrefix + agentID
			}
			boom := errors.New("boom")
			var ctxs []context.Context
			var calls []controlstore.Call
			for i := range 4 {
				ctx, cancel := context.WithCancelCause(context.Background())
				defer cancel(nil)
				ctxs = append(ctxs, ctx)
				calls = append(calls, s.Track(o, cancel))
				if i == 1 {
					calls = append(calls, s.Track(o, func(error) { panic(boom) }))
				}
			}
			func() {
				defer func() {
					if r := recover(); r != boom { //nolint:errorlint // the panic value itself
						t.Fatalf("Apply panicked with %v, want the cancel function's panic", r)
					}
				}()
				_ = s.Apply(target, controlstore.SignalTerminate)
				t.Fatal("Apply did not re-raise the cancel function's panic")
			}()
			if !errors.Is(s.Check(o), controlstore.ErrTerminated) {
				t.Fatal("the terminate was not applied")
			}
			for i, ctx := range ctxs {
				if !errors.Is(context.Cause(ctx), controlstore.ErrTerminated) {
					t.Fatalf("call %d not cancelled: a panicking cancel stopped the terminate", i)
				}
			}
			finishes(t, "the store after a panicking cancel", func() {
				for _, c := range calls {
					c.Release()
				}
				if n := s.InFlight(); n != 0 {
					t.Errorf("InFlight = %d after every Release", n)
				}
				other, otherID := op(2)
				ctx, cancel := context.WithCancelCause(context.Background())
				defer cancel(nil)
				c := s.Track(other, cancel)
				mustApply(t, s, otherID, controlstore.SignalTerminate)
				if !errors.Is(context.Cause(ctx), controlstore.ErrTerminated) {
					t.Error("a later terminate did not cancel its call")
				}
				c.Release()
			})
		})
	}
}

// Track of an op that is already terminated calls cancel at once; if that
// panics, the panic comes out of Track and nothing stays registered.
func TestTrackPanickingCancelOfTerminatedOp(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	mustApply(t, s, id, controlstore.SignalTerminate)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("Track swallowed the cancel function's panic")
			}
		}()
		s.Track(o, func(error) { panic("boom") })
	}()
	finishes(t, "InFlight", func() {
		if n := s.InFlight(); n != 0 {
			t.Errorf("InFlight = %d: the panicking registration stayed", n)
		}
	})
}

// A stale Call (released, its slot reused by another call) releases
// nothing.
func TestStaleReleaseKeepsTheNewCall(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	_, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	first := s.Track(o, cancel)
	first.Release()
	ctx, cancel2 := context.WithCancelCause(context.Background())
	defer cancel2(nil)
	second := s.Track(o, cancel2)
	first.Release() // stale: must not end second
	if n := s.InFlight(); n != 1 {
		t.Fatalf("InFlight = %d, want 1: a stale Release ended another call", n)
	}
	mustApply(t, s, id, controlstore.SignalTerminate)
	if ctx.Err() == nil {
		t.Fatal("the second call was not cancelled")
	}
	second.Release()
	var zero controlstore.Call
	zero.Release() // the zero Call registers nothing
}

// TrackContext's registrations end with their context, without Release,
// and what they hold becomes garbage.
func TestTrackContextEndsWithItsContext(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	const n = 100
	collected := make(chan struct{}, n)
	for range n {
		ctx, cancel := context.WithCancelCause(context.Background())
		payload := new([64]byte)
		runtime.AddCleanup(payload, func(struct{}) { collected <- struct{}{} }, struct{}{})
		s.TrackContext(ctx, o, func(err error) { payload[0] = 1; cancel(err) })
		cancel(nil) // abandoned: never released
	}
	live, cancelLive := context.WithCancelCause(context.Background())
	defer cancelLive(nil)
	c := s.TrackContext(live, o, cancelLive)
	defer c.Release()
	if got := s.InFlight(); got != 1 {
		t.Fatalf("InFlight = %d, want 1: registrations of ended contexts still counted", got)
	}
	for i := range n {
		timeout := time.After(deadline)
		for done := false; !done; {
			runtime.GC()
			select {
			case <-collected:
				done = true
			case <-timeout:
				t.Fatalf("%d of %d abandoned registrations still hold their cancel functions", n-i, n)
			case <-time.After(time.Millisecond):
			}
		}
	}
	mustApply(t, s, id, controlstore.SignalTerminate)
	if !errors.Is(context.Cause(live), controlstore.ErrTerminated) {
		t.Fatal("the live registration was not cancelled")
	}
}

// Concurrent calls on every processor register and release without losing
// one: a terminate then cancels exactly the calls still registered.
func TestTrackConcurrentShards(t *testing.T) {
	s := newStore(t)
	o, id := op(1)
	var wg sync.WaitGroup
	const workers, each = 8, 2000
	kept := make([][]context.Context, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ctx, cancel := context.WithCancelCause(context.Background())
				c := s.Track(o, cancel)
				if i%100 == 0 {
					kept[w] = append(kept[w], ctx) // stays registered
					continue
				}
				c.Release()
				cancel(nil)
			}
		}()
	}
	wg.Wait()
	want := workers * each / 100
	if n := s.InFlight(); n != want {
		t.Fatalf("InFlight = %d, want %d", n, want)
	}
	mustApply(t, s, id, controlstore.SignalTerminate)
	for _, ks := range kept {
		for _, ctx := range ks {
			if ctx.Err() == nil {
				t.Fatal("a registered call was not cancelled")
			}
		}
	}
}
