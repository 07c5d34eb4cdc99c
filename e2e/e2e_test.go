package e2e_test

// Every test here runs the whole path over real TCP on 127.0.0.1: an operator
// action published by the gateway (gatewaytest, with the real gateway's
// semantics) → stream.Subscriber → controlstore.Store → the interceptor on a
// real grpc.ClientConn → the tool server, under real SDK spans. Signals are
// only ever sent through the gateway; the store is never written directly.

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/stream"
)

func TestTerminate(t *testing.T) {
	for _, sc := range scopeCases {
		t.Run(sc.scope.String(), func(t *testing.T) {
			e := newEnv(t)
			a := e.startAgent(t, agentConfig{})
			ctx, _, opID := e.tr.op(t, "op")
			otherCtx, _, _ := e.tr.op(t, "other-op")
			if err := echo(ctx, a); err != nil {
				t.Fatalf("before the terminate: %v", err)
			}
			target := sc.target(a, opID)
			e.signal(t, a, target, controlstore.SignalTerminate)

			seen := e.countEvents(toolserver.EchoMethod)
			wantTerminated(t, echo(ctx, a), opID, sc.scope, target)
			_, err := a.tools.Progress(ctx, time.Millisecond)
			wantTerminated(t, err, opID, sc.scope, target)
			if n := e.countEvents(toolserver.EchoMethod); n != seen {
				t.Fatalf("the tool server saw %d calls after the terminate; a refused call must never be sent", n-seen)
			}
			if e.tools.Entered(toolserver.ProgressMethod) != 0 {
				t.Fatal("the refused Progress stream reached the tool server")
			}
			// Another op of the agent runs after a per-op terminate only.
			err = echo(otherCtx, a)
			if sc.scope == controlstore.ScopeOp {
				if err != nil {
					t.Fatalf("another op refused by a per-op terminate: %v", err)
				}
			} else {
				wantTerminated(t, err, opIDOf(otherCtx), sc.scope, target)
			}
			// Sticky: a RESUME of the same id lifts nothing.
			e.signal(t, a, target, controlstore.SignalResume)
			wantTerminated(t, echo(ctx, a), opID, sc.scope, target)
		})
	}
}

func TestPauseResume(t *testing.T) {
	for _, sc := range scopeCases {
		t.Run(sc.scope.String(), func(t *testing.T) {
			e := newEnv(t)
			a := e.startAgent(t, agentConfig{})
			ctx, span, opID := e.tr.op(t, "op")
			otherCtx, _, _ := e.tr.op(t, "other-op")
			target := sc.target(a, opID)
			e.signal(t, a, target, controlstore.SignalPause)

			unary := async(func() error { return echo(ctx, a) })
			var ps toolserver.ProgressStream
			streamed := async(func() (err error) {
				ps, err = a.tools.Progress(ctx, time.Millisecond)
				return err
			})
			held, echoes := 2, 0
			other := async(func() error { return echo(otherCtx, a) })
			if sc.scope == controlstore.ScopeOp {
				// A per-op pause holds nothing else.
				if err := recv(t, other, "call of another op"); err != nil {
					t.Fatalf("another op held or refused by a per-op pause: %v", err)
				}
				echoes++
			} else {
				held++
			}
			waitHeld(t, a, held)
			notDone(t, unary, "held unary call")
			notDone(t, streamed, "held stream open")
			if n := e.countEvents(toolserver.EchoMethod); n != echoes {
				t.Fatalf("the tool server saw %d Echo calls while paused, want %d (the other op's)", n, echoes)
			}
			if e.tools.Entered(toolserver.ProgressMethod) != 0 {
				t.Fatal("a held stream reached the tool server")
			}

			// A RESUME of another op releases nothing.
			e.signal(t, a, opIDOf(otherCtx), controlstore.SignalResume)
			waitHeld(t, a, held)
			notDone(t, unary, "held unary call")

			e.signal(t, a, target, controlstore.SignalResume)
			if err := recv(t, unary, "resumed unary call"); err != nil {
				t.Fatalf("resumed call: %v", err)
			}
			if err := recv(t, streamed, "resumed stream open"); err != nil {
				t.Fatalf("resumed stream: %v", err)
			}
			if tick, err := ps.Recv(); err != nil || tick != 1 {
				t.Fatalf("first tick of the resumed stream: %d, %v", tick, err)
			}
			if sc.scope != controlstore.ScopeOp {
				if err := recv(t, other, "call of another op"); err != nil {
					t.Fatalf("another op after the resume: %v", err)
				}
			}
			// The hold is on the caller's span, with its result.
			evs := eventsNamed(span, "opcontrol.held")
			if len(evs) == 0 || attr(evs[0], "opcontrol.hold.result").AsString() != "resumed" || attr(evs[0], "opcontrol.paused_id").AsString() != target {
				t.Fatalf("opcontrol.held events on the caller's span: %v", evs)
			}
			waitUntil(t, "the store to hold nothing", func() bool { return a.store.Stats().Held == 0 })
		})
	}
}

