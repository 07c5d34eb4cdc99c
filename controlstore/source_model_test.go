package controlstore_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// The two-source model: an operator publishes halts of the global and the
// agent scope. The bus carries every one, in order, and its source resumes
// where it left off after an outage, reporting live once caught up. The
// gateway carries a copy that it may drop, deliver late (behind a queue),
// lose entirely while its stream is down, or replay from its own bridge
// (old entries again). The store must end where the operator left it, and
// while the bus is live, agree with the bus exactly on every scope the bus
// has spoken for.
//
// In one mode of four (replay mode) the bus source begins late, with new
// halts only, as the jetstream source does by default; before it begins the
// gateway loses nothing (it still lags and replays), after it the gateway
// may skip copies too (its ring overflows under a long replay), and the
// bus is never away longer than its grace. There the store must never
// release a paused scope because of the gateway unless the operator's word
// at that moment is resume: a replayed PAUSE, RESUME, PAUSE, even one that
// lost its last PAUSE, must not let held calls run in between. At the end
// every scope the bus spoke for is where the operator left it, and every
// other one where it was when the bus began (halts from before the bus
// began are not re-applied from the gateway's replays). Time passes
// (settle windows end) only while the gateway has nothing in flight: the
// model assumes a gateway-only replay drains within the settle window.

type halt struct {
	scope int // 0 global, 1 agent
	sig   controlstore.Signal
}

type twoSourceWorld struct {
	t      *testing.T
	rng    *rand.Rand
	store  *controlstore.Store
	timers *fakeTimers
	bus    *controlstore.Source
	gw     *controlstore.Source

	replayMode bool // see above
	atBusStart [2]controlstore.State
	busStarted bool
	busSpoke   [2]bool // the bus has delivered a halt of the scope

	truth []halt
	ids   [2]string

	busUp   bool // connected; live once caught up
	busLive bool
	busPos  int // next truth index the bus delivers

	gwUp    bool
	gwQueue []halt // in flight on the gateway's stream

	terminated [2]bool // a TERMINATE of the scope has been applied by a source
	log        []string
}

func newTwoSourceWorld(t *testing.T, seed uint64) *twoSourceWorld {
	w := &twoSourceWorld{t: t, rng: rand.New(rand.NewPCG(seed, 7)), timers: newFakeTimers()}
	w.replayMode = seed%4 == 3
	w.store = newStore(t, controlstore.WithAfterFunc(w.timers.AfterFunc))
	w.ids = [2]string{controlstore.GlobalOpID, controlstore.AgentOpIDPrefix + agentID}
	w.bus = w.store.AddSource("bus", controlstore.SourceBus)
	w.gw = w.store.AddSource("gateway", controlstore.SourceGateway)
	w.gw.Start()
	w.gwUp = true
	w.gw.SetLive(true)
	if !w.replayMode {
		w.startBus()
	}
	return w
}

// startBus begins the bus source with new halts only: it never delivers
// what was published before.
func (w *twoSourceWorld) startBus() {
	w.busStarted, w.busUp, w.busPos = true, true, len(w.truth)
	w.bus.Start()
	w.logf("bus starts at #%d", w.busPos)
	w.catchUp() // nothing to catch up on
	for scope := range 2 {
		w.atBusStart[scope] = w.store.State(w.ids[scope])
	}
}

