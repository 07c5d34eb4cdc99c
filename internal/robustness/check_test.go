package robustness

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// The checker must be able to fail: each guarantee gets hand-made histories
// that break it (and must be reported, with the offending events in the
// excerpt) and near-identical ones that do not (and must not be).

const (
	hPause     = controlstore.SignalPause
	hResume    = controlstore.SignalResume
	hTerminate = controlstore.SignalTerminate
	hRunning   = controlstore.Running
	hPaused    = controlstore.Paused
	hTerm      = controlstore.Terminated
)

const checkAgent = "did:key:z6MkChecker"

// hb builds a history by hand; times are in milliseconds.
type hb struct{ ev []Event }

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func (b *hb) add(e Event) int {
	e.ID = len(b.ev)
	b.ev = append(b.ev, e)
	return e.ID
}

func (b *hb) link(t int, live bool, stream int, skipped uint64) int {
	return b.add(Event{Kind: KindLink, At: ms(t), Live: live, Stream: stream, Skipped: skipped})
}

func (b *hb) pub(t int, id string, sig controlstore.Signal) int {
	return b.add(Event{Kind: KindPublish, At: ms(t), End: ms(t) + ms(1)/2, OpID: id, Signal: sig, Applies: true})
}

// settle publishes a marker at t and records it applied at t+5, with a
// link sample of stream right after.
func (b *hb) settle(t int, marker string, stream int, skipped uint64) {
	m := b.pub(t, marker, hTerminate)
	b.add(Event{Kind: KindObserve, At: ms(t + 5), OpID: marker, State: hTerm})
	b.add(Event{Kind: KindSettle, At: ms(t + 5), Ref: m})
	b.link(t+6, stream != 0, stream, skipped)
}

func (b *hb) observe(t int, id string, st controlstore.State) int {
	return b.add(Event{Kind: KindObserve, At: ms(t), End: ms(t) + ms(1)/4, OpID: id, State: st})
}

func (b *hb) applied(t int, id string) int {
	return b.add(Event{Kind: KindApplied, At: ms(t), OpID: id})
}

func (b *hb) call(e Event) int {
	e.Kind = KindCall
	e.Note = "test"
	return b.add(e)
}

func check(b *hb) []Violation {
	return Check(Config{AgentID: checkAgent, MaxEntries: 100, TerminatedHistory: 200}, b.ev)
}

// wantViolation asserts exactly one violation of g whose excerpt includes
// the events ids.
func wantViolation(t *testing.T, b *hb, g Guarantee, ids ...int) {
	t.Helper()
	vs := check(b)
	if len(vs) != 1 || vs[0].Guarantee != g {
		t.Fatalf("want one %s violation, got %d: %v", g, len(vs), vs)
	}
	text := vs[0].String()
	for _, id := range ids {
		found := false
		for _, e := range vs[0].Excerpt {
			found = found || e.ID == id
		}
		if !found {
			t.Errorf("excerpt lacks event #%d:\n%s", id, text)
		}
	}
	if !strings.Contains(text, string(g)+" violated") {
		t.Errorf("String() = %q", text)
	}
	t.Logf("caught as expected:\n%s", text)
}

func wantNone(t *testing.T, b *hb) {
	t.Helper()
	if vs := check(b); len(vs) != 0 {
		for _, v := range vs {
			t.Error(v)
		}
	}
}

