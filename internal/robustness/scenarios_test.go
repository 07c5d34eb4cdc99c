package robustness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

const (
	pause     = controlstore.SignalPause
	resume    = controlstore.SignalResume
	terminate = controlstore.SignalTerminate
)

// TestScenarios runs the fault scenarios in parallel, each against its own
// gateway, proxy, subscriber and tool server, each checked on its own
// history; then checks that the whole group left no goroutine or heap
// behind.
func TestScenarios(t *testing.T) {
	group := NewHistory()
	base := resources(group, "baseline")
	t.Run("group", func(t *testing.T) {
		for _, sc := range []struct {
			name string
			run  func(*testing.T)
			slow bool // over 5 s of wall time
		}{
			{"GatewayRestartResetsSequence", scenarioRestart, false},
			{"ResetWhileHeld", scenarioResetWhileHeld, false},
			{"HalfOpenLink", scenarioHalfOpen, true},
			{"AuthRevokedAfterSession", scenarioAuthRevoked, true},
			{"LaggingSubscriber", scenarioLagging, false},
			{"BadInput", scenarioBadInput, false},
			{"MidFrameCuts", scenarioMidFrameCuts, true},
			{"TerminateInFlight", scenarioTerminateInFlight, false},
		} {
			t.Run(sc.name, func(t *testing.T) {
				if sc.slow {
					skipIfShort(t, "waits out keepalive, slow retries or cut links")
				}
				t.Parallel()
				start := time.Now()
				sc.run(t)
				t.Logf("%s: %v", sc.name, time.Since(start).Round(time.Millisecond))
			})
		}
	})
	final := settleResources(group, base, 0)
	for _, v := range Check(Config{AgentID: "group", HeapSlack: 16 << 20}, group.Events()) {
		t.Error(v)
	}
	t.Logf("group resources: goroutines %d -> %d, heap %.1f -> %.1f MiB", base.Goroutines, final.Goroutines,
		float64(base.Heap)/(1<<20), float64(final.Heap)/(1<<20))
}

func logSummary(t *testing.T, c *cluster) {
	s := Summarize(c.h.Events())
	cv := Cover(c.cfg, c.h.Events())
	t.Logf("checked: %d of %d applicable signals certainly delivered, %d store reads, %d calls", cv.Certain, cv.Applicable, cv.Observations, cv.Calls)
	t.Logf("signals=%d terminates=%d applied=%d calls=%d allowed=%d released=%d denied=%d cancelled=%d abandoned=%d unavailable=%d errors=%d terminate p50=%v resume p50=%v",
		s.Signals, s.Terminates, s.TerminatesApplied, s.Calls, s.Allowed, s.Released, s.Denied, s.Cancelled, s.Abandoned,
		s.Unavailable, s.Errors, Percentile(s.TerminateLatency, 50), Percentile(s.ResumeLatency, 50))
}

// expect fails the test unless the call ended with want (and reached the
// invoker iff reached).
func expect(t *testing.T, p *pending, want Outcome, reached bool) Event {
	t.Helper()
	e := p.wait(t)
	if e.Outcome != want || e.Reached != reached {
		t.Errorf("call of %s: outcome %s reached=%v, want %s reached=%v (%s)", e.OpID, e.Outcome, e.Reached, want, reached, e.Note)
	}
	return e
}

// stillHeld asserts that n calls are held in the store and none of ps has
// reached the invoker.
func stillHeld(t *testing.T, c *cluster, n int, ps ...*pending) {
	t.Helper()
	if h := c.held(); h != n {
		t.Errorf("%d calls held, want %d", h, n)
	}
	for _, p := range ps {
		if p.reached() {
			t.Errorf("a held call reached the invoker without a resume")
		}
	}
}

