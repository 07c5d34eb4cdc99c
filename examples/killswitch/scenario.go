package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/toolserver"
)

// Pacing at -speed 1: how long the operator lets things happen before acting.
// No check depends on these values.
const (
	holdFor         = 400 * time.Millisecond // 1/A stays paused
	runFor          = 300 * time.Millisecond // a call runs before it is killed
	companionWork   = time.Second            // Work of an op that must not be disturbed
	tickEvery       = 100 * time.Millisecond // Progress interval
	ticksBeforeKill = 3
)

// longWork is the Work a terminate must cut short. It is not scaled: were
// the kill to fail, the call would end with OK long after the step failed.
const longWork = 10 * time.Second

// scenario is the scripted operator and the agents' calls.
type scenario struct {
	w *world
	// Ops of agent-1: A is paused and resumed, B terminated mid-call, C
	// terminated mid-stream, D keeps running until its agent is halted.
	// E is agent-2's op, which keeps running until the global halt.
	a, b, c, d, e *op
	// Calls of each agent made outside any span.
	none1, none2 *op
}

type step struct {
	title string
	run   func(ctx context.Context) error
}

func newScenario(w *world) *scenario {
	a1, a2 := w.agents[0], w.agents[1]
	return &scenario{
		w:     w,
		a:     w.newOp(a1, "A", "summarise-report"),
		b:     w.newOp(a1, "B", "crawl-site"),
		c:     w.newOp(a1, "C", "watch-build"),
		d:     w.newOp(a1, "D", "index-docs"),
		e:     w.newOp(a2, "E", "plan-trip"),
		none1: w.noSpan(a1),
		none2: w.noSpan(a2),
	}
}

func (s *scenario) steps() []step {
	return []step{
		{"business as usual: every op's calls are allowed", s.baseline},
		{"pause op 1/A: its next call is held, other ops run; resume releases it", s.pauseResume},
		{"terminate op 1/B mid-call: its running Work call dies at once, 1/D's runs on", s.terminateMidCall},
		{"terminate is sticky: a RESUME does not bring 1/B back", s.sticky},
		{"terminate op 1/C mid-stream: its Progress stream is cut", s.terminateMidStream},
		{"agent-2's link to the gateway is cut; the operator pauses agent-2 on the bus; the link comes back", s.durable},
		{"halt agent-1 (agent:{agent_id}): all its calls stop, span or no span; agent-2 runs on", s.haltAgent},
		{"global halt (*): every agent stops", s.haltAll},
	}
}

// run plays every step, each within the step timeout, and stops at the first
// that does not behave.
func (s *scenario) run(ctx context.Context) error {
	w := s.w
	w.tl.info("ops (one OpenTelemetry span each; op id = trace_id:span_id):")
	for _, o := range []*op{s.a, s.b, s.c, s.d, s.e} {
		w.tl.info("  %s  %-17s %s", o.label, o.name, o.id)
	}
	w.tl.info("  1/-, 2/-  calls made outside any span (no op)")
	steps := s.steps()
	w.tl.begin()
	for i, st := range steps {
		w.tl.step(i+1, st.title)
		sctx, cancel := context.WithTimeout(ctx, w.cfg.stepTimeout)
		err := st.run(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("step %d (%s): %w", i+1, st.title, err)
		}
	}
	s.summary()
	w.tl.printf("\nPASS: all %d steps behaved as expected (%.1fs)\n", len(steps), time.Since(w.tl.start).Seconds())
	return nil
}

// expect makes a call of o and checks its outcome.
func (s *scenario) expect(ctx context.Context, o *op, name string, fn callFunc, e expectation) error {
	out, err := s.w.call(ctx, o, name, fn)
	if err != nil {
		return err
	}
	return out.check(o, name, e)
}

// finish waits for a background call and checks its outcome.
func finish(ctx context.Context, p *pending, e expectation) (outcome, error) {
	out, err := p.wait(ctx)
	if err != nil {
		return out, err
	}
	return out, out.check(p.o, p.name, e)
}

func (s *scenario) baseline(ctx context.Context) error {
	for _, o := range []*op{s.a, s.b, s.d, s.none1, s.e, s.none2} {
		if err := s.expect(ctx, o, "Echo", echo, expectAllowed()); err != nil {
			return err
		}
	}
	return nil
}

