package stream_test

import (
	"context"
	"log/slog"
	"math"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
)

func TestReconnectAfterDrop(t *testing.T) {
	for _, code := range []codes.Code{codes.Unavailable, codes.Internal, codes.OK} {
		t.Run(code.String(), func(t *testing.T) {
			gw := startGateway(t)
			store := testutil.NewStore(t, agent)
			sub := stream.NewSubscriber(dial(t, gw.Addr()), store,
				stream.WithCredentialToken(token), stream.WithBackoff(fastBackoff), noSpread, stream.WithLogger(nil))
			start(t, sub)
			waitReady(t, sub)
			gw.Publish(agent, "t1:s1", controlstore.SignalPause)
			testutil.Eventually(t, waitShort, func() bool { return store.State("t1:s1") == controlstore.Paused }, "pause not applied")

			if n := gw.DropAll(code); n != 1 {
				t.Fatalf("dropped %d streams, want 1", n)
			}
			testutil.Eventually(t, waitLong, func() bool { return gw.Stats().Accepted == 2 && sub.Connected() }, "not live again; status %+v", sub.Status())
			if st := sub.Status(); st.LastCode != code {
				t.Fatalf("LastCode %v after a drop with %v", st.LastCode, code)
			}
			// A disconnect resumes nothing; later signals arrive.
			if store.State("t1:s1") != controlstore.Paused {
				t.Fatal("the paused op was resumed by the disconnect")
			}
			gw.Publish(agent, "t1:s1", controlstore.SignalTerminate)
			testutil.Eventually(t, waitShort, func() bool { return store.State("t1:s1") == controlstore.Terminated }, "terminate after reconnect not applied")
		})
	}
}

func TestReconnectAfterRestart(t *testing.T) {
	gw := startGateway(t)
	store := testutil.NewStore(t, agent)
	logs, logOpt := newLogs()
	sub := stream.NewSubscriber(dial(t, gw.Addr()), store,
		stream.WithCredentialToken(token), stream.WithBackoff(fastBackoff), noSpread, logOpt)
	start(t, sub)
	waitReady(t, sub)
	for i := range 5 {
		gw.Publish(other, "noise", controlstore.SignalPause) // consumes sequence numbers, reaches nobody here
		gw.Publish(agent, "t:"+string(rune('a'+i)), controlstore.SignalTerminate)
	}
	testutil.Eventually(t, waitShort, func() bool { return store.Stats().Terminated == 5 }, "terminates not applied")
	if seq := sub.Status().LastSequence; seq != 9 {
		t.Fatalf("LastSequence %d, want 9 (gaps for another agent's traffic)", seq)
	}

	gw.Stop()
	testutil.Eventually(t, waitShort, func() bool { return !sub.Connected() && !store.SyncStatus().Live }, "still live after Stop")
	if err := gw.Restart(); err != nil {
		t.Fatal(err)
	}
	waitSubscribers(t, gw, 1)
	testutil.Eventually(t, waitShort, sub.Connected, "not live after Restart")
	if seq := gw.Publish(agent, "t:z", controlstore.SignalPause); seq != 0 {
		t.Fatalf("restarted gateway published sequence %d, want 0", seq)
	}
	testutil.Eventually(t, waitShort, func() bool { return store.State("t:z") == controlstore.Paused }, "pause after restart not applied")
	if seq := sub.Status().LastSequence; seq != 0 {
		t.Fatalf("LastSequence %d, want 0: a decrease is accepted", seq)
	}
	if logs.Count(slog.LevelInfo, "sequence went backwards") != 1 {
		t.Fatal("the sequence decrease was not logged as a restart hint")
	}
	if store.Stats().Terminated != 5 {
		t.Fatal("terminates did not survive the reconnect")
	}
}

// hideReset hides ResetConnectBackoff from the subscriber.
type hideReset struct{ grpc.ClientConnInterface }

