package controlstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
)

// The gateway's NATS bridge replays the bus's whole retained window to its
// streams on every reconnect of its own, so a gateway stream can deliver
// old agent and global halts again, in order, at any time. These tests are
// the two ways such a replay broke the two-source rules.

const (
	global = controlstore.GlobalOpID
	pause  = controlstore.SignalPause
	resume = controlstore.SignalResume
)

// Stuck paused: a replay of PAUSE then RESUME straddles the bus source
// going live. The bus has delivered nothing for the scope (it starts at
// "new halts only"), so it has no view to restore; ignoring the gateway's
// RESUME then left the scope paused for good, although the operator's last
// word was resume.
func TestReplayStraddlingBusLiveDoesNotStickPaused(t *testing.T) {
	r := newRig(t)
	apply(t, r.gw, global, pause)  // replayed, old
	r.bus.SetLive(true)            // caught up, with nothing for the scope
	apply(t, r.gw, global, resume) // replayed, the last word
	r.timers.PassSettle()
	wantState(t, r.s, global, controlstore.Running, "the replay ended in RESUME, and the bus had no word on the scope")
	// Once the bus has spoken for the scope, the gateway's copies are
	// ignored again.
	apply(t, r.bus, global, pause)
	apply(t, r.gw, global, resume)
	r.timers.PassSettle()
	wantState(t, r.s, global, controlstore.Paused, "the bus spoke last")
}