func (s *scenario) pauseResume(ctx context.Context) error {
	w := s.w
	if _, err := w.publish(ctx, s.a, controlstore.SignalPause); err != nil {
		return err
	}
	if st := s.a.agent.store.State(s.a.id); st != controlstore.Paused {
		return fmt.Errorf("after PAUSE, agent-1's store has 1/A %v", st)
	}
	held := w.start(s.a, "Echo", echo)
	if err := w.waitHeld(ctx, held); err != nil {
		return err
	}
	w.tl.note("1/A Echo is held in the interceptor: the tool server has not seen it")
	// A pause is per op: the agent's other ops, and its calls outside any
	// span, carry on.
	if err := s.expect(ctx, s.d, "Echo", echo, expectAllowed()); err != nil {
		return err
	}
	if err := s.expect(ctx, s.none1, "Echo", echo, expectAllowed()); err != nil {
		return err
	}
	if err := w.pace(ctx, holdFor); err != nil {
		return err
	}
	if held.returned() {
		return fmt.Errorf("1/A Echo returned before the RESUME")
	}
	if _, err := w.publish(ctx, s.a, controlstore.SignalResume); err != nil {
		return err
	}
	out, err := finish(ctx, held, expectHeld())
	if err != nil {
		return err
	}
	w.tl.note("released by the RESUME after %s; the hold was recorded on 1/A's span", ms(out.hold))
	return nil
}

func (s *scenario) terminateMidCall(ctx context.Context) error {
	w := s.w
	running := w.tools.Entered(toolserver.WorkMethod)
	killed := w.start(s.b, fmt.Sprintf("Work(%v)", longWork), work(longWork))
	companion := w.start(s.d, fmt.Sprintf("Work(%v)", w.paced(companionWork)), work(w.paced(companionWork)))
	if err := w.waitRunning(ctx, toolserver.WorkMethod, running, 2, killed, companion); err != nil {
		return err
	}
	w.tl.note("1/B and 1/D Work calls are running on the tool server")
	if err := w.pace(ctx, runFor); err != nil {
		return err
	}
	mark := len(w.tools.Ended())
	published, err := w.publish(ctx, s.b, controlstore.SignalTerminate)
	if err != nil {
		return err
	}
	out, err := finish(ctx, killed, expectCancelled(controlstore.ScopeOp, s.b.id))
	if err != nil {
		return err
	}
	se, err := w.serverSawCancel(ctx, mark, toolserver.WorkMethod)
	if err != nil {
		return err
	}
	w.tl.note("1/B Work returned %s after the TERMINATE was published (it asked for %v of work)", ms(out.end.Sub(published)), longWork)
	w.tl.note("tool server: its Work call ended %v: the cancellation reached the server", status.Code(se.Err))
	_, err = finish(ctx, companion, expectAllowed())
	return err
}

func (s *scenario) sticky(ctx context.Context) error {
	w := s.w
	if err := s.expect(ctx, s.b, "Echo", echo, expectDenied(controlstore.ScopeOp, s.b.id)); err != nil {
		return err
	}
	if _, err := w.publish(ctx, s.b, controlstore.SignalResume); err != nil {
		return err
	}
	if st := s.b.agent.store.State(s.b.id); st != controlstore.Terminated {
		return fmt.Errorf("after RESUME, agent-1's store has 1/B %v, want terminated (sticky)", st)
	}
	if err := s.expect(ctx, s.b, "Echo", echo, expectDenied(controlstore.ScopeOp, s.b.id)); err != nil {
		return err
	}
	w.tl.note("only a new process clears a terminate")
	return nil
}