// TestTerminateDuringPause holds a call on a pause at one scope and
// terminates at another (or the same): the held call fails at once with the
// terminate, and the tool server never sees it.
func TestTerminateDuringPause(t *testing.T) {
	for _, paused := range scopeCases {
		for _, terminated := range scopeCases {
			t.Run("pause="+paused.scope.String()+"/terminate="+terminated.scope.String(), func(t *testing.T) {
				e := newEnv(t)
				a := e.startAgent(t, agentConfig{})
				ctx, _, opID := e.tr.op(t, "op")
				e.signal(t, a, paused.target(a, opID), controlstore.SignalPause)
				done := async(func() error { return echo(ctx, a) })
				waitHeld(t, a, 1)
				target := terminated.target(a, opID)
				e.signal(t, a, target, controlstore.SignalTerminate)
				wantTerminated(t, recv(t, done, "held call"), opID, terminated.scope, target)
				if n := e.countEvents(toolserver.EchoMethod); n != 0 {
					t.Fatalf("the tool server saw %d calls", n)
				}
				waitHeld(t, a, 0)
				// And the terminate stays when the pause is lifted.
				e.signal(t, a, paused.target(a, opID), controlstore.SignalResume)
				wantTerminated(t, echo(ctx, a), opID, terminated.scope, target)
			})
		}
	}
}

func TestInFlightUnaryKilled(t *testing.T) {
	for _, sc := range scopeCases {
		t.Run(sc.scope.String(), func(t *testing.T) {
			e := newEnv(t)
			a := e.startAgent(t, agentConfig{})
			ctx, span, opID := e.tr.op(t, "op")
			done := async(func() error { return a.tools.Work(ctx, longWork) })
			e.waitEntered(t, toolserver.WorkMethod, 1)
			target := sc.target(a, opID)
			e.publish(a, target, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, done, "in-flight Work"), opID, sc.scope, target)
			e.waitServerCancelled(t, toolserver.WorkMethod)
			for _, ev := range e.tools.Events() {
				if ev.Err == nil {
					t.Fatalf("the tool server completed a call: %+v", ev)
				}
			}
			if evs := eventsNamed(span, "opcontrol.cancelled"); len(evs) != 1 || attr(evs[0], "opcontrol.terminated_id").AsString() != target {
				t.Fatalf("opcontrol.cancelled events on the caller's span: %v", evs)
			}
			waitUntil(t, "the call's registration to end", func() bool { return a.store.InFlight() == 0 })
		})
	}
}

