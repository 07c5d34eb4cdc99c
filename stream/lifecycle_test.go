package stream_test

import (
	"errors"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

var unknownOp = controlstore.OpFromID("never:signalled")

func TestFailOpenByDefault(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []stream.Option
	}{
		{"no option", nil},
		{"limit not reached", []stream.Option{stream.WithFailClosedAfter(time.Hour)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := startGateway(t)
			store := testutil.NewStore(t, agent)
			sub := stream.NewSubscriber(dial(t, gw.Addr()), store,
				append(tc.opts, stream.WithCredentialToken(token), stream.WithBackoff(fastBackoff), noSpread, stream.WithLogger(nil))...)
			start(t, sub)
			waitReady(t, sub)
			gw.Publish(agent, "held:op", controlstore.SignalPause)
			testutil.Eventually(t, waitShort, func() bool { return store.State("held:op") == controlstore.Paused }, "pause not applied")
			gw.Stop()
			// Blind for a while: a connect window of at least 1 s has passed.
			testutil.Eventually(t, waitLong, func() bool { return sub.Status().Attempts >= 2 }, "not retrying; status %+v", sub.Status())
			if s := store.SyncStatus(); s.Live || s.FailClosed {
				t.Fatalf("store sync %+v while the gateway is down, want not live and failing open", s)
			}
			if err := store.Check(unknownOp); err != nil {
				t.Fatalf("unknown op: %v, want it to run (fail-open)", err)
			}
			if err := store.Check(controlstore.OpFromID("held:op")); !errors.Is(err, controlstore.ErrPaused) {
				t.Fatalf("paused op: %v, want still held while disconnected", err)
			}
		})
	}
}

func TestFailClosedAfter(t *testing.T) {
	gw := startGateway(t)
	gw.Stop() // down from the start: counting starts with Run
	store := testutil.NewStore(t, agent)
	const after = 100 * time.Millisecond
	sub := stream.NewSubscriber(dial(t, gw.Addr()), store,
		stream.WithCredentialToken(token), stream.WithBackoff(fastBackoff), noSpread, stream.WithFailClosedAfter(after), stream.WithLogger(nil))
	start(t, sub)

	for round := range 2 {
		testutil.Eventually(t, waitLong, func() bool { return store.SyncStatus().FailClosed }, "round %d: not failing closed while down", round)
		if err := store.Check(unknownOp); !errors.Is(err, controlstore.ErrUnavailable) {
			t.Fatalf("round %d: Check = %v while failing closed, want ErrUnavailable", round, err)
		}
		if err := gw.Restart(); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, waitLong, func() bool { return sub.Connected() && !store.SyncStatus().FailClosed }, "round %d: still failing closed once live", round)
		if err := store.Check(unknownOp); err != nil {
			t.Fatalf("round %d: Check = %v once live", round, err)
		}
		gw.Stop()
	}
}

func TestFailClosedAfterZero(t *testing.T) {
	gw := startGateway(t)
	gw.Stop()
	store := testutil.NewStore(t, agent)
	sub := stream.NewSubscriber(dial(t, gw.Addr()), store,
		stream.WithCredentialToken(token), stream.WithBackoff(fastBackoff), noSpread, stream.WithFailClosedAfter(0), stream.WithLogger(nil))
	start(t, sub)
	testutil.Eventually(t, waitShort, func() bool { return store.SyncStatus().FailClosed }, "not failing closed at once")
	if err := gw.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitLong, func() bool { return sub.Connected() && !store.SyncStatus().FailClosed }, "still failing closed once live")
}

// TestRunReturnsPromptly cancels Run in each state and wants it back
// within 100 ms.
func TestRunReturnsPromptly(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(*gatewaytest.Gateway) []stream.Option
		state stream.State
	}{
		{"live", func(*gatewaytest.Gateway) []stream.Option { return nil }, stream.Live},
		{"connecting", func(gw *gatewaytest.Gateway) []stream.Option { gw.Stop(); return nil }, stream.Connecting},
		{"backoff", func(gw *gatewaytest.Gateway) []stream.Option { gw.SetPublisherAttached(false); return nil }, stream.Backoff},
		{"unauthorized", func(gw *gatewaytest.Gateway) []stream.Option { gw.RevokeToken(token); return nil }, stream.Unauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := startGateway(t)
			store := testutil.NewStore(t, agent)
			sub := stream.NewSubscriber(dial(t, gw.Addr()), store,
				append(tc.setup(gw), stream.WithCredentialToken(token), stream.WithLogger(nil))...)
			r := start(t, sub)
			testutil.Eventually(t, waitLong, func() bool { st := sub.Status(); return st.State == tc.state && st.Attempts <= 1 }, "state %v never reached", tc.state)
			if took := r.stop(t); took > 100*time.Millisecond {
				t.Fatalf("Run returned %v after cancel, want <= 100ms", took)
			}
			if st := sub.Status(); st.State != stream.Idle || sub.Connected() || store.SyncStatus().Live {
				t.Fatalf("after Run: status %+v, store %+v", st, store.SyncStatus())
			}
		})
	}
}

func TestRunAgainAfterReturn(t *testing.T) {
	gw := startGateway(t)
	sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(nil))
	r := start(t, sub)
	waitReady(t, sub)
	r.stop(t)
	start(t, sub)
	testutil.Eventually(t, waitLong, sub.Connected, "not live on the second Run")
	if n := gw.Stats().Accepted; n != 2 {
		t.Fatalf("%d subscribes, want 2", n)
	}
}
