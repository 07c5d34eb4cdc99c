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

// Stuck paused: a replay of PAUSE then RESUME straddles the bus source
// going live. The bus has delivered nothing for the scope (it starts at
// "new halts only"), so it has no view to restore; ignoring the gateway's
// RESUME then left the scope paused for good, although the operator's last
// word was resume.
func TestReplayStraddlingBusLiveDoesNotStickPaused(t *testing.T) {
	timers := newFakeTimers()
	s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc))
	bus := s.AddSource("bus", controlstore.SourceBus)
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	bus.Start()
	gw.Start()
	gw.SetLive(true)

	if err := gw.Apply(controlstore.GlobalOpID, controlstore.SignalPause); err != nil { // replayed, old
		t.Fatal(err)
	}
	bus.SetLive(true)                                                                    // caught up, with nothing for the scope
	if err := gw.Apply(controlstore.GlobalOpID, controlstore.SignalResume); err != nil { // replayed, the last word
		t.Fatal(err)
	}
	timers.FireAll()
	if got := s.State(controlstore.GlobalOpID); got != controlstore.Running {
		t.Fatalf("global scope = %v after the replay ended in RESUME, want running: the bus had no word on it", got)
	}
	// Once the bus has spoken for the scope, the gateway's copies are
	// ignored again.
	if err := bus.Apply(controlstore.GlobalOpID, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	if err := gw.Apply(controlstore.GlobalOpID, controlstore.SignalResume); err != nil {
		t.Fatal(err)
	}
	timers.FireAll()
	if got := s.State(controlstore.GlobalOpID); got != controlstore.Paused {
		t.Fatalf("global scope = %v, want the bus's paused", got)
	}
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
			s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc))
			if withBus {
				bus := s.AddSource("bus", controlstore.SourceBus)
				bus.Start() // and never live
			}
			gw := s.AddSource("gateway", controlstore.SourceGateway)
			gw.Start()
			gw.SetLive(true)
			agentHalt := controlstore.AgentOpIDPrefix + agentID
			if err := gw.Apply(agentHalt, controlstore.SignalPause); err != nil {
				t.Fatal(err)
			}
			o, _ := op(1)
			held := make(chan error, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { held <- s.Wait(ctx, o) }()
			testutil.Eventually(t, 10*time.Second, func() bool { return s.Held() == 1 }, "the call is not held")

			for _, sig := range []controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume, controlstore.SignalPause} {
				if err := gw.Apply(agentHalt, sig); err != nil {
					t.Fatal(err)
				}
				if err := s.Check(o); !errors.Is(err, controlstore.ErrPaused) {
					t.Fatalf("replayed %v: Check = %v, want paused throughout", sig, err)
				}
			}
			timers.FireAll() // the settle window passes
			select {
			case err := <-held:
				t.Fatalf("held call returned %v during a replay that ended in PAUSE", err)
			default:
			}
			if got := s.State(agentHalt); got != controlstore.Paused {
				t.Fatalf("agent scope = %v, want paused", got)
			}

			// A resume that is not followed by a pause applies once it
			// has settled.
			if err := gw.Apply(agentHalt, controlstore.SignalResume); err != nil {
				t.Fatal(err)
			}
			if got := s.State(agentHalt); got != controlstore.Paused {
				t.Fatalf("agent scope = %v before the resume settled, want paused", got)
			}
			timers.FireAll()
			if err := <-held; err != nil {
				t.Fatalf("held call after the resume settled: %v", err)
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
		pause func(s *controlstore.Store, bus *controlstore.Source) error
	}{
		{"bus catching up", func(_ *controlstore.Store, bus *controlstore.Source) error {
			return bus.Apply(controlstore.GlobalOpID, controlstore.SignalPause)
		}},
		{"Store.Apply", func(s *controlstore.Store, _ *controlstore.Source) error {
			return s.Apply(controlstore.GlobalOpID, controlstore.SignalPause)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			timers := newFakeTimers()
			s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc))
			bus := s.AddSource("bus", controlstore.SourceBus)
			gw := s.AddSource("gateway", controlstore.SourceGateway)
			gw.Start()
			gw.SetLive(true)
			bus.Start() // catching up, never live here
			for _, sig := range []controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume} {
				if err := gw.Apply(controlstore.GlobalOpID, sig); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.pause(s, bus); err != nil {
				t.Fatal(err)
			}
			timers.FireAll()
			if got := s.State(controlstore.GlobalOpID); got != controlstore.Paused {
				t.Fatalf("global scope = %v after a newer PAUSE, want paused: the settling RESUME released it", got)
			}
		})
	}
}

