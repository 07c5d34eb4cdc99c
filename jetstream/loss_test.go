package jetstream_test

import (
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
)

func adminStream(t testing.TB, srv *jetstreamtest.Server) jsapi.Stream {
	t.Helper()
	js, err := jsapi.New(adminConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctxTimeout(t), jetstream.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Messages removed from the stream before the subscriber read them (here
// by a purge, as retention would) are reported: state Lost, Status.Loss, a
// counter, one error log; the subscriber goes on from the stream's first
// sequence, and AcknowledgeLoss clears it.
func TestLossDetected(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	st := adminStream(t, srv)
	l := newLink(t, srv)
	logs := &testutil.Logs{}
	store := newStore(t)
	sub := newSubscriber(t, connect(t, l.url()), store, jetstream.WithLogger(slog.New(logs)))
	rec := recordApplied(sub)
	start(t, sub)
	waitReady(t, sub)
	ctx := ctxTimeout(t)
	first, err := pub.HaltAgent(ctx, agent, controlstore.SignalPause)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return rec.len() == 1 }, "first halt applied")

	l.cut()
	testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "not live")
	for range 3 {
		if _, err := pub.HaltAgent(ctx, agent, controlstore.SignalTerminate); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l.restore()
	waitState(t, sub, jetstream.Lost)
	s := sub.Status()
	if s.Loss == nil || s.Losses != 1 {
		t.Fatalf("status %+v, want one loss", s)
	}
	// The global subject's position was 0: both may have lost something.
	if !slices.Equal(s.Loss.Subjects, []string{jetstream.Subject(agent), jetstream.GlobalSubject}) ||
		s.Loss.After != 0 || s.Loss.FirstSequence != info.State.FirstSeq || s.Loss.Reason != "retention expired" {
		t.Errorf("loss %+v; want both subjects, after 0, first sequence %d", s.Loss, info.State.FirstSeq)
	}
	if s.Agent.Position < first {
		t.Errorf("agent position %d before the first halt %d", s.Agent.Position, first)
	}
	if n := logs.Count(slog.LevelError, "halts may have been lost"); n != 1 {
		t.Errorf("%d error logs for the loss, want 1", n)
	}
	if store.SyncStatus().FailClosed {
		t.Error("failing closed without WithFailClosedOnLoss")
	}
	// Still consuming, from the stream's first sequence.
	if _, err := pub.HaltAll(ctx, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return store.State(controlstore.GlobalOpID) == controlstore.Paused }, "halt after the loss applied")

	if !sub.AcknowledgeLoss() {
		t.Fatal("AcknowledgeLoss found no loss")
	}
	if s := sub.Status(); s.State != jetstream.Live || s.Loss != nil || s.Losses != 1 {
		t.Errorf("after AcknowledgeLoss: %+v", s)
	}
	if sub.AcknowledgeLoss() {
		t.Error("a second AcknowledgeLoss found a loss")
	}
	// A later outage with nothing lost is not a loss.
	l.cut()
	testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "not live")
	l.restore()
	waitState(t, sub, jetstream.Live)
	if s := sub.Status(); s.Losses != 1 {
		t.Errorf("losses %d after a clean outage, want 1", s.Losses)
	}
}

// With WithFailClosedOnLoss the store fails closed from the loss until
// AcknowledgeLoss.
func TestLossFailsClosed(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	st := adminStream(t, srv)
	l := newLink(t, srv)
	store := newStore(t)
	sub := newSubscriber(t, connect(t, l.url()), store, jetstream.WithFailClosedOnLoss())
	start(t, sub)
	waitReady(t, sub)
	ctx := ctxTimeout(t)
	if _, err := pub.HaltAll(ctx, controlstore.SignalResume); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return sub.Status().Global.LastSequence > 0 }, "consumed")
	l.cut()
	testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "not live")
	if _, err := pub.HaltAll(ctx, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	l.restore()
	waitState(t, sub, jetstream.Lost)
	var op controlstore.Op
	if err := store.Check(op); !errors.Is(err, controlstore.ErrUnavailable) {
		t.Fatalf("Check during the loss: %v, want ErrUnavailable", err)
	}
	if hold := store.SyncStatus().Sources[0].FailClosedHold; hold == "" {
		t.Error("the store does not say who holds it")
	}
	sub.AcknowledgeLoss()
	if err := store.Check(op); err != nil {
		t.Fatalf("Check after AcknowledgeLoss: %v", err)
	}
}

// The real mechanism: a stream whose retention expires messages while the
// agent is away.
func TestLossByRetention(t *testing.T) {
	cfg := jetstreamtest.StreamConfig()
	cfg.MaxAge = 500 * time.Millisecond
	srv := startServer(t, jetstreamtest.WithStreamConfig(cfg))
	pub := publisher(t, srv)
	st := adminStream(t, srv)
	l := newLink(t, srv)
	sub := newSubscriber(t, connect(t, l.url()), newStore(t))
	start(t, sub)
	waitReady(t, sub)
	ctx := ctxTimeout(t)
	l.cut()
	testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "not live")
	if _, err := pub.HaltAgent(ctx, agent, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitLong, func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	}, "the halt expired")
	l.restore()
	waitState(t, sub, jetstream.Lost)
	if s := sub.Status(); s.Loss == nil || !slices.Contains(s.Loss.Subjects, jetstream.Subject(agent)) {
		t.Errorf("loss %+v", s.Loss)
	}
}

// Checkpoints keep a quiet subject's position up with a busy stream, so
// that messages of other subjects expiring during an outage are not
// mistaken for a loss. Without them (a long interval) the same outage
// must be reported: the subscriber cannot tell.
func TestCheckpointAvoidsFalseLoss(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		loss     bool
	}{
		{"checkpoints", 100 * time.Millisecond, false},
		{"no checkpoint", time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			pub := publisher(t, srv)
			st := adminStream(t, srv)
			l := newLink(t, srv)
			sub := newSubscriber(t, connect(t, l.url()), newStore(t), jetstream.WithCheckpointInterval(tc.interval))
			start(t, sub)
			waitReady(t, sub)
			ctx := ctxTimeout(t)
			var last uint64
			for range 20 {
				seq, err := pub.HaltAgent(ctx, other, controlstore.SignalPause)
				if err != nil {
					t.Fatal(err)
				}
				last = seq
			}
			if !tc.loss {
				testutil.Eventually(t, waitLong, func() bool {
					s := sub.Status()
					return s.Agent.Position >= last && s.Global.Position >= last
				}, "positions follow the stream to %d", last)
			}
			l.cut()
			testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "not live")
			// The other agent's halts expire (a purge of their subject).
			if err := st.Purge(ctx, jsapi.WithPurgeSubject(jetstream.Subject(other))); err != nil {
				t.Fatal(err)
			}
			l.restore()
			if tc.loss {
				waitState(t, sub, jetstream.Lost)
				return
			}
			waitState(t, sub, jetstream.Live)
			if s := sub.Status(); s.Losses != 0 {
				t.Errorf("a loss reported: %+v", s.Loss)
			}
		})
	}
}