func (s *scenario) terminateMidStream(ctx context.Context) error {
	w := s.w
	ticks := make(chan int64, 1024) // never fills: the stream is cut after a few ticks
	stream := w.start(s.c, "Progress", func(ctx context.Context, c *toolserver.Client) error {
		st, err := c.Progress(ctx, w.paced(tickEvery))
		if err != nil {
			return err
		}
		for {
			n, err := st.Recv()
			if err != nil {
				return err
			}
			select {
			case ticks <- n:
			default:
			}
		}
	})
	for got := 0; got < ticksBeforeKill; got++ {
		select {
		case <-ticks:
		case <-stream.done:
			_, _ = stream.wait(ctx)
			return fmt.Errorf("1/C Progress ended after %d ticks, before the TERMINATE", got)
		case <-ctx.Done():
			return fmt.Errorf("1/C Progress: %d of %d ticks received: %w", got, ticksBeforeKill, ctx.Err())
		}
	}
	w.tl.note("1/C Progress is streaming: %d ticks received", ticksBeforeKill)
	mark, events := len(w.tools.Ended()), len(w.tools.Events())
	if _, err := w.publish(ctx, s.c, controlstore.SignalTerminate); err != nil {
		return err
	}
	if _, err := finish(ctx, stream, expectCancelled(controlstore.ScopeOp, s.c.id)); err != nil {
		return err
	}
	se, err := w.serverSawCancel(ctx, mark, toolserver.ProgressMethod)
	if err != nil {
		return err
	}
	// Ticks were received, so the handler was past reading its request
	// and recorded how many it sent.
	ev, err := w.toolEvent(ctx, events, toolserver.ProgressMethod)
	if err != nil {
		return err
	}
	w.tl.note("tool server: its Progress stream ended %v after sending %d ticks", status.Code(se.Err), ev.Ticks)
	return nil
}

// durable: the gateway replays nothing, so a halt published while an
// agent's stream is down is lost for the stream; the bus source resumes
// where it left off and applies it anyway.
func (s *scenario) durable(ctx context.Context) error {
	w := s.w
	a2 := s.e.agent
	target := controlstore.AgentOpIDPrefix + a2.id.AgentID
	w.cut(a2)
	cut := time.Now()
	if err := poll(ctx, func() bool { return !sourceLive(a2, "stream") && !w.witness.sub.Connected() }); err != nil {
		return fmt.Errorf("agent-2's stream still live after its link was cut: %s", describe(a2.k.Status()))
	}
	w.tl.note("agent-2's link to the gateway is cut: its gateway stream is down after %s (%s)", ms(time.Since(cut)), describe(a2.k.Status()))
	published, err := w.haltAgent(ctx, a2, controlstore.SignalPause)
	if err != nil {
		return err
	}
	appliedIn := time.Since(published)
	if st := a2.store.State(target); st != controlstore.Paused {
		return fmt.Errorf("agent-2's store has %s %v, want paused", target, st)
	}
	held := w.start(s.e, "Echo", echo)
	if err := w.waitHeld(ctx, held); err != nil {
		return err
	}
	w.tl.note("applied from JetStream while the stream was down (within %s of the publish): 2/E Echo is held", ms(appliedIn))
	if st := w.witness.store.State(target); st != controlstore.Running {
		return fmt.Errorf("the witness (gateway stream alone) has %s %v: the stream delivered it while cut?", target, st)
	}
	w.tl.note("witness (gateway stream alone): %s is running: the stream missed the pause", target)

	w.restore(a2)
	restored := time.Now()
	if err := poll(ctx, func() bool { return sourceLive(a2, "stream") && w.witness.sub.Connected() }); err != nil {
		return fmt.Errorf("agent-2's stream not live again after its link came back: %s", describe(a2.k.Status()))
	}
	w.tl.note("link back: agent-2's gateway stream is live again after %s", ms(time.Since(restored)))
	if st := w.witness.store.State(target); st != controlstore.Running {
		return fmt.Errorf("the witness has %s %v after the link came back, want running: the gateway replays nothing", target, st)
	}
	w.tl.note("the gateway replayed nothing: with the stream alone the pause would have been lost for good")
	if held.returned() {
		return fmt.Errorf("2/E Echo returned before the RESUME")
	}
	if _, err := w.haltAgent(ctx, a2, controlstore.SignalResume); err != nil {
		return err
	}
	out, err := finish(ctx, held, expectHeld())
	if err != nil {
		return err
	}
	w.tl.note("released by the RESUME on the bus after %s held", ms(out.hold))
	return nil
}