func TestCheckTerminateEnforced(t *testing.T) {
	const op = "op-1"
	t.Run("call started after the terminate reached the invoker", func(t *testing.T) {
		b := &hb{}
		a := b.applied(10, op)
		c := b.call(Event{At: ms(20), End: ms(22), OpID: op, Reached: true, Invoked: ms(21), Outcome: OutcomeOK})
		wantViolation(t, b, TerminateEnforced, a, c)
	})
	t.Run("agent terminate covers every op", func(t *testing.T) {
		b := &hb{}
		a := b.applied(10, "agent:"+checkAgent)
		c := b.call(Event{At: ms(20), End: ms(22), OpID: op, Reached: true, Invoked: ms(21), Outcome: OutcomeOK})
		wantViolation(t, b, TerminateEnforced, a, c)
	})
	t.Run("terminate seen by observation", func(t *testing.T) {
		b := &hb{}
		b.pub(5, "*", hTerminate)
		o := b.observe(10, "*", hTerm)
		c := b.call(Event{At: ms(20), End: ms(22), Reached: true, Invoked: ms(21), Outcome: OutcomeOK})
		wantViolation(t, b, TerminateEnforced, o, c)
	})
	t.Run("in-flight call not cancelled", func(t *testing.T) {
		b := &hb{}
		c := b.call(Event{At: ms(0), End: ms(60), OpID: op, Reached: true, Invoked: ms(1), Dur: 10 * time.Second, Outcome: OutcomeOK})
		a := b.applied(50, op)
		wantViolation(t, b, TerminateEnforced, a, c)
	})
	t.Run("in-flight call cancelled", func(t *testing.T) {
		b := &hb{}
		b.call(Event{At: ms(0), End: ms(60), OpID: op, Reached: true, Invoked: ms(1), Dur: 10 * time.Second, Outcome: OutcomeTerminated})
		b.applied(50, op)
		wantNone(t, b)
	})
	t.Run("call done on the server before the terminate", func(t *testing.T) {
		b := &hb{}
		b.call(Event{At: ms(0), End: ms(60), OpID: op, Reached: true, Invoked: ms(1), Dur: ms(20), Outcome: OutcomeOK})
		b.applied(50, op)
		wantNone(t, b)
	})
	t.Run("held call outlives the terminate", func(t *testing.T) {
		b := &hb{}
		c := b.call(Event{At: ms(0), End: ms(5000), OpID: op, Outcome: OutcomeAbandoned, HeldBy: op})
		a := b.applied(50, op)
		wantViolation(t, b, TerminateEnforced, a, c)
	})
	t.Run("held call ends terminated", func(t *testing.T) {
		b := &hb{}
		b.call(Event{At: ms(0), End: ms(55), OpID: op, Outcome: OutcomeTerminated, HeldBy: op, TerminatedBy: op})
		b.applied(50, op)
		wantNone(t, b)
	})
	t.Run("gate passed just before, cancelled after invoke", func(t *testing.T) {
		b := &hb{}
		b.call(Event{At: ms(9), End: ms(12), OpID: op, Reached: true, Invoked: ms(11), Outcome: OutcomeTerminated, TerminatedBy: op})
		b.applied(10, op)
		wantNone(t, b)
	})
	t.Run("other ops are not covered", func(t *testing.T) {
		b := &hb{}
		b.applied(10, op)
		b.call(Event{At: ms(20), End: ms(22), OpID: "op-2", Reached: true, Invoked: ms(21), Outcome: OutcomeOK})
		wantNone(t, b)
	})
}