// TestReconnectWithinBoundAfterLongOutage takes the gateway down for
// longer than grpc's default connection backoff recovers from promptly, on
// a ClientConn dialled WITHOUT GatewayDialOptions (grpc's default backoff:
// 1 s growing ×1.6 to 120 s), with the default subscriber backoff, and
// brings it back right after a failed dial, when the connection's own next
// dial is furthest away (after 13 s of failures: 5-10 s). The subscriber
// has the connection dialled every 250 ms while it waits, so it must be
// live within 2 s of the gateway's return (250 ms, a dial and a subscribe,
// with ample room for a loaded machine). The reconnect spread is off here:
// it adds less than 5 s, which TestHerdReconnect in robustness measures.
//
// OPCONTROL_HIDE_RESET=1 hides ResetConnectBackoff from the subscriber, to
// see the bound fail without it; OPCONTROL_LONG_OUTAGE sets the outage.
func TestReconnectWithinBoundAfterLongOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~20 s")
	}
	outage := 13 * time.Second
	if v := os.Getenv("OPCONTROL_LONG_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		outage = d
	}
	t.Parallel()
	gw := startGateway(t)
	failedDials := make(chan time.Time, 64)
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			select {
			case failedDials <- time.Now():
			default:
			}
		}
		return c, err
	}
	var cc grpc.ClientConnInterface = dialWith(t, gw.Addr(), grpc.WithContextDialer(dialer)) // grpc's default connect backoff
	if os.Getenv("OPCONTROL_HIDE_RESET") != "" {
		cc = hideReset{cc}
	}
	store := testutil.NewStore(t, agent)
	sub := stream.NewSubscriber(cc, store, stream.WithCredentialToken(token), stream.WithLogger(nil), noSpread)
	start(t, sub)
	waitReady(t, sub)

	gw.Stop()
	down := time.Now()
	select {
	case <-time.After(outage): // the outage itself, not a synchronisation
	case <-t.Context().Done():
	}
	if st := sub.Status(); st.State != stream.Connecting || st.Attempts < 3 || st.LastCode != codes.Unavailable {
		t.Fatalf("during the outage: status %+v, want Connecting with several attempts", st)
	}
	for len(failedDials) > 0 {
		<-failedDials
	}
	select {
	case <-failedDials: // come back right after a failed dial
	case <-time.After(2 * time.Minute):
		t.Fatal("no dial for 2 minutes")
	}
	if err := gw.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	testutil.Eventually(t, time.Minute, sub.Connected, "not live again")
	took := time.Since(back)
	t.Logf("live again %v after the gateway came back from a %v outage", took.Round(time.Millisecond), back.Sub(down).Round(time.Millisecond))
	if took > 2*time.Second {
		t.Fatalf("live again after %v, want <= 2s", took)
	}
	gw.Publish(agent, "t:after", controlstore.SignalPause)
	testutil.Eventually(t, waitShort, func() bool { return store.State("t:after") == controlstore.Paused }, "signal after reconnect not applied")
}

// countingBackOff counts the waits it hands out.
type countingBackOff struct {
	backoff.BackOff
	n *atomic.Int64
}

func (c countingBackOff) NextBackOff() time.Duration { c.n.Add(1); return c.BackOff.NextBackOff() }

