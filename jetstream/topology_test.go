package jetstream_test

import (
	"context"
	"log/slog"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/faultproxy"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// runStream runs a gateway stream subscriber of store through link, with
// opts after the test's own.
func runStream(t *testing.T, addr string, store *controlstore.Store, opts ...stream.Option) *stream.Subscriber {
	t.Helper()
	cc, err := grpc.NewClient(addr, append(stream.GatewayDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	sub := stream.NewSubscriber(cc, store, append([]stream.Option{stream.WithCredentialToken("agent-token"), stream.WithLogger(nil)}, opts...)...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stream subscriber Run: %v", err)
		}
	})
	return sub
}

// The real topology in one process: the operator publishes on the bus;
// the gateway's bridge forwards to the gateway stream; the agent reads
// both. With the agent's link to the gateway cut, a halt still arrives
// through JetStream; an agent with the stream alone never gets it.
func TestTopologyHaltWhileStreamDown(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	gw, err := gatewaytest.Start(gatewaytest.WithToken("agent-token", agent))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	bridge, err := jetstreamtest.StartBridge(adminConn(t, srv), gw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bridge.Close)
	if err := bridge.WaitSubscribed(ctxTimeout(t), 1); err != nil {
		t.Fatal(err)
	}
	gwLink, err := faultproxy.New(gw.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gwLink.Close() })

	both := newStore(t)
	streamSub := runStream(t, gwLink.Addr(), both)
	busSub := newSubscriber(t, connect(t, srv.URL()), both)
	start(t, busSub)
	streamOnly := testutil.NewStore(t, agent, controlstore.WithLogger(slog.New(slog.DiscardHandler)))
	controlSub := runStream(t, gwLink.Addr(), streamOnly)
	for _, s := range []*stream.Subscriber{streamSub, controlSub} {
		select {
		case <-s.Ready():
		case <-ctxTimeout(t).Done():
			t.Fatal("stream not ready")
		}
	}
	waitReady(t, busSub)
	agentOp := controlstore.AgentOpIDPrefix + agent.AgentID

	// Both paths carry a pause.
	ctx := ctxTimeout(t)
	if _, err := pub.HaltAgent(ctx, agent, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool {
		return both.State(agentOp) == controlstore.Paused && streamOnly.State(agentOp) == controlstore.Paused
	}, "paused through both paths")

	// The agent's link to the gateway is cut; the operator terminates.
	gwLink.SetTarget(deadAddr)
	gwLink.Reset()
	testutil.Eventually(t, waitLong, func() bool { return !streamSub.Connected() && !controlSub.Connected() }, "streams down")
	forwarded := bridge.Stats().Forwarded
	if _, err := pub.HaltAgent(ctx, agent, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return both.State(agentOp) == controlstore.Terminated }, "terminated from JetStream while the stream is down")
	testutil.Eventually(t, waitShort, func() bool { return bridge.Stats().Forwarded > forwarded }, "the gateway got it too, with nobody to give it to")

	// The link comes back: the stream replays nothing.
	gwLink.SetTarget(gw.Addr())
	testutil.Eventually(t, waitLong, func() bool { return streamSub.Connected() && controlSub.Connected() }, "streams back")
	if s := streamOnly.State(agentOp); s == controlstore.Terminated {
		t.Fatalf("the stream-only agent is %v: the gateway replayed", s)
	}
	// A later halt reaches both, showing the control's stream is live.
	if _, err := pub.HaltAll(ctx, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool {
		return streamOnly.State(controlstore.GlobalOpID) == controlstore.Paused && both.State(controlstore.GlobalOpID) == controlstore.Paused
	}, "later halt through both")
	if s := streamOnly.State(agentOp); s != controlstore.Paused {
		t.Errorf("stream-only agent %v: it lost the terminate for good, as the stream alone does", s)
	}
	if st := both.Stats(); st.Superseded == 0 {
		t.Errorf("stats %+v: the gateway's copies of bus halts should have been superseded", st)
	}
}