// scenarioRestart: the gateway crashes and comes back as a new process,
// its sequence counter back at 0. The store keeps its pauses and
// terminates across the gap (a disconnect resumes nothing), signals
// published while it is down are lost, and signals after the restart are
// applied although their sequence numbers went backwards.
func scenarioRestart(t *testing.T) {
	c := newCluster(t, options{})
	c.waitLive(waitLong)
	a, b := c.newOp(), c.newOp()
	for i := range 30 {
		c.publish(fmt.Sprintf("noise-%d", i), []controlstore.Signal{pause, resume}[i%2])
	}
	c.publish(a.id, pause)
	c.terminate(b.id)
	c.mustSettle()
	seqBefore := c.sub.Status().LastSequence
	held := c.call(a, 0, waitLong)
	waitUntil(t, waitShort, "the call of the paused op to be held", func() bool { return c.held() == 1 })

	c.fault("gateway stop")
	c.gw.Stop()
	c.waitDown(waitShort)
	c.publish(a.id, resume) // lost: nobody is listening
	c.fault("gateway restart")
	if err := c.gw.Restart(); err != nil {
		t.Fatal(err)
	}
	c.waitLive(waitLong)
	if got := c.gw.Stats().Sequence; got != 0 {
		t.Fatalf("gateway sequence %d after restart, want 0", got)
	}
	d := c.newOp()
	c.publish(d.id, pause)
	c.mustSettle()
	if seq := c.sub.Status().LastSequence; seq >= seqBefore {
		t.Errorf("last sequence %d after restart, want below %d", seq, seqBefore)
	}
	stillHeld(t, c, 1, held)
	expect(t, c.call(b, 0, waitShort), OutcomeTerminated, false)

	c.publish(a.id, resume)
	expect(t, held, OutcomeOK, true)
	c.publish(d.id, resume)
	c.mustSettle()
	c.check()
	logSummary(t, c)
}

// scenarioResetWhileHeld: connections are reset (TCP RST) while calls are
// held by an op pause and by an agent pause. They stay held through the
// reconnect, and only the RESUME published after it releases them. A call
// held by the agent pause ends terminated when its own op is terminated.
func scenarioResetWhileHeld(t *testing.T) {
	c := newCluster(t, options{})
	c.waitLive(waitLong)
	a := c.newOp()
	c.publish(a.id, pause)
	c.mustSettle()
	calls := []*pending{c.call(a, 0, waitLong), c.call(a, 0, waitLong), c.call(a, 0, waitLong)}
	waitUntil(t, waitShort, "3 held calls", func() bool { return c.held() == 3 })

	for range 2 {
		c.fault("proxy reset")
		c.proxy.Reset()
		c.waitDown(waitShort)
		c.waitLive(waitLong)
	}
	c.mustSettle()
	stillHeld(t, c, 3, calls...)
	c.publish(a.id, resume)
	for _, p := range calls {
		expect(t, p, OutcomeOK, true)
	}

	agent := controlstore.AgentOpIDPrefix + c.agent.AgentID
	b, d := c.newOp(), c.newOp()
	c.publish(agent, pause)
	c.mustSettle()
	hb, hd := c.call(b, 0, waitLong), c.call(d, 0, waitLong)
	waitUntil(t, waitShort, "2 calls held by the agent pause", func() bool { return c.held() == 2 })
	c.fault("proxy reset")
	c.proxy.Reset()
	c.waitDown(waitShort)
	c.waitLive(waitLong)
	c.mustSettle()
	stillHeld(t, c, 2, hb, hd)
	c.terminate(b.id)
	expect(t, hb, OutcomeTerminated, false)
	c.publish(agent, resume)
	expect(t, hd, OutcomeOK, true)
	c.mustSettle()
	c.check()
	logSummary(t, c)
}

// Keepalive of the half-open scenario. grpc-go raises any client keepalive
// Time below internal.KeepaliveMinPingTime (10 s, settable only from inside
// grpc) to 10 s, so Time cannot be shorter; Timeout can. A half-open link is
// noticed at most Time + Timeout after the last byte read (a ping goes out
// Time after the last read, and the transport closes Timeout later without
// its ack), so here within 11 s, and within 15 s with stream.GatewayDialOptions.
const (
	halfOpenTime    = 10 * time.Second
	halfOpenTimeout = time.Second
)