// TestCleanEndDoesNotHotLoop: a gateway (or proxy) that ends every stream
// cleanly right after admitting it must not make the subscriber spin.
func TestCleanEndDoesNotHotLoop(t *testing.T) {
	t.Run("default backoff", func(t *testing.T) {
		gw := startGateway(t)
		gw.DropNext(math.MaxInt, codes.OK)
		sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(nil), noSpread)
		r := start(t, sub)
		waitReady(t, sub) // live, then ended cleanly, over and over
		window := 2 * time.Second
		select {
		case <-time.After(window): // observation window
		case <-t.Context().Done():
		}
		r.stop(t)
		// Waits of 250 ms, 1 s, 3 s (±50 %) fit at most 4 attempts in 2 s;
		// a hot loop makes thousands.
		if n := gw.Stats().Accepted; n < 2 || n > 5 {
			t.Fatalf("%d subscribes in %v of clean ends, want 2..5", n, window)
		}
		if st := sub.Status(); st.LastCode != codes.OK || st.LastError != nil && st.LastError.Error() != "EOF" {
			t.Fatalf("status %+v, want a clean end recorded", st)
		}
	})
	t.Run("every clean end waits", func(t *testing.T) {
		gw := startGateway(t)
		gw.DropNext(math.MaxInt, codes.OK)
		var waits atomic.Int64
		sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(nil),
			stream.WithBackoff(func() backoff.BackOff {
				return countingBackOff{backoff.NewConstantBackOff(20 * time.Millisecond), &waits}
			}), noSpread)
		r := start(t, sub)
		testutil.Eventually(t, waitLong, func() bool { return gw.Stats().Accepted >= 10 }, "not reconnecting")
		began := time.Now()
		testutil.Eventually(t, waitLong, func() bool { return gw.Stats().Accepted >= 20 }, "not reconnecting")
		elapsed := time.Since(began)
		r.stop(t)
		// Each clean end draws one interval, which it waits (and which is
		// the next attempt's connect window).
		n := gw.Stats().Accepted
		if w := waits.Load(); w < int64(n)-1 {
			t.Fatalf("%d waits for %d clean ends: some clean ends were not followed by a wait", w, n)
		}
		if elapsed < 9*20*time.Millisecond {
			t.Fatalf("10 reconnects took %v, want >= 180ms with 20 ms waits", elapsed)
		}
	})
}

// TestStableStreamResetsBackOff: the backoff starts again from its
// initial interval only after a stream that was live for StableAfter.
func TestStableStreamResetsBackOff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stable time.Duration
		resets int64
	}{
		{"short-lived stream", time.Hour, 0},
		{"stable stream", 50 * time.Millisecond, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := startGateway(t)
			var resets atomic.Int64
			sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(nil),
				stream.WithBackoff(func() backoff.BackOff {
					return resetCounter{backoff.NewConstantBackOff(10 * time.Millisecond), &resets}
				}), noSpread,
				stream.WithStableAfterForTest(tc.stable))
			start(t, sub)
			waitReady(t, sub)
			base := resets.Load() // Run resets once at start
			select {
			case <-time.After(100 * time.Millisecond): // the stream's lifetime, not a synchronisation
			case <-t.Context().Done():
			}
			gw.DropAll(codes.Unavailable)
			testutil.Eventually(t, waitLong, func() bool { return gw.Stats().Accepted == 2 && sub.Connected() }, "not live again")
			if got := resets.Load() - base; got != tc.resets {
				t.Fatalf("%d resets after a 100 ms stream with StableAfter %v, want %d", got, tc.stable, tc.resets)
			}
		})
	}
}

type resetCounter struct {
	backoff.BackOff
	n *atomic.Int64
}

func (r resetCounter) Reset() { r.n.Add(1); r.BackOff.Reset() }

// TestReconnectSpread: the first attempt of Run subscribes at once, however
// wide the spread; after a lost stream the next subscribe waits a random
// time within the spread, in state Connecting, and Run still returns at
// once when cancelled meanwhile.
func TestReconnectSpread(t *testing.T) {
	gw := startGateway(t)
	sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(nil),
		stream.WithBackoff(fastBackoff), stream.WithReconnectSpread(time.Hour))
	r := start(t, sub)
	waitReady(t, sub) // within waitLong of an hour's spread: the first attempt is not delayed

	gw.DropAll(codes.Unavailable)
	testutil.Eventually(t, waitShort, func() bool { return sub.Status().State == stream.Connecting && sub.Status().Attempts == 1 }, "not waiting to re-subscribe")
	// An observation window, not a synchronisation: a subscribe within it
	// would mean the spread was not waited. False failure: the chance that
	// a draw from [0, 1 h) falls below 300 ms, 8e-5.
	select {
	case <-time.After(300 * time.Millisecond):
	case <-t.Context().Done():
	}
	if n := gw.Stats().Accepted; n != 1 || sub.Connected() {
		t.Fatalf("%d subscribes, connected %v, 300 ms into a spread of an hour: want 1, not connected", n, sub.Connected())
	}
	if took := r.stop(t); took > 100*time.Millisecond {
		t.Fatalf("Run returned %v after cancel during the spread, want <= 100ms", took)
	}
}