// Spurious resume: while no bus source is live, a replayed window P, R, P
// released every held call for the moment between its RESUME and its last
// PAUSE: tool calls ran while the operator's word was pause. A gateway
// RESUME of a reserved scope now settles first, and a PAUSE of the scope
// within the settle window cancels it.
func TestReplayedResumeDoesNotReleaseHeldCalls(t *testing.T) {
	for _, withBus := range []bool{false, true} {
		name := "gateway-only"
		if withBus {
			name = "bus-down"
		}
		t.Run(name, func(t *testing.T) {
			timers := newFakeTimers()
			// The settle alone: no grace for the bus (see
			// TestGatewayResumeWaitsForARecoveringBus).
			s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc), controlstore.WithBusGrace(0))
			if withBus {
				s.AddSource("bus", controlstore.SourceBus).Start() // and never live
			}
			gw := s.AddSource("gateway", controlstore.SourceGateway)
			gw.Start()
			gw.SetLive(true)
			agentHalt := controlstore.AgentOpIDPrefix + agentID
			apply(t, gw, agentHalt, pause)
			o, _ := op(1)
			held := make(chan error, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { held <- s.Wait(ctx, o) }()
			testutil.Eventually(t, 10*time.Second, func() bool { return s.Held() == 1 }, "the call is not held")

			for _, sig := range []controlstore.Signal{pause, resume, pause} {
				apply(t, gw, agentHalt, sig)
				if err := s.Check(o); !errors.Is(err, controlstore.ErrPaused) {
					t.Fatalf("replayed %v: Check = %v, want paused throughout", sig, err)
				}
			}
			timers.PassSettle() // the settle window passes
			select {
			case err := <-held:
				t.Fatalf("held call returned %v during a replay that ended in PAUSE", err)
			default:
			}
			wantState(t, s, agentHalt, controlstore.Paused, "the replay ended in PAUSE")

			// A resume that is not followed by a pause applies once it
			// has settled.
			apply(t, gw, agentHalt, resume)
			wantState(t, s, agentHalt, controlstore.Paused, "before the resume settled")
			timers.PassSettle()
			select {
			case err := <-held:
				if err != nil {
					t.Fatalf("held call after the resume settled: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("held call still held 10s after the resume settled")
			}
			if st := s.Stats(); st.Settled != 2 || st.SettleCancelled != 1 {
				t.Fatalf("Settled, SettleCancelled = %d, %d; want 2, 1", st.Settled, st.SettleCancelled)
			}
		})
	}
}

// The settle window runs on the real clock by default.
func TestResumeSettlesOnTheRealClock(t *testing.T) {
	s := newStore(t, controlstore.WithResumeSettle(20*time.Millisecond))
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	gw.Start()
	gw.SetLive(true)
	if err := gw.Apply(controlstore.GlobalOpID, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := gw.Apply(controlstore.GlobalOpID, controlstore.SignalResume); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(context.Background(), controlstore.Op{}); err != nil {
		t.Fatalf("Wait = %v, want the settled resume to release it", err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("resume applied after %v, before its 20ms settle window", d)
	}
}

// A settle of 0 applies a gateway's RESUME at once, as before, and a
// TERMINATE is never delayed.
func TestResumeSettleZeroAndTerminate(t *testing.T) {
	s := newStore(t, controlstore.WithResumeSettle(0))
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	gw.Start()
	gw.SetLive(true)
	for _, step := range []struct {
		sig  controlstore.Signal
		want controlstore.State
	}{{controlstore.SignalPause, controlstore.Paused}, {controlstore.SignalResume, controlstore.Running}, {controlstore.SignalTerminate, controlstore.Terminated}} {
		if err := gw.Apply(controlstore.GlobalOpID, step.sig); err != nil {
			t.Fatal(err)
		}
		if got := s.State(controlstore.GlobalOpID); got != step.want {
			t.Fatalf("after %v: %v, want %v", step.sig, got, step.want)
		}
	}
}

func TestResumeSettleOutOfRange(t *testing.T) {
	for _, d := range []time.Duration{-time.Nanosecond, controlstore.MaxResumeSettle + 1} {
		if _, err := controlstore.New(controlstore.Agent{AgentID: agentID}, controlstore.WithResumeSettle(d)); err == nil {
			t.Errorf("WithResumeSettle(%v): New succeeded, want an error", d)
		}
	}
}

// Found in review: every newer word on a scope cancels a gateway RESUME
// that is settling for it, whoever delivers it: a bus still catching up
// (its PAUSE is deferred, but it is the newer word), or a hand-driven
// Store.Apply.
func TestSettleCancelledByEveryNewerPause(t *testing.T) {
	for _, c := range []struct {
		name  string
		pause func(r *rig) error
	}{
		{"bus catching up", func(r *rig) error { return r.bus.Apply(global, pause) }},
		{"Store.Apply", func(r *rig) error { return r.s.Apply(global, pause) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t) // the bus catching up, never live here
			apply(t, r.gw, global, pause, resume)
			if err := c.pause(r); err != nil {
				t.Fatal(err)
			}
			r.timers.PassSettle()
			wantState(t, r.s, global, controlstore.Paused, "a newer PAUSE arrived while the RESUME settled")
		})
	}
}

// Found in review: a bus source that starts afresh (new halts only) has
// said nothing yet, whatever an earlier bus source said: it must not
// re-assert that stale view over the gateway's newer RESUME.
func TestNewBusSourceHasNoView(t *testing.T) {
	r := newRig(t)
	r.bus.SetLive(true)
	apply(t, r.bus, global, pause)
	r.bus.Stop()
	apply(t, r.gw, global, resume) // the operator resumes; the bus source is gone
	r.timers.PassSettle()
	b := r.s.AddSource("bus-b", controlstore.SourceBus)
	b.Start()
	b.SetLive(true)
	wantState(t, r.s, global, controlstore.Running, "a new bus source went live with nothing to say")
}

// The settle counters: a pending RESUME is counted once however many
// RESUMEs join it, and ends cancelled (by a newer word, or dropped when
// the bus comes back) or applied; Applied counts only changes.
func TestSettleCounters(t *testing.T) {
	r := newRig(t)                                // the bus down, within its grace
	apply(t, r.gw, global, pause, resume, resume) // the second RESUME joins the pending one
	apply(t, r.bus, global, resume)               // catching up: deferred
	r.bus.SetLive(true)                           // the bus speaks: the pending RESUME is dropped
	if st := r.s.Stats(); st.Settled != 1 || st.SettleCancelled != 1 || st.Deferred != 1 {
		t.Fatalf("Settled, SettleCancelled, Deferred = %d, %d, %d; want 1, 1, 1", st.Settled, st.SettleCancelled, st.Deferred)
	}
	wantState(t, r.s, global, controlstore.Running, "the bus's RESUME")

	// A settle due after a terminate of another scope applies, and counts.
	timers := newFakeTimers()
	s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc))
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	gw.Start()
	gw.SetLive(true)
	apply(t, gw, global, pause, resume)
	if err := s.Apply(controlstore.AgentOpIDPrefix+agentID, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	before := s.Stats().Applied
	timers.PassSettle()
	wantState(t, s, global, controlstore.Running, "settled")
	if a := s.Stats().Applied; a != before+1 {
		t.Fatalf("Applied %d -> %d for one settled change", before, a)
	}

	// A bus going live re-asserts its view; on a terminated scope that
	// changes nothing, and is not counted as applied.
	apply(t, r.bus, global, pause)
	r.bus.SetLive(false)
	apply(t, r.gw, global, controlstore.SignalTerminate)
	before = r.s.Stats().Applied
	r.bus.SetLive(true)
	if a := r.s.Stats().Applied; a != before {
		t.Fatalf("Applied %d -> %d when the bus's view met a terminated scope", before, a)
	}
}

// Found by the durability soak: the gateway's bridge replays its whole
// window when its own consumer is lost or NATS restarts, which is exactly
// when the agent's bus source is down too; a replay longer than the
// gateway's 256-envelope ring skips envelopes, so a replayed RESUME can
// arrive without the PAUSE behind it, and the settle alone then released
// held calls. During a bus outage within its grace, a gateway RESUME
// waits for the bus, which, back, says what is true.
func TestGatewayResumeWaitsForARecoveringBus(t *testing.T) {
	r := newRig(t)
	r.bus.SetLive(true)
	apply(t, r.bus, global, pause)
	r.bus.SetLive(false)                  // the bus source reconnects
	apply(t, r.gw, global, pause, resume) // a replay, whose last PAUSE the ring skipped
	r.timers.Pass(controlstore.DefaultBusGrace / 2)
	wantState(t, r.s, global, controlstore.Paused, "the bus is recovering")
	r.bus.SetLive(true) // back: nothing new, its view is pause
	r.timers.Pass(controlstore.DefaultBusGrace)
	wantState(t, r.s, global, controlstore.Paused, "the bus is back with its pause")

	// A resume the operator really sent is on the bus too, and applies
	// when the bus is back.
	r.bus.SetLive(false)
	apply(t, r.gw, global, resume)
	r.timers.PassSettle()
	wantState(t, r.s, global, controlstore.Paused, "the bus recovers")
	apply(t, r.bus, global, resume) // catching up
	r.bus.SetLive(true)
	wantState(t, r.s, global, controlstore.Running, "the bus caught up on the resume")
}

// Found in review: a gateway PAUSE during a bus outage applies at once;
// if the bus, back within its grace, has nothing for the scope, no halt of
// it was published since the bus began: the PAUSE was a replay of an older
// halt, and the scope returns to where it was. This is what keeps a
// replayed PAUSE, RESUME from leaving the scope paused while the replay's
// RESUME is (rightly) ignored.
func TestGatewayChangesDuringAnOutageAreConfirmedOrUndoneByTheBus(t *testing.T) {
	r := newRig(t)
	r.bus.SetLive(true)
	r.bus.SetLive(false)
	apply(t, r.gw, global, pause)                               // replayed, old
	apply(t, r.gw, controlstore.AgentOpIDPrefix+agentID, pause) // fresh, also on the bus
	wantState(t, r.s, global, controlstore.Paused, "a gateway PAUSE during the outage applies at once")
	apply(t, r.bus, controlstore.AgentOpIDPrefix+agentID, pause) // catching up
	r.bus.SetLive(true)
	wantState(t, r.s, global, controlstore.Running, "the bus had nothing for the global scope")
	wantState(t, r.s, controlstore.AgentOpIDPrefix+agentID, controlstore.Paused, "the bus confirmed the agent pause")
	if st := r.s.Stats(); st.Reverted != 1 {
		t.Fatalf("Reverted = %d, want 1", st.Reverted)
	}

	// A hand-driven signal during an outage is final: the bus, back with
	// nothing for the scope, does not undo it.
	r.bus.SetLive(false)
	apply(t, r.gw, global, pause) // replayed, old
	if err := r.s.Apply(global, pause); err != nil {
		t.Fatal(err)
	}
	r.bus.SetLive(true)
	wantState(t, r.s, global, controlstore.Paused, "a hand-driven PAUSE during the outage")
}

// A bus that stays away past its grace no longer holds the gateway back:
// the gateway alone brings the scope where the operator left it (the rule
// must not leave it stuck paused when the bus misses its tail), and what
// it changed stands when the bus returns (the bus may have lost halts to
// its retention meanwhile). A flapping bus restarts the grace, but each
// return settles what is pending.
func TestGatewayWordStandsOnceTheBusGraceHasPassed(t *testing.T) {
	r := newRig(t) // the bus started, never live yet
	apply(t, r.gw, global, pause, resume)
	r.timers.PassSettle()
	wantState(t, r.s, global, controlstore.Paused, "within the bus grace")
	r.timers.Pass(controlstore.DefaultBusGrace)
	r.timers.PassSettle()
	wantState(t, r.s, global, controlstore.Running, "the bus grace passed")
	apply(t, r.gw, global, pause) // past the grace: final
	r.bus.SetLive(true)           // back, nothing for the scope
	wantState(t, r.s, global, controlstore.Paused, "a gateway PAUSE from past the grace stands")

	// Stopping the last bus source releases what waited for it.
	r2 := newRig(t)
	apply(t, r2.gw, global, pause, resume)
	r2.bus.Stop()
	r2.timers.PassSettle()
	wantState(t, r2.s, global, controlstore.Running, "no bus runs any more")
}

// With no settle window, a gateway RESUME during a bus outage still waits
// for the bus.
func TestResumeSettleZeroStillWaitsForTheBus(t *testing.T) {
	timers := newFakeTimers()
	s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc), controlstore.WithResumeSettle(0))
	bus := s.AddSource("bus", controlstore.SourceBus)
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	gw.Start()
	gw.SetLive(true)
	bus.Start()
	apply(t, gw, global, pause, resume)
	timers.Pass(0)
	wantState(t, s, global, controlstore.Paused, "settle 0, the bus recovering")
	timers.Pass(controlstore.DefaultBusGrace)
	wantState(t, s, global, controlstore.Running, "the grace passed")
}