// scenarioHalfOpen: the link stops forwarding without closing. The gateway
// sends nothing on an idle stream, so only keepalive pings can reveal it:
// the subscriber must notice within Time + Timeout, reconnect once the link
// heals, and the pause it held meanwhile must still hold.
func scenarioHalfOpen(t *testing.T) {
	dial := append(stream.GatewayDialOptions(), grpc.WithKeepaliveParams(keepalive.ClientParameters{
		Time: halfOpenTime, Timeout: halfOpenTimeout, PermitWithoutStream: true,
	}))
	c := newCluster(t, options{dial: dial})
	c.waitLive(waitLong)
	a, b := c.newOp(), c.newOp()
	c.publish(a.id, pause)
	c.mustSettle()
	held := c.call(a, 0, 3*waitLong)
	waitUntil(t, waitShort, "the call to be held", func() bool { return c.held() == 1 })

	c.fault("blackhole on")
	start := time.Now()
	c.proxy.Blackhole(true)
	c.publish(b.id, pause) // into the black hole
	bound := halfOpenTime + halfOpenTimeout
	waitUntil(t, bound+5*time.Second, "the half-open link to be noticed", func() bool {
		return c.sub.Status().State != stream.Live
	})
	noticed := time.Since(start)
	t.Logf("half-open link noticed after %v (bound Time+Timeout = %v)", noticed.Round(time.Millisecond), bound)
	if noticed > bound+3*time.Second {
		t.Errorf("half-open link noticed after %v, bound %v (+3 s scheduling slack)", noticed, bound)
	}
	if noticed < halfOpenTimeout {
		t.Errorf("link dropped after %v, before any keepalive could time out: not the keepalive", noticed)
	}
	stillHeld(t, c, 1, held)
	c.fault("blackhole off")
	c.proxy.Blackhole(false)
	c.waitLive(waitLong)
	c.mustSettle()
	stillHeld(t, c, 1, held)
	c.publish(a.id, resume)
	expect(t, held, OutcomeOK, true)
	c.publish(b.id, resume)
	c.mustSettle()
	c.check()
	logSummary(t, c)
}

// scenarioAuthRevoked: after a working session the agent's credential is
// revoked and the stream dropped. The subscriber reports Unauthorized,
// retries no faster than MisconfiguredRetryInterval, keeps the store's
// pauses and terminates, and is live again once the credential is back.
func scenarioAuthRevoked(t *testing.T) {
	c := newCluster(t, options{})
	c.waitLive(waitLong)
	a, b := c.newOp(), c.newOp()
	c.publish(a.id, pause)
	c.terminate(b.id)
	c.mustSettle()
	held := c.call(a, 0, 3*waitLong)
	waitUntil(t, waitShort, "the call to be held", func() bool { return c.held() == 1 })

	c.fault("revoke token, drop streams")
	c.gw.RevokeToken(token)
	revoked := time.Now()
	c.gw.DropAll(codes.Unavailable)
	waitUntil(t, waitLong, "Unauthorized", func() bool { return c.sub.Status().State == stream.Unauthorized })
	if st := c.sub.Status(); st.LastCode != codes.Unauthenticated {
		t.Errorf("last code %v, want Unauthenticated", st.LastCode)
	}
	c.publish(a.id, resume) // lost: not subscribed
	expect(t, c.call(b, 0, waitShort), OutcomeTerminated, false)
	stillHeld(t, c, 1, held)

	// Let it be refused at least twice before restoring the credential.
	waitUntil(t, 3*misconfiguredWait, "a second refused subscribe", func() bool {
		n := 0
		for _, ev := range c.subscribeEvents() {
			if ev.Code == codes.Unauthenticated {
				n++
			}
		}
		return n >= 2
	})
	c.fault("register token again")
	c.gw.RegisterToken(token, c.agent)
	c.waitLive(waitLong)
	var refused []time.Time
	for _, ev := range c.subscribeEvents() {
		if ev.Code == codes.Unauthenticated && ev.Time.After(revoked) {
			refused = append(refused, ev.Time)
		}
	}
	for i := 1; i < len(refused); i++ {
		if gap := refused[i].Sub(refused[i-1]); gap < misconfiguredWait-100*time.Millisecond {
			t.Errorf("refused subscribes %v apart, want at least %v", gap, misconfiguredWait)
		}
	}
	t.Logf("refused %d times while unauthorized; live again %v after the credential came back", len(refused),
		time.Since(revoked).Round(time.Millisecond))

	c.mustSettle()
	stillHeld(t, c, 1, held)
	c.publish(a.id, resume)
	expect(t, held, OutcomeOK, true)
	c.mustSettle()
	c.check()
	logSummary(t, c)
}