func TestInFlightStreamKilled(t *testing.T) {
	for _, sc := range scopeCases {
		t.Run(sc.scope.String(), func(t *testing.T) {
			e := newEnv(t)
			a := e.startAgent(t, agentConfig{})
			ctx, _, opID := e.tr.op(t, "op")
			ps, err := a.tools.Progress(ctx, time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			for want := int64(1); want <= 3; want++ {
				if tick, err := ps.Recv(); err != nil || tick != want {
					t.Fatalf("tick %d: got %d, %v", want, tick, err)
				}
			}
			target := sc.target(a, opID)
			e.publish(a, target, controlstore.SignalTerminate)
			// Ticks already in flight may still arrive; then the stream
			// must end with the terminate, not a bare Canceled.
			var recvErr error
			for recvErr == nil {
				_, recvErr = ps.Recv()
			}
			wantTerminated(t, recvErr, opID, sc.scope, target)
			// Later calls on the dead stream say the same.
			if _, err := ps.Recv(); !errors.Is(err, controlstore.ErrTerminated) {
				t.Fatalf("Recv after the end: %v", err)
			}
			e.waitServerCancelled(t, toolserver.ProgressMethod)
			// Ticks were received, so the handler was past reading its
			// request: it recorded how it ended.
			if ev := e.serverEvent(t, 0); ev.Method != toolserver.ProgressMethod || !cancelledOnServer(ev) || ev.Ticks < 3 {
				t.Fatalf("the tool server saw %+v, want Progress ended by cancellation after 3 ticks or more", ev)
			}
			waitUntil(t, "the stream's registration to end", func() bool { return a.store.InFlight() == 0 })
		})
	}
}

func TestDeadlineWhilePaused(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent(t, agentConfig{})
	ctx, span, opID := e.tr.op(t, "op")
	e.signal(t, a, opID, controlstore.SignalPause)

	check := func(err error, pausedID, scope, callOp string) {
		t.Helper()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("code %v, want DeadlineExceeded: %v", status.Code(err), err)
		}
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, controlstore.ErrPaused) {
			t.Fatalf("err %v must match context.DeadlineExceeded and controlstore.ErrPaused", err)
		}
		if msg := status.Convert(err).Message(); !containsAll(msg, pausedID, "paused") {
			t.Fatalf("message %q does not name the paused id %q", msg, pausedID)
		}
		ei := errorInfo(t, err)
		if ei.Reason != "OP_PAUSED" || ei.Metadata["paused_id"] != pausedID || ei.Metadata["scope"] != scope || ei.Metadata["op_id"] != callOp {
			t.Fatalf("ErrorInfo = %v", ei)
		}
	}

	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := echo(dctx, a)
	cancel()
	check(err, opID, "op", opID)
	dctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = a.tools.Progress(dctx, time.Millisecond)
	cancel()
	check(err, opID, "op", opID)
	if evs := eventsNamed(span, "opcontrol.held"); len(evs) != 2 || attr(evs[0], "opcontrol.hold.result").AsString() != "abandoned" {
		t.Fatalf("opcontrol.held events: %v", evs)
	}

	// A call with no span held by an agent pause: the message names the
	// agent halt.
	e.signal(t, a, agentScopeID(a), controlstore.SignalPause)
	dctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	err = echo(dctx, a)
	cancel()
	check(err, agentScopeID(a), "agent", "")
	if n := len(e.tools.Events()); n != 0 {
		t.Fatalf("the tool server saw %d calls", n)
	}
	waitHeld(t, a, 0)
}

// TestNoSpanCalls: a call outside any span belongs to no op. Agent and
// global halts stop it; a per-op signal never does.
func TestNoSpanCalls(t *testing.T) {
	for _, sc := range scopeCases {
		t.Run(sc.scope.String(), func(t *testing.T) {
			e := newEnv(t)
			a := e.startAgent(t, agentConfig{})
			_, _, opID := e.tr.op(t, "some-op")
			target := sc.target(a, opID)
			noSpan := context.Background()

			e.signal(t, a, target, controlstore.SignalPause)
			done := async(func() error { return echo(noSpan, a) })
			if sc.scope == controlstore.ScopeOp {
				if err := recv(t, done, "call with no span"); err != nil {
					t.Fatalf("call with no span under a per-op pause: %v", err)
				}
			} else {
				waitHeld(t, a, 1)
				notDone(t, done, "call with no span")
				e.signal(t, a, target, controlstore.SignalResume)
				if err := recv(t, done, "call with no span"); err != nil {
					t.Fatalf("after the resume: %v", err)
				}
			}

			e.signal(t, a, target, controlstore.SignalTerminate)
			err := echo(noSpan, a)
			if sc.scope == controlstore.ScopeOp {
				if err != nil {
					t.Fatalf("call with no span under a per-op terminate: %v", err)
				}
				return
			}
			wantTerminated(t, err, "", sc.scope, target)
		})
	}
}

