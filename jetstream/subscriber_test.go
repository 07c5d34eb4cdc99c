package jetstream_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
)

func TestNewSubscriberChecks(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv.URL())
	store := newStore(t)
	mustPanic(t, "nil conn", func() { _, _ = jetstream.NewSubscriber(nil, store) })
	mustPanic(t, "nil store", func() { _, _ = jetstream.NewSubscriber(nc, nil) })
	for name, opt := range map[string]jetstream.Option{
		"fail closed < 0": jetstream.WithFailClosedAfter(-time.Second),
		"nil backoff":     jetstream.WithBackoff(nil),
		"heartbeat low":   jetstream.WithHeartbeat(time.Millisecond),
		"heartbeat high":  jetstream.WithHeartbeat(time.Hour),
		"api timeout":     jetstream.WithAPITimeout(0),
		"checkpoint":      jetstream.WithCheckpointInterval(time.Millisecond),
	} {
		if _, err := jetstream.NewSubscriber(nc, store, opt); err == nil || !strings.Contains(err.Error(), "jetstream: With") {
			t.Errorf("%s: NewSubscriber error %v, want one naming the option", name, err)
		}
	}
	sub, err := jetstream.NewSubscriber(nc, store, nil, jetstream.WithLogger(nil), jetstream.WithMeterProvider(nil))
	if err != nil {
		t.Fatalf("nil options: %v", err)
	}
	if st := sub.Status(); st.State != jetstream.Idle {
		t.Errorf("before Run: state %v, want idle", st.State)
	}
	a, g := sub.Subjects()
	if a != "assembly.opcontrol.acme_20corp_2Eeu.did_3Akey_3Az6MkVictim" || g != jetstream.GlobalSubject {
		t.Errorf("subjects %q, %q", a, g)
	}
}

func mustPanic(t *testing.T, name string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s: no panic", name)
		}
	}()
	f()
}

// Run's life: connecting, live, Ready, ErrRunning, back to idle, and again.
func TestRunLifecycle(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv.URL())
	store := newStore(t)
	l := &testutil.Logs{}
	sub := newSubscriber(t, nc, store, jetstream.WithLogger(slog.New(l)))
	r := start(t, sub)
	waitReady(t, sub)
	// Ready closes before the line is written.
	testutil.Eventually(t, waitShort, func() bool { return l.Count(slog.LevelInfo, "op-control bus live") >= 1 }, "no live log")
	if n := l.Count(slog.LevelInfo, "op-control bus live"); n != 1 {
		t.Errorf("%d live logs, want 1", n)
	}
	st := sub.Status()
	if st.State != jetstream.Live || !st.Agent.CaughtUp || !st.Global.CaughtUp || !st.Agent.PositionKnown {
		t.Errorf("status when ready: %+v", st)
	}
	ss := store.SyncStatus()
	if len(ss.Sources) != 1 || ss.Sources[0].Name != jetstream.SourceName || ss.Sources[0].Kind != controlstore.SourceBus || !ss.Sources[0].Live {
		t.Errorf("store's sources: %+v", ss.Sources)
	}
	if err := sub.Run(context.Background()); !errors.Is(err, jetstream.ErrRunning) {
		t.Errorf("second Run: %v, want ErrRunning", err)
	}
	r.stop(t)
	if n := l.Count(slog.LevelWarn, ""); n != 0 {
		t.Errorf("%d warnings for a clean start and stop", n)
	}
	if st := sub.Status(); st.State != jetstream.Idle {
		t.Errorf("after Run: state %v, want idle", st.State)
	}
	if ss := store.SyncStatus(); ss.Sources[0].Running || ss.Sources[0].Live {
		t.Errorf("after Run the source is %+v", ss.Sources[0])
	}

	// A second Run resumes from the positions: a halt published between
	// the two is applied.
	pub := publisher(t, srv)
	if _, err := pub.HaltAgent(ctxTimeout(t), agent, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	start(t, sub)
	testutil.Eventually(t, waitLong, func() bool { return sub.Status().State == jetstream.Live }, "live again")
	testutil.Eventually(t, waitShort, func() bool { return store.State(controlstore.AgentOpIDPrefix+agent.AgentID) == controlstore.Paused }, "paused")
}

func TestRunOnClosedConn(t *testing.T) {
	srv := startServer(t)
	nc := connect(t, srv.URL())
	sub := newSubscriber(t, nc, newStore(t))
	nc.Close()
	if err := sub.Run(context.Background()); !errors.Is(err, jetstream.ErrConnClosed) {
		t.Fatalf("Run on a closed connection: %v, want ErrConnClosed", err)
	}
}