// scenarioLagging: delivery stalls while more than the ring's capacity is
// published, so the gateway skips the oldest envelopes for this
// subscriber without telling it. Exactly the last 256 arrive; the checker
// accounts for the skips (and, shown the same history without the
// gateway's skip counts, reports the lost signals).
func scenarioLagging(t *testing.T) {
	c := newCluster(t, options{})
	c.waitLive(waitLong)
	c.mustSettle()
	const n = 300
	ids := make([]string, n)
	c.fault("hold delivery")
	c.gw.HoldDelivery()
	for i := range ids {
		ids[i] = fmt.Sprintf("lag-%03d", i)
		c.publish(ids[i], pause)
	}
	c.fault("release delivery")
	c.gw.ReleaseDelivery()
	c.mustSettle()

	var skipped int
	for _, si := range c.gw.Subscribers() {
		if si.Agent == c.agent {
			skipped = int(si.Skipped)
		}
	}
	// The ring holds 256 envelopes: of the n pauses, the first n-256 were
	// skipped, or n+1-256 when the marker was published before the
	// released stream looked at the ring again.
	if skipped != n-256 && skipped != n+1-256 {
		t.Errorf("gateway skipped %d envelopes, want %d or %d", skipped, n-256, n+1-256)
	}
	for i, id := range ids {
		want := controlstore.Paused
		if i < skipped {
			want = controlstore.Running
		}
		if got := c.store.State(id); got != want {
			t.Errorf("%s is %v, want %v", id, got, want)
		}
	}
	if vs := c.check(); len(vs) == 0 {
		// Without the skip counts, the same history must break LiveDelivery.
		ev := c.h.Events()
		for i := range ev {
			ev[i].Skipped = 0
		}
		blind := Check(c.cfg, ev)
		if len(blind) < skipped {
			t.Errorf("checker blind to skips found %d violations, want at least %d", len(blind), skipped)
		} else {
			t.Logf("checker without skip counts reports %d LiveDelivery violations, e.g.\n%s", len(blind), blind[0])
		}
	}
	logSummary(t, c)
}

// decodes reports whether frame decodes as the subscriber decodes it
// (stream/internal/wirecodec: proto3 with unknown fields discarded), and
// into what.
func decodes(frame []byte) (*wirev1.OpControlMessage, bool) {
	var m wirev1.OpControlMessage
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(frame, &m); err != nil {
		return nil, false
	}
	return &m, true
}