func TestCheckTerminateAbsorbing(t *testing.T) {
	const op = "op-1"
	t.Run("store forgets a terminate", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(5, op, hTerminate)
		o1 := b.observe(10, op, hTerm)
		b.pub(15, op, hResume)
		o2 := b.observe(20, op, hRunning)
		wantViolation(t, b, TerminateAbsorbing, o1, o2)
	})
	t.Run("forgotten after the entry cap and the history of newer terminates", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(5, op, hTerminate)
		b.observe(10, op, hTerm)
		b.add(Event{Kind: KindPublish, At: ms(12), End: ms(14), Signal: hTerminate, Applies: true, Bulk: 300})
		b.observe(20, op, hRunning)
		wantNone(t, b)
	})
	t.Run("fewer newer terminates than the cap and the history", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(5, op, hTerminate)
		o1 := b.observe(10, op, hTerm)
		b.add(Event{Kind: KindPublish, At: ms(12), End: ms(14), Signal: hTerminate, Applies: true, Bulk: 299})
		o2 := b.observe(20, op, hRunning)
		wantViolation(t, b, TerminateAbsorbing, o1, o2)
	})
	t.Run("newer pauses never make a terminate forgettable", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(5, op, hTerminate)
		o1 := b.observe(10, op, hTerm)
		b.add(Event{Kind: KindPublish, At: ms(12), End: ms(14), Signal: hPause, Applies: true, Bulk: 100_000})
		o2 := b.observe(20, op, hRunning)
		wantViolation(t, b, TerminateAbsorbing, o1, o2)
	})
	t.Run("gate lets a call through after refusing one", func(t *testing.T) {
		b := &hb{}
		c1 := b.call(Event{At: ms(0), End: ms(1), OpID: op, Outcome: OutcomeTerminated, TerminatedBy: "*"})
		c2 := b.call(Event{At: ms(10), End: ms(12), OpID: "op-2", Reached: true, Invoked: ms(11), Outcome: OutcomeOK})
		wantViolation(t, b, TerminateAbsorbing, c1, c2)
	})
}

func TestCheckNoSpuriousResume(t *testing.T) {
	const op = "op-1"
	t.Run("paused op runs again after a disconnect", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		p := b.pub(5, op, hPause)
		o1 := b.observe(10, op, hPaused)
		b.add(Event{Kind: KindFault, At: ms(12), Note: "reset"})
		b.link(13, false, 0, 0)
		b.link(30, true, 2, 0)
		o2 := b.observe(40, op, hRunning)
		wantViolation(t, b, NoSpuriousResume, p, o1, o2)
	})
	t.Run("resumed after reconnecting", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(5, op, hPause)
		b.observe(10, op, hPaused)
		b.link(13, false, 0, 0)
		b.link(30, true, 2, 0)
		b.pub(35, op, hResume)
		b.observe(40, op, hRunning)
		wantNone(t, b)
	})
	t.Run("held call goes ahead with no resume", func(t *testing.T) {
		b := &hb{}
		p := b.pub(5, op, hPause)
		c := b.call(Event{At: ms(10), End: ms(52), OpID: op, Reached: true, Invoked: ms(50), Outcome: OutcomeOK, HeldBy: op})
		wantViolation(t, b, NoSpuriousResume, p, c)
	})
	t.Run("held call released by a resume", func(t *testing.T) {
		b := &hb{}
		b.pub(5, op, hPause)
		b.pub(40, op, hResume)
		b.call(Event{At: ms(10), End: ms(52), OpID: op, Reached: true, Invoked: ms(50), Outcome: OutcomeOK, HeldBy: op})
		wantNone(t, b)
	})
	t.Run("resume and re-pause race", func(t *testing.T) {
		// Held by the agent pause; the agent RESUME releases it before the
		// op's own PAUSE, published right after, is applied.
		b := &hb{}
		agent := "agent:" + checkAgent
		b.pub(5, agent, hPause)
		b.pub(40, agent, hResume)
		b.pub(41, op, hPause)
		b.call(Event{At: ms(10), End: ms(52), OpID: op, Reached: true, Invoked: ms(42), Outcome: OutcomeOK, HeldBy: agent})
		wantNone(t, b)
	})
	t.Run("held by a pause nobody published", func(t *testing.T) {
		b := &hb{}
		c := b.call(Event{At: ms(10), End: ms(52), OpID: op, Reached: true, Invoked: ms(50), Outcome: OutcomeOK, HeldBy: op})
		wantViolation(t, b, LiveDelivery, c)
	})
}