// TestAgentHaltIsPerAgent: the gateway routes an agent halt to that agent
// only; a global halt reaches every agent.
func TestAgentHaltIsPerAgent(t *testing.T) {
	e := newEnv(t)
	one := e.startAgent(t, agentConfig{id: agentOne, token: tokenOne})
	two := e.startAgent(t, agentConfig{id: agentTwo, token: tokenTwo})
	ctx, _, _ := e.tr.op(t, "op")

	e.signal(t, one, agentScopeID(one), controlstore.SignalTerminate)
	// A marker published after the halt, to agent two: once two has
	// applied it, two would have applied the halt had it been routed there
	// (one broadcast ring, delivered in order).
	_, _, marker := e.tr.op(t, "marker")
	e.signal(t, two, marker, controlstore.SignalPause)
	wantTerminated(t, echo(ctx, one), opIDOf(ctx), controlstore.ScopeAgent, agentScopeID(one))
	if err := echo(ctx, two); err != nil {
		t.Fatalf("agent two stopped by agent one's halt: %v", err)
	}
	if st := two.store.State(agentScopeID(one)); st != controlstore.Running {
		t.Fatalf("agent two's store recorded another agent's halt: %v", st)
	}

	before := [2]uint64{one.store.Stats().Applied, two.store.Stats().Applied}
	e.gw.HaltAll(controlstore.SignalTerminate)
	waitUntil(t, "both agents to apply the global halt", func() bool {
		return one.store.Stats().Applied > before[0] && two.store.Stats().Applied > before[1]
	})
	for _, a := range []*agent{one, two} {
		wantTerminated(t, echo(ctx, a), opIDOf(ctx), controlstore.ScopeGlobal, controlstore.GlobalOpID)
	}
}