// scenarioBadInput: the gateway sends everything a buggy or hostile
// gateway could. Each bad frame is dropped and counted, the stream stays
// up (one stream throughout), valid frames in between are applied, and
// nothing reaches the agent or global scope.
func scenarioBadInput(t *testing.T) {
	c := newCluster(t, options{})
	c.waitLive(waitLong)
	c.mustSettle()
	a := c.newOp()
	expect(t, c.call(a, 0, waitShort), OutcomeOK, true)
	before := c.sub.Status()
	accepted := c.gw.Stats().Accepted

	dropped := 0
	msg := func(id string, sig int32, applies bool) {
		c.publishMessage(&wirev1.OpControlMessage{OpId: id, Signal: wirev1.OpControlSignal(sig), Sequence: 42}, applies)
		if !applies {
			dropped++
		}
	}
	raw := func(frame []byte, what string) {
		if m, ok := decodes(frame); ok && c.applies(m.GetOpId(), controlstore.Signal(m.GetSignal())) {
			c.publishWith(m.GetOpId(), controlstore.Signal(m.GetSignal()), true, func() {
				c.gw.PublishRaw(gatewaytest.ToAgent(c.agent), frame)
			})
			return
		}
		c.publishRaw(frame, what)
		dropped++
	}
	other := controlstore.AgentOpIDPrefix + "did:key:z6MkSomebodyElse"
	msg("op-unknown-7", 7, false)
	msg("op-unknown-neg", -1, false)
	msg("op-unspecified", 0, false)
	msg("", int32(pause), false)
	msg(strings.Repeat("x", 1<<20), int32(terminate), false)
	msg(strings.Repeat("y", controlstore.MaxOpIDLen), int32(pause), true)
	msg(strings.Repeat("z", controlstore.MaxOpIDLen+1), int32(pause), false)
	msg(other, int32(terminate), false)
	msg(controlstore.AgentOpIDPrefix, int32(terminate), false)
	msg("valid-1", int32(pause), true)
	raw([]byte{0x0a, 0x02, 0xff, 0xfe, 0x10, 0x03}, "non-UTF-8 op id")
	raw([]byte{0x0a, 0x04, 'b', 'a', 'd', 0xc0, 0x10, 0x01}, "overlong UTF-8")
	raw([]byte{0x10, 0x80}, "truncated varint")
	raw([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, "huge length")
	raw([]byte{0x00}, "field number 0")
	raw([]byte{0x0b, 0x10, 0x01}, "unterminated group")
	raw([]byte{}, "empty frame")
	raw([]byte{0x08, 0x01, 0x10, 0x01}, "op id with the wrong wire type")
	frame := protowire.AppendTag(nil, 99, protowire.BytesType)
	frame = protowire.AppendBytes(frame, []byte("future field"))
	frame = append(frame, 0x0a, 0x07, 'v', 'a', 'l', 'i', 'd', '-', '2', 0x10, 0x01)
	raw(frame, "unknown field, then a valid pause")
	raw([]byte{0x0a, 0x01, 'q', 0x0a, 0x07, 'v', 'a', 'l', 'i', 'd', '-', '3', 0x10, 0x03}, "repeated op id: last wins")
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 50 {
		g := make([]byte, rng.IntN(64))
		for j := range g {
			g[j] = byte(rng.UintN(256))
		}
		raw(g, fmt.Sprintf("garbage-%d", i))
	}
	msg("valid-4", int32(pause), true)
	c.mustSettle()

	after := c.sub.Status()
	if after.Since != before.Since || c.gw.Stats().Accepted != accepted {
		t.Errorf("the stream was replaced during bad input (since %v -> %v)", before.Since, after.Since)
	}
	if got := after.Dropped - before.Dropped; got != uint64(dropped) {
		t.Errorf("subscriber dropped %d frames, want %d", got, dropped)
	}
	for _, id := range []string{"valid-1", "valid-2", "valid-4", strings.Repeat("y", controlstore.MaxOpIDLen)} {
		if st := c.store.State(id); st != controlstore.Paused {
			t.Errorf("%.20s is %v, want paused", id, st)
		}
	}
	if st := c.store.State("valid-3"); st != controlstore.Terminated {
		t.Errorf("valid-3 is %v, want terminated", st)
	}
	expect(t, c.call(a, 0, waitShort), OutcomeOK, true)
	c.check()
	t.Logf("%d bad frames dropped, stream kept", dropped)
}

// scenarioMidFrameCuts: connections are cut after a random number of
// bytes, which lands inside frames (op ids of 300 bytes make frames long).
// A cut frame is never decoded as a signal: nothing is dropped as
// malformed, nothing half-applied, and the stream comes back.
func scenarioMidFrameCuts(t *testing.T) {
	c := newCluster(t, options{})
	c.waitLive(waitLong)
	c.mustSettle()
	const cycles = 5 // the soak cuts hundreds more
	rng := rand.New(rand.NewPCG(11, uint64(time.Now().UnixNano())))
	dropped := c.sub.Status().Dropped
	for i := range cycles {
		n := 1 + rng.Int64N(600)
		c.fault("cut after %d bytes", n)
		c.proxy.CutAfter(n)
		for j := range 4 {
			c.publish(fmt.Sprintf("cut-%d-%d-%s", i, j, strings.Repeat("p", 300)), pause)
		}
		c.waitDown(waitShort)
		c.proxy.CutAfter(0)
		c.waitLive(waitLong)
		c.mustSettle()
	}
	if got := c.sub.Status().Dropped; got != dropped {
		t.Errorf("%d frames dropped as malformed after mid-frame cuts, want none", got-dropped)
	}
	c.check()
	logSummary(t, c)
}

// scenarioTerminateInFlight: terminates of an op, of the agent and of every
// agent cancel calls in flight and refuse later ones, including a call held
// by a global pause whose op is then terminated, with resets around.
func scenarioTerminateInFlight(t *testing.T) {
	c := newCluster(t, options{})
	c.waitLive(waitLong)
	w1, w2, h, g := c.newOp(), c.newOp(), c.newOp(), c.newOp()
	busy := []*pending{c.call(w1, time.Minute, waitLong), c.call(w2, time.Minute, waitLong)}
	waitUntil(t, waitShort, "the work calls to run on the tool server", func() bool {
		return busy[0].reached() && busy[1].reached() && c.tools.Entered(toolserver.WorkMethod) == 2
	})
	c.terminate(w1.id)
	expect(t, busy[0], OutcomeTerminated, true)
	expect(t, c.call(w1, 0, waitShort), OutcomeTerminated, false)

	c.publish(h.id, pause)
	c.mustSettle()
	hh := c.call(h, 0, waitLong)
	waitUntil(t, waitShort, "the call to be held", func() bool { return c.held() == 1 })
	c.terminate(h.id)
	expect(t, hh, OutcomeTerminated, false)

	// A server stream in flight (it has ticked: the server runs it) ends
	// with the terminated error on both sides.
	sOp := c.newOp()
	at := c.h.Now()
	ps, err := c.client.Progress(sOp.ctx, 5*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Recv(); err != nil {
		t.Fatal(err)
	}
	reached := c.h.Now()
	serverSaw := countCancelled(c)
	c.terminate(sOp.id)
	for err == nil {
		_, err = ps.Recv()
	}
	e := Event{Kind: KindCall, At: at, End: c.h.Now(), OpID: sOp.id, Reached: true, Invoked: reached, Dur: time.Hour, Note: "progress"}
	var te *controlstore.TerminatedError
	if errors.As(err, &te) {
		e.Outcome, e.TerminatedBy = OutcomeTerminated, te.OpID
	} else {
		e.Outcome = OutcomeError
		t.Errorf("stream in flight ended with %v, want the terminated error", err)
	}
	c.h.Add(e)
	if !poll(waitShort, func() bool { return countCancelled(c) > serverSaw }) {
		t.Error("the tool server did not see the terminated stream cancelled")
	}

	c.publishAll(pause)
	c.mustSettle()
	hg := c.call(g, 0, waitLong)
	waitUntil(t, waitShort, "the call to be held by the global pause", func() bool { return c.held() == 1 })
	c.fault("proxy reset")
	c.proxy.Reset()
	c.waitDown(waitShort)
	c.waitLive(waitLong)
	c.mustSettle()
	c.terminate(g.id)
	expect(t, hg, OutcomeTerminated, false)
	c.publishAll(resume)
	c.mustSettle()

	agent := controlstore.AgentOpIDPrefix + c.agent.AgentID
	c.terminate(agent)
	expect(t, busy[1], OutcomeTerminated, true)
	expect(t, c.call(c.newOp(), 0, waitShort), OutcomeTerminated, false)
	c.publish(agent, resume) // sticky: changes nothing
	c.mustSettle()
	expect(t, c.call(c.newOp(), 0, waitShort), OutcomeTerminated, false)
	// Both work calls' cancellation reached the tool server.
	if !poll(waitShort, func() bool {
		n := 0
		for _, e := range c.tools.Ended() {
			if e.Method == toolserver.WorkMethod && e.Err != nil {
				n++
			}
		}
		return n == 2
	}) {
		t.Errorf("the tool server did not see both work calls cancelled: %v", c.tools.Ended())
	}
	c.check()
	logSummary(t, c)
}

// countCancelled counts the calls the tool server saw end by cancellation.
func countCancelled(c *cluster) int {
	n := 0
	for _, e := range c.tools.Events() {
		if e.Err != nil {
			n++
		}
	}
	return n
}