func TestCheckLiveDelivery(t *testing.T) {
	const op = "op-1"
	t.Run("signal published while live is lost", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		p := b.pub(10, op, hPause)
		b.settle(20, "marker-1", 1, 0)
		o := b.observe(30, op, hRunning)
		wantViolation(t, b, LiveDelivery, p, o)
	})
	t.Run("applied", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(10, op, hPause)
		b.settle(20, "marker-1", 1, 0)
		b.observe(30, op, hPaused)
		wantNone(t, b)
	})
	t.Run("stream changed before the marker", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(10, op, hPause)
		b.link(15, true, 2, 0)
		b.settle(20, "marker-1", 2, 0)
		b.observe(30, op, hRunning)
		wantNone(t, b)
	})
	t.Run("lagging stream skipped envelopes", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(10, op, hPause)
		b.settle(20, "marker-1", 1, 7)
		b.observe(30, op, hRunning)
		wantNone(t, b)
	})
	t.Run("published while down", func(t *testing.T) {
		b := &hb{}
		b.link(0, false, 0, 0)
		b.pub(10, op, hPause)
		b.link(15, true, 1, 0)
		b.settle(20, "marker-1", 1, 0)
		b.observe(30, op, hRunning)
		wantNone(t, b)
	})
	t.Run("no settle yet", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(10, op, hPause)
		b.observe(11, op, hRunning)
		wantNone(t, b)
	})
	t.Run("later signals still count after a lost one", func(t *testing.T) {
		b := &hb{}
		b.link(0, false, 0, 0)
		b.pub(5, op, hPause) // lost or not
		b.link(8, true, 1, 0)
		p := b.pub(10, op, hTerminate)
		b.settle(20, "marker-1", 1, 0)
		o := b.observe(30, op, hPaused)
		wantViolation(t, b, LiveDelivery, p, o)
	})
	t.Run("a gateway's resume of a reserved scope settles first", func(t *testing.T) {
		// check's store settles a reserved-scope RESUME for the default
		// window (1 s): paused before it has passed, running after.
		settle := int(controlstore.DefaultResumeSettle / time.Millisecond)
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(10, controlstore.GlobalOpID, hPause)
		b.pub(20, controlstore.GlobalOpID, hResume)
		b.settle(30, "marker-1", 1, 0)
		b.observe(40, controlstore.GlobalOpID, hPaused) // settling
		wantNone(t, b)
		o := b.observe(35+settle+10, controlstore.GlobalOpID, hPaused) // past the window
		wantViolation(t, b, LiveDelivery, o)
	})
	t.Run("phantom state", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.pub(10, op, hPause)
		o := b.observe(30, op, hTerm)
		wantViolation(t, b, LiveDelivery, o)
	})
	t.Run("signals for other stores do not apply", func(t *testing.T) {
		b := &hb{}
		b.link(0, true, 1, 0)
		b.add(Event{Kind: KindPublish, At: ms(10), End: ms(11), OpID: op, Signal: hPause})
		b.settle(20, "marker-1", 1, 0)
		o := b.observe(30, op, hPaused)
		wantViolation(t, b, LiveDelivery, o)
	})
}

func TestCheckBounded(t *testing.T) {
	res := func(b *hb, phase string, g int, heap uint64) int {
		return b.add(Event{Kind: KindResources, Note: phase, Goroutines: g, Heap: heap})
	}
	t.Run("goroutine leak", func(t *testing.T) {
		b := &hb{}
		x := res(b, "baseline", 10, 1<<20)
		y := res(b, "final", 11, 1<<20)
		wantViolation(t, b, Bounded, x, y)
	})
	t.Run("heap growth", func(t *testing.T) {
		b := &hb{}
		x := res(b, "baseline", 10, 1<<20)
		y := res(b, "final", 10, 10<<20)
		wantViolation(t, b, Bounded, x, y)
	})
	t.Run("back to baseline", func(t *testing.T) {
		b := &hb{}
		res(b, "baseline", 10, 1<<20)
		res(b, "final", 9, 8<<20)
		wantNone(t, b)
	})
}