func (w *twoSourceWorld) logf(format string, args ...any) {
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

func (w *twoSourceWorld) publish(h halt) {
	w.truth = append(w.truth, h)
	if w.gwUp {
		w.gwQueue = append(w.gwQueue, h)
	}
	w.logf("publish #%d %s %v", len(w.truth)-1, w.ids[h.scope], h.sig)
}

func (w *twoSourceWorld) apply(src *controlstore.Source, h halt) {
	if err := src.Apply(w.ids[h.scope], h.sig); err != nil {
		w.t.Fatalf("%s.Apply: %v", src.Name(), err)
	}
	if h.sig == controlstore.SignalTerminate {
		w.terminated[h.scope] = true
	}
}

func (w *twoSourceWorld) busDeliver() {
	if !w.busUp || w.busPos == len(w.truth) {
		return
	}
	h := w.truth[w.busPos]
	w.logf("bus delivers #%d %v", w.busPos, h.sig)
	w.busPos++
	w.busSpoke[h.scope] = true
	before := w.store.State(w.ids[h.scope])
	w.apply(w.bus, h)
	if !w.busLive && h.sig != controlstore.SignalTerminate {
		// Catching up replays halts the operator may have long since
		// overridden: none of them may move the scope on its own.
		if got := w.store.State(w.ids[h.scope]); got != before {
			w.t.Fatalf("bus catching up moved %s from %v to %v\n  %s", w.ids[h.scope], before, got,
				strings.Join(w.log[max(0, len(w.log)-40):], "\n  "))
		}
	}
	w.catchUp()
}

// catchUp reports the bus live once it has delivered everything published.
func (w *twoSourceWorld) catchUp() {
	if w.busUp && !w.busLive && w.busPos == len(w.truth) {
		w.busLive = true
		w.bus.SetLive(true)
		w.logf("bus live")
	}
}

func (w *twoSourceWorld) gwDeliver(drop bool) {
	if !w.gwUp || len(w.gwQueue) == 0 {
		return
	}
	drop = drop && (!w.replayMode || w.busStarted)
	h := w.gwQueue[0]
	w.gwQueue = w.gwQueue[1:]
	if drop {
		w.logf("gateway drops %v", h.sig)
		return
	}
	w.logf("gateway delivers %s %v", w.ids[h.scope], h.sig)
	w.apply(w.gw, h)
}

// want is the state the operator left scope in after the first n halts,
// terminates aside: a terminate counts once a source has applied it (one
// that both sources missed is lost, as the test of the end states allows).
func (w *twoSourceWorld) want(scope, n int) controlstore.State {
	st := controlstore.Running
	for _, h := range w.truth[:n] {
		if h.scope != scope {
			continue
		}
		switch h.sig {
		case controlstore.SignalPause:
			st = controlstore.Paused
		case controlstore.SignalResume:
			st = controlstore.Running
		}
	}
	return st
}

func (w *twoSourceWorld) check(when string, n int) {
	w.checkScopes(when, n, [2]bool{true, true})
}

func (w *twoSourceWorld) checkScopes(when string, n int, scopes [2]bool) {
	for scope := range 2 {
		if !scopes[scope] {
			continue
		}
		got := w.store.State(w.ids[scope])
		want := w.want(scope, n)
		if w.terminated[scope] {
			want = controlstore.Terminated // a terminate from either source is sticky
		}
		if got != want {
			tail := w.log[max(0, len(w.log)-40):]
			w.t.Fatalf("%s: %s is %v, want %v\n  %s", when, w.ids[scope], got, want, strings.Join(tail, "\n  "))
		}
	}
}

// timePasses ends every settle window, if the gateway has nothing in
// flight; now and then (never in replay mode) so much time passes that a
// bus that is down is past its grace.
func (w *twoSourceWorld) timePasses(long bool) {
	if len(w.gwQueue) != 0 {
		return
	}
	d := controlstore.DefaultResumeSettle
	if long && !w.replayMode {
		d = controlstore.DefaultBusGrace + time.Second
	}
	if n := w.timers.Pass(d); n > 0 {
		w.logf("%v pass: %d timers fire", d, n)
	}
}

func (w *twoSourceWorld) step() {
	var before [2]controlstore.State
	for scope := range 2 {
		before[scope] = w.store.State(w.ids[scope])
	}
	byGateway := false
	switch r := w.rng.IntN(104); {
	case r < 25:
		sig := controlstore.SignalPause
		if w.rng.IntN(2) == 0 {
			sig = controlstore.SignalResume
		}
		if w.rng.IntN(60) == 0 {
			sig = controlstore.SignalTerminate
		}
		scope := w.rng.IntN(2)
		if w.replayMode && w.busStarted {
			// The agent scope gets no halt once the bus has begun: one
			// scope the bus never speaks for, which the gateway's
			// replays of older halts must not move for good.
			scope = 0
		}
		w.publish(halt{scope: scope, sig: sig})
	case r < 50:
		w.busDeliver()
	case r < 75:
		w.gwDeliver(w.rng.IntN(4) == 0)
		byGateway = true
	case r < 80: // the bus link drops
		if !w.busStarted {
			if w.rng.IntN(8) == 0 { // late, often after the last halt of a scope
				w.startBus()
			}
		} else if w.busUp {
			w.busUp, w.busLive = false, false
			w.bus.SetLive(false)
			w.logf("bus down")
		}
	case r < 85:
		if w.busStarted && !w.busUp {
			w.busUp = true
			w.logf("bus up")
			w.catchUp()
		}
	case r < 90: // the gateway stream drops: what is in flight is lost
		if w.gwUp && !w.replayMode {
			w.gwUp, w.gwQueue = false, nil
			w.gw.SetLive(false)
			w.logf("gateway down")
		}
	case r < 95:
		if !w.gwUp {
			w.gwUp = true
			w.gw.SetLive(true)
			w.logf("gateway up")
		}
	case r < 100: // the gateway's own bridge reconnects and replays its window
		if w.gwUp {
			from := max(0, len(w.truth)-w.rng.IntN(8))
			w.gwQueue = append(w.gwQueue, w.truth[from:]...)
			w.logf("gateway replays #%d..", from)
		}
	default:
		w.timePasses(w.rng.IntN(10) == 0)
		byGateway = true
	}
	if w.busLive {
		// While the bus is live the store agrees with it exactly on
		// every scope it has spoken for.
		w.checkScopes("bus live", w.busPos, w.busSpoke)
	}
	if w.replayMode && byGateway {
		for scope := range 2 {
			got := w.store.State(w.ids[scope])
			if before[scope] == controlstore.Paused && got == controlstore.Running && w.want(scope, len(w.truth)) != controlstore.Running {
				w.t.Fatalf("the gateway released %s while the operator's word was pause\n  %s", w.ids[scope],
					strings.Join(w.log[max(0, len(w.log)-40):], "\n  "))
			}
		}
	}
}

// TestTwoSourcesModel runs random interleavings of a bus and a gateway
// feeding one store, with drops, outages, late and replayed copies.
func TestTwoSourcesModel(t *testing.T) {
	runs := 3000
	if testing.Short() {
		runs = 300
	}
	for seed := range uint64(runs) {
		w := newTwoSourceWorld(t, seed)
		for range 150 {
			w.step()
		}
		switch {
		case w.replayMode:
			// The bus comes up and catches up, the gateway drains what it
			// has, the settle windows end: every scope is where the
			// operator left it, whether or not the bus spoke for it.
			if !w.busStarted {
				w.startBus()
			}
			if !w.busUp {
				w.busUp = true
				w.catchUp()
			}
			for w.busPos < len(w.truth) {
				w.busDeliver()
			}
			for len(w.gwQueue) > 0 {
				w.gwDeliver(false)
			}
			w.timePasses(false)
			for scope := range 2 {
				want := w.atBusStart[scope]
				if w.busSpoke[scope] {
					want = w.want(scope, len(w.truth))
				}
				if w.terminated[scope] {
					want = controlstore.Terminated
				}
				if got := w.store.State(w.ids[scope]); got != want {
					w.t.Fatalf("replay mode, bus caught up, at the end: %s is %v, want %v (bus spoke: %v)\n  %s", w.ids[scope], got, want,
						w.busSpoke[scope], strings.Join(w.log[max(0, len(w.log)-40):], "\n  "))
				}
			}
		case seed%4 < 2:
			// The bus comes back and catches up; the gateway may have
			// missed its tail, or still have stale copies in flight.
			if !w.busUp {
				w.busUp = true
				w.catchUp()
			}
			for w.busPos < len(w.truth) {
				w.busDeliver()
			}
			if seed%4 == 1 {
				for len(w.gwQueue) > 0 {
					w.gwDeliver(false)
				}
			}
			w.timePasses(false)
			w.check("bus caught up at the end", len(w.truth))
		default:
			// The bus misses its tail: it stays down. The gateway, live,
			// delivers what it has in flight, and then a final halt of
			// each scope: the store must follow the gateway alone.
			if w.busUp {
				w.busUp, w.busLive = false, false
				w.bus.SetLive(false)
			}
			if !w.gwUp {
				w.gwUp = true
				w.gw.SetLive(true)
			}
			for len(w.gwQueue) > 0 {
				w.gwDeliver(false)
			}
			for scope := range 2 {
				w.publish(halt{scope: scope, sig: controlstore.Signal(1 + w.rng.IntN(2))})
			}
			for len(w.gwQueue) > 0 {
				w.gwDeliver(false)
			}
			w.timePasses(true) // the bus is down past its grace
			w.timePasses(false)
			w.check("gateway alone at the end", len(w.truth))
		}
		if t.Failed() {
			return
		}
	}
}

// A late gateway copy of an old RESUME, arriving after the bus applied the
// newer PAUSE and dropped, must not stay in force once the bus is back:
// the bus's view wins when it goes live, even though it has nothing new.
func TestTwoSourcesLateGatewayCopyIsUndoneByTheBus(t *testing.T) {
	timers := newFakeTimers()
	s := newStore(t, controlstore.WithAfterFunc(timers.AfterFunc), controlstore.WithBusGrace(0)) // the bus stays away past its grace
	bus := s.AddSource("bus", controlstore.SourceBus)
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	bus.Start()
	gw.Start()
	bus.SetLive(true)
	gw.SetLive(true)
	for _, sig := range []controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume, controlstore.SignalPause} {
		if err := bus.Apply("*", sig); err != nil {
			t.Fatal(err)
		}
	}
	// The gateway's copies, lagging, are ignored while the bus is live.
	if err := gw.Apply("*", controlstore.SignalResume); err != nil {
		t.Fatal(err)
	}
	if got := s.State("*"); got != controlstore.Paused {
		t.Fatalf("after a stale gateway RESUME while the bus is live: %v, want paused", got)
	}
	bus.SetLive(false)
	if err := gw.Apply("*", controlstore.SignalResume); err != nil { // still the stale copy
		t.Fatal(err)
	}
	timers.PassSettle()
	if got := s.State("*"); got != controlstore.Running {
		t.Fatalf("with the bus down the gateway applies: %v, want running", got)
	}
	bus.SetLive(true) // back, caught up, nothing new published
	if got := s.State("*"); got != controlstore.Paused {
		t.Fatalf("bus live again: %v, want the bus's paused", got)
	}
	if st := s.Stats(); st.Superseded != 1 {
		t.Fatalf("Superseded = %d, want 1", st.Superseded)
	}
}