func (s *scenario) haltAgent(ctx context.Context) error {
	w := s.w
	agent1 := s.d.agent
	target := controlstore.AgentOpIDPrefix + agent1.id.AgentID
	running := w.tools.Entered(toolserver.WorkMethod)
	killed := w.start(s.d, fmt.Sprintf("Work(%v)", longWork), work(longWork))
	other := w.start(s.e, fmt.Sprintf("Work(%v)", w.paced(companionWork)), work(w.paced(companionWork)))
	if err := w.waitRunning(ctx, toolserver.WorkMethod, running, 2, killed, other); err != nil {
		return err
	}
	w.tl.note("1/D and 2/E Work calls are running")
	if err := w.pace(ctx, runFor); err != nil {
		return err
	}
	mark := len(w.tools.Ended())
	if _, err := w.haltAgent(ctx, agent1, controlstore.SignalTerminate); err != nil {
		return err
	}
	if _, err := finish(ctx, killed, expectCancelled(controlstore.ScopeAgent, target)); err != nil {
		return err
	}
	if _, err := w.serverSawCancel(ctx, mark, toolserver.WorkMethod); err != nil {
		return err
	}
	w.tl.note("tool server: 1/D's Work call ended Canceled")
	for _, o := range []*op{s.d, s.none1} {
		if err := s.expect(ctx, o, "Echo", echo, expectDenied(controlstore.ScopeAgent, target)); err != nil {
			return err
		}
	}
	w.tl.note("agent-1 is stopped, its calls outside any span too; agent-2 is not concerned:")
	if err := s.expect(ctx, s.e, "Echo", echo, expectAllowed()); err != nil {
		return err
	}
	_, err := finish(ctx, other, expectAllowed())
	return err
}

func (s *scenario) haltAll(ctx context.Context) error {
	w := s.w
	running := w.tools.Entered(toolserver.WorkMethod)
	killed := w.start(s.e, fmt.Sprintf("Work(%v)", longWork), work(longWork))
	if err := w.waitRunning(ctx, toolserver.WorkMethod, running, 1, killed); err != nil {
		return err
	}
	if err := w.pace(ctx, runFor); err != nil {
		return err
	}
	mark := len(w.tools.Ended())
	if _, err := w.haltAll(ctx, controlstore.SignalTerminate); err != nil {
		return err
	}
	global := controlstore.GlobalOpID
	if _, err := finish(ctx, killed, expectCancelled(controlstore.ScopeGlobal, global)); err != nil {
		return err
	}
	if _, err := w.serverSawCancel(ctx, mark, toolserver.WorkMethod); err != nil {
		return err
	}
	w.tl.note("tool server: 2/E's Work call ended Canceled")
	// The global scope is the most severe, so it is what agent-1's calls
	// now report too.
	for _, o := range []*op{s.e, s.none2, s.d} {
		if err := s.expect(ctx, o, "Echo", echo, expectDenied(controlstore.ScopeGlobal, global)); err != nil {
			return err
		}
	}
	w.tl.note("every agent is stopped until its process restarts")
	return nil
}

// summary prints, with -v, what the agents, the gateway and the spans
// recorded.
func (s *scenario) summary() {
	w := s.w
	if !w.tl.verbose {
		return
	}
	w.tl.printf("\n")
	for _, a := range w.agents {
		st := a.store.Stats()
		w.tl.debugf("%s store: %d signals applied, %d gateway copies superseded by the bus, %d entries (%d paused, %d terminated); sources: %s",
			a.name, st.Applied, st.Superseded, st.Entries, st.Paused, st.Terminated, describe(a.k.Status()))
	}
	bs := w.bridge.Stats()
	w.tl.debugf("gateway bridge: %+v", bs)
	gs := w.gw.Stats()
	w.tl.debugf("gateway: %d published, %d subscribers, %d subscribes accepted", gs.Published, gs.Subscribers, gs.Accepted)
	for _, o := range []*op{s.a, s.b, s.c, s.d, s.e} {
		counts := map[string]int{}
		for _, ev := range spanEvents(o.span) {
			counts[ev.Name]++
		}
		names := make([]string, 0, len(counts))
		for n, c := range counts {
			names = append(names, fmt.Sprintf("%s×%d", n, c))
		}
		sort.Strings(names)
		w.tl.debugf("span %s (%s) events: %s", o.name, o.label, strings.Join(names, ", "))
	}
}