func TestSummarize(t *testing.T) {
	b := &hb{}
	b.pub(0, "a", hTerminate)
	b.applied(3, "a")
	b.applied(4, "a") // a second probe of the same terminate
	b.pub(5, "b", hPause)
	b.pub(20, "b", hResume)
	b.call(Event{At: ms(10), End: ms(30), OpID: "b", Reached: true, Invoked: ms(26), HeldBy: "b"})
	b.call(Event{At: ms(10), End: ms(11), OpID: "a", Outcome: OutcomeTerminated})
	b.call(Event{At: ms(10), End: ms(11), OpID: "a", Reached: true, Outcome: OutcomeTerminated})
	b.call(Event{At: ms(10), End: ms(11), OpID: "c", Reached: true})
	s := Summarize(b.ev)
	if s.Signals != 3 || s.Terminates != 1 || s.TerminatesApplied != 1 || s.Calls != 4 ||
		s.Released != 1 || s.Denied != 1 || s.Cancelled != 1 || s.Allowed != 1 {
		t.Fatalf("summary %+v", s)
	}
	if len(s.TerminateLatency) != 1 || s.TerminateLatency[0] != ms(3) {
		t.Errorf("terminate latency %v", s.TerminateLatency)
	}
	if len(s.ResumeLatency) != 1 || s.ResumeLatency[0] != ms(6) {
		t.Errorf("resume latency %v", s.ResumeLatency)
	}
	ds := []time.Duration{5, 1, 4, 2, 3}
	if p := Percentile(ds, 50); p != 3 {
		t.Errorf("p50 = %v", p)
	}
	if p := Percentile(ds, 99); p != 5 {
		t.Errorf("p99 = %v", p)
	}
}

// TestCheckScales runs the checker over a long legitimate history (a
// soak's worth of segments, with reconnects and lost signals) and wants
// no violation, in bounded time.
func TestCheckScales(t *testing.T) {
	b := &hb{}
	now, stream := 0, 1
	for seg := range 3000 {
		if seg%7 == 0 { // a reconnect: what is published meanwhile may be lost
			b.link(now, false, 0, 0)
			b.pub(now+1, fmt.Sprintf("lost-%d", seg), hPause)
			stream++
			now += 3
		}
		b.link(now, true, stream, 0)
		id := fmt.Sprintf("op-%d", seg)
		b.pub(now+1, id, hPause)
		b.pub(now+2, id, hResume)
		b.pub(now+3, id, hTerminate)
		b.pub(now+4, "agent:"+checkAgent, []controlstore.Signal{hPause, hResume}[seg%2])
		b.settle(now+5, fmt.Sprintf("m-%d", seg), stream, 0)
		b.observe(now+12, id, hTerm)
		want := hPaused
		if seg%2 == 1 {
			want = hRunning
		}
		b.observe(now+12, "agent:"+checkAgent, want)
		if seg%7 == 0 {
			b.observe(now+12, fmt.Sprintf("lost-%d", seg), []controlstore.State{hRunning, hPaused}[seg%2])
		}
		now += 20
	}
	start := time.Now()
	wantNone(t, b)
	t.Logf("%d events checked in %v", len(b.ev), time.Since(start))
	cv := Cover(Config{AgentID: checkAgent}, b.ev)
	// Every segment's 4 signals and its marker are certain, except the
	// lost ones and the markers no later marker confirms on the same
	// stream (before a reconnect, and the last).
	lost, unconfirmed := 0, 1
	for seg := range 3000 {
		if seg%7 == 0 {
			lost++
		}
		if (seg+1)%7 == 0 && seg+1 < 3000 {
			unconfirmed++
		}
	}
	if cv.Applicable != 3000*5+lost || cv.Certain != 3000*5-unconfirmed {
		t.Errorf("coverage %+v, want %d applicable, %d certain", cv, 3000*5+lost, 3000*5-unconfirmed)
	}
}