// A bus catching up delivers old halts; only the last one of each scope
// counts, when it goes live: no resume of a pause that was re-issued.
func TestTwoSourcesCatchUpAppliesOnlyTheLastHalt(t *testing.T) {
	s := newStore(t)
	bus := s.AddSource("bus", controlstore.SourceBus)
	gw := s.AddSource("gateway", controlstore.SourceGateway)
	bus.Start()
	gw.Start()
	gw.SetLive(true)
	if err := gw.Apply("*", controlstore.SignalPause); err != nil { // the newest halt, via the gateway
		t.Fatal(err)
	}
	o, _ := op(1)
	for _, sig := range []controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume} {
		if err := bus.Apply("*", sig); err != nil {
			t.Fatal(err)
		}
		if err := s.Check(o); err == nil {
			t.Fatalf("bus catching up delivered %v: a call may run, but the operator's last word was pause", sig)
		}
	}
	if err := bus.Apply("*", controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	bus.SetLive(true)
	if got := s.State("*"); got != controlstore.Paused {
		t.Fatalf("caught up: %v, want paused", got)
	}
	if st := s.Stats(); st.Deferred != 3 {
		t.Fatalf("Deferred = %d, want 3", st.Deferred)
	}
	// A terminate from the bus is never deferred.
	if err := bus.Apply(controlstore.AgentOpIDPrefix+agentID, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	bus.SetLive(false)
	if err := bus.Apply(controlstore.AgentOpIDPrefix+agentID, controlstore.SignalResume); err != nil {
		t.Fatal(err)
	}
	bus.SetLive(true)
	if got := s.State(controlstore.AgentOpIDPrefix + agentID); got != controlstore.Terminated {
		t.Fatalf("agent scope = %v, want terminated for good", got)
	}
}