// Found in review: a bus source that starts afresh (new halts only) has
// said nothing yet, whatever an earlier bus source said: it must not
// re-assert that stale view over the gateway's newer RESUME.
func TestNewBusSourceHasNoView(t *testing.T) {
	timers := newFakeTimers()
	s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc))
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	gw.Start()
	gw.SetLive(true)
	a := s.AddSource("bus-a", controlstore.SourceBus)
	a.Start()
	a.SetLive(true)
	if err := a.Apply(controlstore.GlobalOpID, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	if err := gw.Apply(controlstore.GlobalOpID, controlstore.SignalResume); err != nil { // the operator resumes; bus-a is gone
		t.Fatal(err)
	}
	timers.FireAll()
	b := s.AddSource("bus-b", controlstore.SourceBus)
	b.Start()
	b.SetLive(true)
	if got := s.State(controlstore.GlobalOpID); got != controlstore.Running {
		t.Fatalf("global scope = %v after a new bus source went live with nothing to say, want running", got)
	}
}

// The settle counters: a window opens once however many RESUMEs join it,
// and ends cancelled, superseded or applied; Applied counts only changes.
func TestSettleCounters(t *testing.T) {
	timers := newFakeTimers()
	s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc))
	bus := s.AddSource("bus", controlstore.SourceBus)
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	gw.Start()
	gw.SetLive(true)
	bus.Start()
	bus.SetLive(true) // live, silent on every scope
	apply := func(src *controlstore.Source, sig controlstore.Signal) {
		t.Helper()
		if err := src.Apply(controlstore.GlobalOpID, sig); err != nil {
			t.Fatal(err)
		}
	}
	apply(gw, controlstore.SignalPause)
	apply(gw, controlstore.SignalResume)
	apply(gw, controlstore.SignalResume)  // joins the open window
	apply(bus, controlstore.SignalResume) // the bus speaks: the window is cancelled
	st := s.Stats()
	if st.Settled != 1 || st.SettleCancelled != 1 {
		t.Fatalf("Settled, SettleCancelled = %d, %d; want 1, 1", st.Settled, st.SettleCancelled)
	}
	if got := s.State(controlstore.GlobalOpID); got != controlstore.Running {
		t.Fatalf("global scope = %v after the bus's RESUME, want running", got)
	}

	// A settle due after a terminate changes nothing, and is not counted
	// as applied.
	s2 := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc))
	gw2 := s2.AddSource("gateway", controlstore.SourceGateway)
	gw2.Start()
	gw2.SetLive(true)
	for _, sig := range []controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume} {
		if err := gw2.Apply(controlstore.GlobalOpID, sig); err != nil {
			t.Fatal(err)
		}
	}
	if err := s2.Apply(controlstore.AgentOpIDPrefix+agentID, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	before := s2.Stats().Applied
	timers.FireAll()
	if got := s2.State(controlstore.GlobalOpID); got != controlstore.Running {
		t.Fatalf("global scope = %v, want running once settled", got)
	}
	if a := s2.Stats().Applied; a != before+1 {
		t.Fatalf("Applied %d -> %d for one settled change", before, a)
	}

	// A bus going live re-asserts its view; on a terminated scope that
	// changes nothing, and is not counted as applied.
	apply(bus, controlstore.SignalPause)
	bus.SetLive(false)
	apply(gw, controlstore.SignalTerminate)
	before = s.Stats().Applied
	bus.SetLive(true)
	if a := s.Stats().Applied; a != before {
		t.Fatalf("Applied %d -> %d when the bus's view met a terminated scope", before, a)
	}
}
