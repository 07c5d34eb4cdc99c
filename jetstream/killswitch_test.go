package jetstream_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// The bus source plugged into the one-call kill switch: it runs beside the
// gateway stream, reports its health, applies halts, and stops with
// Shutdown, closing its connection.
func TestKillSwitchSource(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	gw, err := gatewaytest.Start(gatewaytest.WithToken("agent-token", agent))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	l := newLink(t, srv)
	bus := jetstream.NewBusSource(jetstream.Config{URL: l.url()}, testOptions(t)...)
	if bus.Subscriber() != nil {
		t.Fatal("a subscriber before the kill switch was built")
	}
	k, err := opcontrol.New(context.Background(), opcontrol.Config{
		Agent: agent, GatewayAddr: gw.Addr(), CredentialToken: "agent-token",
		Logger:  slog.New(slog.DiscardHandler),
		Sources: []opcontrol.SourceFactory{bus.Factory},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := k.Close(); err != nil {
			t.Error(err)
		}
	}()
	health := func() opcontrol.SourceHealth {
		for _, h := range k.Status().Sources {
			if h.Name == jetstream.SourceName {
				return h
			}
		}
		return opcontrol.SourceHealth{}
	}
	testutil.Eventually(t, waitLong, func() bool { return k.Status().Live }, "kill switch live with both sources")
	if h := health(); h.State != "live" || !h.Live || h.LastError != "" {
		t.Errorf("health %+v", h)
	}
	if _, err := pub.HaltAgent(ctxTimeout(t), agent, controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool {
		return k.Store().State(controlstore.AgentOpIDPrefix+agent.AgentID) == controlstore.Terminated
	}, "terminated")

	l.cut()
	testutil.Eventually(t, waitLong, func() bool { h := health(); return !h.Live && h.LastError == "disconnected" }, "health reports the cut")
	if k.Status().Live {
		t.Error("kill switch live with its bus down")
	}
	l.restore()
	testutil.Eventually(t, waitLong, func() bool { return k.Status().Live }, "live again")
	if st := bus.Subscriber().Status(); st.Applied != 1 {
		t.Errorf("the subscriber's status through the BusSource: %+v", st)
	}
	if _, err := bus.Factory(k.Store(), slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a second Factory call succeeded")
	}
}

// A bad configuration stops New, with the reason.
func TestKillSwitchSourceRefuses(t *testing.T) {
	gw, err := gatewaytest.Start(gatewaytest.WithToken("agent-token", agent))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	_, err = opcontrol.New(context.Background(), opcontrol.Config{
		Agent: agent, GatewayAddr: gw.Addr(), CredentialToken: "agent-token", Logger: slog.New(slog.DiscardHandler),
		Sources: []opcontrol.SourceFactory{jetstream.NewBusSource(jetstream.Config{URL: "nats://127.0.0.1:1", RequireAuth: true}).Factory},
	})
	if err == nil {
		t.Fatal("New accepted an insecure bus with RequireAuth")
	}
}

// The two-line form: the bus source from the environment. Unset, it adds
// nothing; set, it runs beside the gateway stream; malformed, FromEnv says
// which variable.
func TestSourceFromEnv(t *testing.T) {
	gw, err := gatewaytest.Start(gatewaytest.WithToken("agent-token", agent))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	t.Setenv(opcontrol.EnvAgentID, agent.AgentID)
	t.Setenv(opcontrol.EnvOrgID, agent.OrgID)
	t.Setenv(opcontrol.EnvTeamID, agent.TeamID)
	t.Setenv(opcontrol.EnvGatewayURL, gw.Addr())
	t.Setenv(opcontrol.EnvCredentialToken, "agent-token")
	build := func() (*opcontrol.KillSwitch, error) {
		return opcontrol.FromEnv(context.Background(), opcontrol.WithLogger(nil),
			opcontrol.WithSource(jetstream.SourceFromEnv(testOptions(t)...)))
	}

	t.Setenv(jetstream.EnvURL, "")
	k, err := build()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(k.Status().Sources); n != 1 {
		t.Errorf("no bus configured: %d sources, want the gateway stream alone", n)
	}
	_ = k.Close()

	srv := startServer(t)
	t.Setenv(jetstream.EnvURL, srv.URL())
	t.Setenv("AA_OPCONTROL_NATS_TLS", "ture")
	if k, err := build(); err == nil || !strings.Contains(err.Error(), "AA_OPCONTROL_NATS_TLS") {
		if k != nil {
			_ = k.Close()
		}
		t.Fatalf("malformed switch: FromEnv = %v, want an error naming AA_OPCONTROL_NATS_TLS", err)
	}

	t.Setenv("AA_OPCONTROL_NATS_TLS", "")
	k, err = build()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = k.Close() }()
	testutil.Eventually(t, waitLong, func() bool { return k.Status().Live && len(k.Status().Sources) == 2 }, "live on the gateway and the bus")
	if _, err := publisher(t, srv).HaltAll(ctxTimeout(t), controlstore.SignalTerminate); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { return k.Store().State(controlstore.GlobalOpID) == controlstore.Terminated }, "the bus halt applied")
}