// Halts apply as the gateway would forward them.
func TestAppliesHalts(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	store := newStore(t)
	sub := newSubscriber(t, connect(t, srv.URL()), store)
	rec := recordApplied(sub)
	start(t, sub)
	waitReady(t, sub)
	ctx := ctxTimeout(t)
	agentOp := controlstore.AgentOpIDPrefix + agent.AgentID
	perOp := "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"
	perOpEnv := jetstream.AgentHalt(agent, controlstore.SignalTerminate)
	perOpEnv.OpID = perOp
	oddGlobal := jetstream.GlobalHalt(controlstore.SignalPause)
	oddGlobal.OpID = "whatever"

	steps := []struct {
		publish func() (uint64, error)
		check   func() bool
		what    string
	}{
		{func() (uint64, error) { return pub.HaltAgent(ctx, agent, controlstore.SignalPause) }, func() bool { return store.State(agentOp) == controlstore.Paused }, "agent paused"},
		{func() (uint64, error) { return pub.HaltAgent(ctx, agent, controlstore.SignalResume) }, func() bool { return store.State(agentOp) == controlstore.Running }, "agent resumed"},
		{func() (uint64, error) { return pub.Publish(ctx, jetstream.GlobalSubject, oddGlobal) }, func() bool { return store.State(controlstore.GlobalOpID) == controlstore.Paused }, "global paused whatever its op_id"},
		{func() (uint64, error) { return pub.HaltAll(ctx, controlstore.SignalResume) }, func() bool { return store.State(controlstore.GlobalOpID) == controlstore.Running }, "global resumed"},
		{func() (uint64, error) { return pub.Publish(ctx, jetstream.Subject(agent), perOpEnv) }, func() bool { return store.State(perOp) == controlstore.Terminated }, "op id passed verbatim"},
		{func() (uint64, error) { return pub.HaltAgent(ctx, agent, controlstore.SignalTerminate) }, func() bool { return store.State(agentOp) == controlstore.Terminated }, "agent terminated"},
	}
	var seqs []uint64
	for _, s := range steps {
		seq, err := s.publish()
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
		testutil.Eventually(t, waitShort, s.check, "%s", s.what)
	}
	got := rec.snapshot()
	if len(got) != len(seqs) {
		t.Fatalf("applied %d halts, want %d: %+v", len(got), len(seqs), got)
	}
	for i, h := range got {
		if h.seq != seqs[i] {
			t.Errorf("halt %d applied at sequence %d, published at %d", i, h.seq, seqs[i])
		}
	}
	st := sub.Status()
	if st.Applied != uint64(len(seqs)) || len(st.Dropped) != 0 {
		t.Errorf("status: applied %d dropped %v", st.Applied, st.Dropped)
	}
	if st.Agent.LastSequence != seqs[5] || st.Global.LastSequence != seqs[3] {
		t.Errorf("last sequences: agent %d global %d, want %d and %d", st.Agent.LastSequence, st.Global.LastSequence, seqs[5], seqs[3])
	}
}

// Anything the gateway would not forward is dropped and counted by
// reason, logged at a bounded rate, and the consumers stay up.
func TestDrops(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	store := newStore(t)
	l := &testutil.Logs{}
	sub := newSubscriber(t, connect(t, srv.URL()), store, jetstream.WithLogger(slog.New(l)))
	rec := recordApplied(sub)
	start(t, sub)
	waitReady(t, sub)
	ctx := ctxTimeout(t)
	subj := jetstream.Subject(agent)
	otherTeam := jetstream.AgentHalt(controlstore.Agent{OrgID: agent.OrgID, TeamID: "other-team", AgentID: agent.AgentID}, controlstore.SignalTerminate)
	withSig := func(sig int32) jetstream.Envelope {
		e := jetstream.AgentHalt(agent, controlstore.SignalPause)
		e.Signal = sig
		return e
	}
	foreignOp := jetstream.AgentHalt(agent, controlstore.SignalTerminate)
	foreignOp.OpID = controlstore.AgentOpIDPrefix + other.AgentID
	emptyOp := jetstream.AgentHalt(agent, controlstore.SignalTerminate)
	emptyOp.OpID = ""

	for _, m := range []struct {
		subject string
		payload []byte
	}{
		{subj, []byte("not json")},
		{subj, []byte(`{"org_id":"x"}`)},
		{subj, []byte(strings.Replace(string(jetstream.AgentHalt(agent, controlstore.SignalTerminate).Encode()), `"org_id"`, `"ORG_ID"`, 1))},
		{subj, jetstream.GlobalHalt(controlstore.SignalTerminate).Encode()},                          // global on an agent subject
		{jetstream.GlobalSubject, jetstream.AgentHalt(agent, controlstore.SignalTerminate).Encode()}, // agent envelope on the global subject
		{subj, otherTeam.Encode()},
		{subj, withSig(0).Encode()},
		{subj, withSig(7).Encode()},
		{subj, foreignOp.Encode()},
		{subj, emptyOp.Encode()},
	} {
		if _, err := pub.PublishRaw(ctx, m.subject, m.payload); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]uint64{
		string(jetstream.DropMalformed):         3,
		string(jetstream.DropSubjectMismatch):   2,
		string(jetstream.DropTripleMismatch):    1,
		string(jetstream.DropUnspecifiedSignal): 1,
		string(jetstream.DropUnknownSignal):     1,
		string(controlstore.ReasonForeignAgent): 1,
		string(controlstore.ReasonEmptyOpID):    1,
	}
	testutil.Eventually(t, waitShort, func() bool { return equalCounts(sub.Status().Dropped, want) }, "drops, want %v", want)

	// Still consuming.
	if _, err := pub.HaltAgent(ctx, agent, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return rec.len() == 1 }, "the valid halt after the drops")
	if s := store.State(controlstore.AgentOpIDPrefix + agent.AgentID); s != controlstore.Paused {
		t.Errorf("agent %v, want paused: no dropped terminate may apply", s)
	}
	if st := sub.Status(); st.State != jetstream.Live {
		t.Errorf("state %v after drops", st.State)
	}

	// Bounded logging: many more malformed messages, one more line at most
	// (the first of each reason was logged; the rest fall in LogInterval).
	for range 20 {
		if _, err := pub.PublishRaw(ctx, subj, []byte("{")); err != nil {
			t.Fatal(err)
		}
	}
	want[string(jetstream.DropMalformed)] += 20
	testutil.Eventually(t, waitShort, func() bool { return equalCounts(sub.Status().Dropped, want) }, "drops")
	if n := l.Count(slog.LevelWarn, "dropped an op-control bus message"); n != len(want) {
		t.Errorf("%d drop log lines for %d reasons, want one each", n, len(want))
	}
}

