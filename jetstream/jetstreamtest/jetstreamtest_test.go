package jetstreamtest_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitLong = 30 * time.Second

var victim = controlstore.Agent{OrgID: "victim-org", TeamID: "victim-team", AgentID: "bot"}

func startServer(t *testing.T, opts ...jetstreamtest.ServerOption) *jetstreamtest.Server {
	t.Helper()
	srv, err := jetstreamtest.StartServer(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

func conn(t *testing.T, srv *jetstreamtest.Server) *nats.Conn {
	t.Helper()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), waitLong)
	t.Cleanup(cancel)
	return c
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	testutil.Eventually(t, waitLong, cond, "%s", what)
}

// gatewayAgent runs a gateway, a bridge to it, and a stream subscriber of
// victim on it: the real topology's gateway half. It returns the victim's
// store, fed by the gateway stream only.
func gatewayAgent(t *testing.T, srv *jetstreamtest.Server, opts ...jetstreamtest.BridgeOption) (*controlstore.Store, *jetstreamtest.Bridge) {
	t.Helper()
	gw, err := gatewaytest.Start(gatewaytest.WithToken("victim-token", victim))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	b, err := jetstreamtest.StartBridge(conn(t, srv), gw, append([]jetstreamtest.BridgeOption{jetstreamtest.WithBridgeBackOff(20*time.Millisecond, 100*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	cc, err := grpc.NewClient(gw.Addr(), append(stream.GatewayDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	store := testutil.NewStore(t, victim, controlstore.WithLogger(slog.New(slog.DiscardHandler)))
	sub := stream.NewSubscriber(cc, store, stream.WithCredentialToken("victim-token"), stream.WithLogger(nil))
	c, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(c) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stream subscriber Run: %v", err)
		}
	})
	select {
	case <-sub.Ready():
	case <-time.After(waitLong):
		t.Fatal("stream subscriber not ready")
	}
	if err := b.WaitSubscribed(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
	return store, b
}

// The gateway's own integration test: a victim's payload on the
// attacker's subject and a global payload on an agent subject are
// dropped; only the legitimate pause reaches the victim.
func TestBridgeDropsForgedHalts(t *testing.T) {
	srv := startServer(t, jetstreamtest.WithoutStream()) // the bridge creates it
	store, b := gatewayAgent(t, srv)
	pub, err := jetstreamtest.NewPublisher(conn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	c := ctx(t)
	if _, err := pub.Publish(c, "assembly.opcontrol.attacker.attacker", jetstream.AgentHalt(victim, controlstore.SignalTerminate)); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(c, "assembly.opcontrol.attacker.bot", jetstream.GlobalHalt(controlstore.SignalTerminate)); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.HaltAgent(c, victim, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return store.State("agent:bot") == controlstore.Paused }, "the legitimate pause delivered")
	eventually(t, func() bool { st := b.Stats(); return st.Forwarded == 1 && st.Rejected == 2 }, "counted")
	if st := b.Stats(); st.Dropped[jetstream.DropSubjectMismatch] != 2 {
		t.Errorf("dropped %v, want 2 subject mismatches", st.Dropped)
	}
	if store.State(controlstore.GlobalOpID) != controlstore.Running || store.Stats().Applied != 1 {
		t.Errorf("global %v, applied %d: a forged halt got through", store.State(controlstore.GlobalOpID), store.Stats().Applied)
	}
}

// Like the real gateway, a bridge that reconnects replays the whole
// retained window: its subscribers see the halt again.
func TestBridgeReplaysOnReconnect(t *testing.T) {
	srv := startServer(t)
	_, b := gatewayAgent(t, srv)
	pub, err := jetstreamtest.NewPublisher(conn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.HaltAll(ctx(t), controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return b.Stats().Forwarded == 1 }, "forwarded once")
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitSubscribed(ctx(t), 2); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return b.Stats().Forwarded == 2 }, "replayed after the reconnect")
}

// A stream the gateway cannot use (Memory storage) is the fail-loud
// state: publishes succeed, nothing is bridged.
func TestBridgeStreamUnavailable(t *testing.T) {
	cfg := jetstreamtest.StreamConfig()
	cfg.Storage = jsapi.MemoryStorage
	srv := startServer(t, jetstreamtest.WithStreamConfig(cfg))
	gw, err := gatewaytest.Start(gatewaytest.WithoutAuth())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	b, err := jetstreamtest.StartBridge(conn(t, srv), gw, jetstreamtest.WithBridgeBackOff(20*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	eventually(t, func() bool { return b.Stats().State == jetstreamtest.BridgeStreamUnavailable }, "stream unavailable")
	if b.Stats().LastError == nil {
		t.Error("no error reported")
	}
	pub, err := jetstreamtest.NewPublisher(conn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.HaltAll(ctx(t), controlstore.SignalTerminate); err != nil {
		t.Fatalf("publish on the unusable stream: %v (it succeeds in production too)", err)
	}
	if b.Stats().Forwarded != 0 {
		t.Error("forwarded from an unusable stream")
	}
}

// The publisher writes exactly the operator API's payload, no headers,
// and reports the sequence the stream acknowledged.
func TestPublisherPayload(t *testing.T) {
	srv := startServer(t)
	nc := conn(t, srv)
	pub, err := jetstreamtest.NewPublisher(nc)
	if err != nil {
		t.Fatal(err)
	}
	seq, err := pub.HaltAgent(ctx(t), victim, controlstore.SignalTerminate)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jsapi.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx(t), jetstream.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info := st.CachedInfo()
	if info.Config.MaxAge != 10*time.Minute || info.Config.Storage != jsapi.FileStorage || info.Config.Retention != jsapi.LimitsPolicy ||
		len(info.Config.Subjects) != 1 || info.Config.Subjects[0] != "assembly.opcontrol.>" {
		t.Errorf("stream config %+v", info.Config)
	}
	msg, err := st.GetMsg(ctx(t), seq)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"org_id":"victim-org","team_id":"victim-team","agent_id":"bot","op_id":"agent:bot","signal":3,"global":false}`
	if msg.Subject != "assembly.opcontrol.victim-org.bot" || string(msg.Data) != want || len(msg.Header) != 0 {
		t.Errorf("stored %s %s %v", msg.Subject, msg.Data, msg.Header)
	}

	// With the server down the publish fails within the ack timeout.
	srv.Stop()
	c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := pub.HaltAll(c, controlstore.SignalPause); err == nil {
		t.Error("a publish with the server down succeeded")
	}
}

// The store survives a restart on the same port.
func TestServerRestartKeepsStore(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, jetstreamtest.WithStoreDir(dir))
	url := srv.URL()
	pub, err := jetstreamtest.NewPublisher(conn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := pub.HaltAll(ctx(t), controlstore.SignalPause); err != nil {
			t.Fatal(err)
		}
	}
	srv.Stop()
	if srv.Running() {
		t.Fatal("running after Stop")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if srv.URL() != url {
		t.Errorf("URL changed from %s to %s", url, srv.URL())
	}
	js, err := jsapi.New(conn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx(t), jetstream.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 5 {
		t.Errorf("%d messages after the restart, want 5", n)
	}
	srv.Close()
	srv.Close()
	if err := srv.Restart(); err == nil {
		t.Error("Restart after Close succeeded")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("a caller's store directory was removed: %v", err)
	}
}