// Found in the third review. Several bus sources: the one that goes live
// first speaks; another, still catching up, cannot spoil its word.
func TestBusSourceCatchingUpDoesNotSpoilTheLiveOnesWord(t *testing.T) {
	r := newRig(t)
	r.bus.SetLive(true)
	apply(t, r.bus, global, resume, pause) // the operator's last word: pause
	b2 := r.s.AddSource("bus-2", controlstore.SourceBus)
	b2.Start()
	apply(t, b2, global, resume) // catching up: only the old RESUME so far
	r.bus.SetLive(false)
	r.bus.SetLive(true) // back, nothing new
	wantState(t, r.s, global, controlstore.Paused, "the live bus's last word")
}

// Found in the third review: once the gateway's word stands (past the
// grace), the bus's RESUME from before the outage must not undo a newer
// PAUSE that the bus lost to its retention; nor may it undo a hand-driven
// PAUSE during a short outage.
func TestStaleBusResumeNeverUndoesANewerPause(t *testing.T) {
	r := newRig(t)
	r.bus.SetLive(true)
	apply(t, r.bus, global, pause, resume)
	r.bus.SetLive(false)
	r.timers.Pass(controlstore.DefaultBusGrace + time.Second)
	apply(t, r.gw, global, pause) // the bus will never deliver it
	r.bus.SetLive(true)
	wantState(t, r.s, global, controlstore.Paused, "the gateway's PAUSE past the grace")

	h := newRig(t)
	h.bus.SetLive(true)
	apply(t, h.bus, global, pause, resume)
	h.bus.SetLive(false)
	if err := h.s.Apply(global, pause); err != nil {
		t.Fatal(err)
	}
	h.bus.SetLive(true)
	wantState(t, h.s, global, controlstore.Paused, "a hand-driven PAUSE is the newest word")
}

// Found in the third review: a RESUME waiting when the grace ends keeps
// its own settle window, so that a replayed PAUSE, RESUME, PAUSE that
// straddles the end of the grace releases nothing.
func TestGraceEndKeepsEachResumesSettleWindow(t *testing.T) {
	r := newRig(t) // the bus started, never live: an outage from now
	apply(t, r.gw, global, pause)
	r.timers.Pass(controlstore.DefaultBusGrace - 200*time.Millisecond)
	apply(t, r.gw, global, pause, resume)
	r.timers.Pass(300 * time.Millisecond) // the grace ends
	wantState(t, r.s, global, controlstore.Paused, "within the RESUME's settle window")
	apply(t, r.gw, global, pause) // the replay's last PAUSE
	r.timers.Pass(time.Minute)
	wantState(t, r.s, global, controlstore.Paused, "the replay ended in PAUSE")
}