func equalCounts(got, want map[string]uint64) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// By default, halts retained from before Run began are not applied;
// WithReplayRetained applies them.
func TestRetainedBeforeRun(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	ctx := ctxTimeout(t)
	if _, err := pub.HaltAll(ctx, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	seq, err := pub.HaltAgent(ctx, agent, controlstore.SignalPause)
	if err != nil {
		t.Fatal(err)
	}
	waitServerClockPast(t, pub, seq)

	plain := newStore(t)
	subPlain := newSubscriber(t, connect(t, srv.URL()), plain)
	recPlain := recordApplied(subPlain)
	start(t, subPlain)
	waitReady(t, subPlain)

	replay := newStore(t)
	subReplay := newSubscriber(t, connect(t, srv.URL()), replay, jetstream.WithReplayRetained())
	start(t, subReplay)
	waitReady(t, subReplay)

	if got := recPlain.len(); got != 0 || plain.State(controlstore.GlobalOpID) != controlstore.Running {
		t.Errorf("default: applied %d retained halts, global %v; want none", got, plain.State(controlstore.GlobalOpID))
	}
	if replay.State(controlstore.GlobalOpID) != controlstore.Terminated ||
		replay.State(controlstore.AgentOpIDPrefix+agent.AgentID) != controlstore.Paused {
		t.Errorf("replay: global %v agent %v; want terminated and paused",
			replay.State(controlstore.GlobalOpID), replay.State(controlstore.AgentOpIDPrefix+agent.AgentID))
	}
	// Both know their positions: nothing more is pending for either.
	if p, r := subPlain.Status(), subReplay.Status(); p.Agent.Position != r.Agent.Position || !p.Agent.PositionKnown {
		t.Errorf("positions: default %+v, replay %+v", p.Agent, r.Agent)
	}

	// What is published now reaches both.
	if _, err := pub.HaltAgent(ctx, agent, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return plain.State(controlstore.AgentOpIDPrefix+agent.AgentID) == controlstore.Terminated }, "terminate applied")
}

// WithFailClosedAfter(0): the store fails closed whenever the bus is not
// live, and not while it is.
func TestFailClosedAfter(t *testing.T) {
	srv := startServer(t)
	l := newLink(t, srv)
	l.cut()
	store := newStore(t)
	sub := newSubscriber(t, connect(t, l.url()), store, jetstream.WithFailClosedAfter(0))
	start(t, sub)
	var op controlstore.Op
	testutil.Eventually(t, waitShort, func() bool { return errors.Is(store.Check(op), controlstore.ErrUnavailable) }, "failing closed before live")
	l.restore()
	waitReady(t, sub)
	if err := store.Check(op); err != nil {
		t.Fatalf("Check while live: %v", err)
	}
	l.cut()
	testutil.Eventually(t, waitLong, func() bool { return errors.Is(store.Check(op), controlstore.ErrUnavailable) }, "failing closed after the cut")
}

// A lost consumer sends the subscriber to Backoff, with the reason and
// the next attempt, then back to live.
func TestBackoffAfterConsumerLoss(t *testing.T) {
	srv := startServer(t)
	admin, err := jsapi.New(adminConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	sub := newSubscriber(t, connect(t, srv.URL()), newStore(t),
		jetstream.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(time.Second) }))
	start(t, sub)
	waitReady(t, sub)
	deleteConsumers(t, admin, jetstream.GlobalSubject)
	waitState(t, sub, jetstream.Backoff)
	st := sub.Status()
	if st.NextAttempt.IsZero() || st.LastError == nil || !strings.Contains(st.LastError.Error(), "heartbeat") {
		t.Errorf("status in backoff: %+v", st)
	}
	waitState(t, sub, jetstream.Live)
	if st := sub.Status(); !st.NextAttempt.IsZero() || st.Attempts != 0 {
		t.Errorf("status when live again: %+v", st)
	}
}