// TestOpControlStreamExempt installs the interceptors on the gateway
// connection as well, as a user applying one set of dial options everywhere
// would. The subscriber's own stream must never be gated: not held by a
// global pause (not even when it reconnects during one), not cut by a
// global terminate.
func TestOpControlStreamExempt(t *testing.T) {
	t.Run("global-pause-across-reconnect", func(t *testing.T) {
		e := newEnv(t)
		a := e.startAgent(t, agentConfig{gateGatewayConn: true, sub: fastReconnect()})
		ctx, _, _ := e.tr.op(t, "op")
		e.signal(t, a, controlstore.GlobalOpID, controlstore.SignalPause)
		held := async(func() error { return echo(ctx, a) })
		waitHeld(t, a, 1)

		// The stream ends; the subscriber must open a new one through the
		// gated connection while everything is paused.
		if n := e.gw.DropAll(codes.Unavailable); n != 1 {
			t.Fatalf("DropAll ended %d streams", n)
		}
		e.waitLive(t, a, 2)
		notDone(t, held, "held call")

		e.signal(t, a, controlstore.GlobalOpID, controlstore.SignalResume)
		if err := recv(t, held, "held call"); err != nil {
			t.Fatalf("held call after the global resume: %v", err)
		}
		if err := echo(ctx, a); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("global-terminate", func(t *testing.T) {
		e := newEnv(t)
		a := e.startAgent(t, agentConfig{gateGatewayConn: true})
		ctx, _, opID := e.tr.op(t, "op")
		e.signal(t, a, controlstore.GlobalOpID, controlstore.SignalTerminate)
		wantTerminated(t, echo(ctx, a), opID, controlstore.ScopeGlobal, controlstore.GlobalOpID)
		// In-flight cancellation would have cut a gated subscriber
		// stream: later signals must still arrive on the same stream.
		e.signal(t, a, opID, controlstore.SignalPause)
		if st := a.store.State(opID); st != controlstore.Paused {
			t.Fatalf("a signal after the global terminate: op state %v", st)
		}
		if s := a.sub.Status(); s.State != stream.Live || e.gw.Stats().Accepted != 1 {
			t.Fatalf("the subscriber's stream did not survive: %+v, gateway %+v", s, e.gw.Stats())
		}
	})
}

// TestFailClosed: with WithFailClosedAfter, every gated call fails with
// Unavailable once the gateway has been away that long, and runs again once
// the stream is back. A terminate still wins over failing closed.
func TestFailClosed(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent(t, agentConfig{sub: append(fastReconnect(), stream.WithFailClosedAfter(100*time.Millisecond))})
	ctx, _, _ := e.tr.op(t, "op")
	deadCtx, _, deadID := e.tr.op(t, "terminated-op")
	e.signal(t, a, deadID, controlstore.SignalTerminate)
	if err := echo(ctx, a); err != nil {
		t.Fatalf("live: %v", err)
	}

	e.gw.Stop()
	waitUntil(t, "the store to fail closed", func() bool { return a.store.SyncStatus().FailClosed })
	wantUnavailable(t, echo(ctx, a))
	wantUnavailable(t, echo(context.Background(), a))
	_, err := a.tools.Progress(ctx, time.Millisecond)
	wantUnavailable(t, err)
	wantTerminated(t, echo(deadCtx, a), deadID, controlstore.ScopeOp, deadID)

	if err := e.gw.Restart(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the store to stop failing closed", func() bool { return !a.store.SyncStatus().FailClosed && a.sub.Connected() })
	if err := echo(ctx, a); err != nil {
		t.Fatalf("after the gateway returned: %v", err)
	}
	wantTerminated(t, echo(deadCtx, a), deadID, controlstore.ScopeOp, deadID)
}

// TestTerminateSurvivesGatewayRestart: the gateway replays nothing, but the
// store keeps what it was told: a terminated op stays terminated across a
// gateway restart, and signals flow again on the new stream.
func TestTerminateSurvivesGatewayRestart(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent(t, agentConfig{sub: fastReconnect()})
	deadCtx, _, deadID := e.tr.op(t, "terminated-op")
	ctx, _, opID := e.tr.op(t, "op")
	e.signal(t, a, deadID, controlstore.SignalTerminate)

	e.gw.Stop()
	waitUntil(t, "the subscriber to notice", func() bool { return !a.sub.Connected() })
	wantTerminated(t, echo(deadCtx, a), deadID, controlstore.ScopeOp, deadID)
	if err := e.gw.Restart(); err != nil {
		t.Fatal(err)
	}
	e.waitLive(t, a, 2)
	wantTerminated(t, echo(deadCtx, a), deadID, controlstore.ScopeOp, deadID)
	if err := echo(ctx, a); err != nil {
		t.Fatalf("an op nobody signalled: %v", err)
	}
	// The new stream delivers: the restarted gateway's sequence starts at
	// 0 again, and a pause published now holds.
	e.signal(t, a, opID, controlstore.SignalPause)
	if st := a.store.State(opID); st != controlstore.Paused {
		t.Fatalf("pause after the restart not applied: %v", st)
	}
	if seq := a.sub.Status().LastSequence; seq != 0 {
		t.Fatalf("LastSequence = %d, want 0: the first message of the restarted gateway", seq)
	}
	wantTerminated(t, echo(deadCtx, a), deadID, controlstore.ScopeOp, deadID)
}

// TestPauseHeldAcrossDisconnect: a disconnect never resumes anything. Held
// calls stay held while the gateway is away and after it returns, new calls
// of the paused op are held too, and only a RESUME releases them. Ops nobody
// signalled run meanwhile (no fail-closed configured).
func TestPauseHeldAcrossDisconnect(t *testing.T) {
	for _, tc := range []struct {
		name       string
		disconnect func(e *env)
		reconnect  func(t *testing.T, e *env)
	}{
		{"gateway-crash", func(e *env) { e.gw.Stop() }, func(t *testing.T, e *env) {
			if err := e.gw.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
		{"stream-ended-cleanly", func(e *env) { e.gw.DropAll(codes.OK) }, func(*testing.T, *env) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a := e.startAgent(t, agentConfig{sub: fastReconnect()})
			ctx, _, opID := e.tr.op(t, "paused-op")
			otherCtx, _, _ := e.tr.op(t, "other-op")
			e.signal(t, a, opID, controlstore.SignalPause)
			first := async(func() error { return echo(ctx, a) })
			waitHeld(t, a, 1)

			tc.disconnect(e)
			waitUntil(t, "the subscriber to notice", func() bool { return !a.sub.Connected() || e.gw.Stats().Accepted > 1 })
			second := async(func() error { return echo(ctx, a) })
			waitHeld(t, a, 2)
			if err := echo(otherCtx, a); err != nil {
				t.Fatalf("an op nobody signalled, while disconnected: %v", err)
			}
			notDone(t, first, "held call")

			tc.reconnect(t, e)
			e.waitLive(t, a, 2)
			waitHeld(t, a, 2)
			notDone(t, first, "held call")
			notDone(t, second, "held call")
			if st := a.store.State(opID); st != controlstore.Paused {
				t.Fatalf("after the reconnect the op is %v", st)
			}

			e.signal(t, a, opID, controlstore.SignalResume)
			for _, ch := range []<-chan error{first, second} {
				if err := recv(t, ch, "held call"); err != nil {
					t.Fatalf("after the resume: %v", err)
				}
			}
		})
	}
}

// opIDOf returns the gateway op id of the span in ctx.
func opIDOf(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	return sc.TraceID().String() + ":" + sc.SpanID().String()
}
