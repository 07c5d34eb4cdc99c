package main

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/faultproxy"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
)

// With -nats, halts go on the bus as the operator API publishes them: an
// agent whose link to the gateway is cut still gets a halt-agent, through
// its bus source, and the printed environment is all it needs for both.
func TestBusSession(t *testing.T) {
	p := startCmd(t, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-nats", "-nats-port", "0", "-agent", acmeFlag())
	if !strings.Contains(p.stdout.String(), "NATS JetStream bus    nats://127.0.0.1:") {
		t.Fatalf("banner does not show the bus:\n%s", p.stdout.String())
	}
	env := p.setEnv(t, 0)
	if !strings.HasPrefix(env[opcontrol.EnvNATSURL], "nats://127.0.0.1:") {
		t.Fatalf("printed environment %v has no %s", env, opcontrol.EnvNATSURL)
	}
	// The agent reaches the gateway through a link the test can cut.
	link, err := faultproxy.New(strings.TrimPrefix(env[opcontrol.EnvGatewayURL], "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	t.Setenv(opcontrol.EnvGatewayURL, link.Addr())
	k, err := opcontrol.FromEnv(context.Background(), opcontrol.WithLogger(nil), opcontrol.WithSource(jetstream.SourceFromEnv()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Shutdown(context.Background()) })
	testutil.Eventually(t, waitLong, func() bool { return k.Status().Live && len(k.Status().Sources) == 2 },
		"not live on the gateway and the bus: %+v", k.Status())
	store := k.Store()
	_, tool := tools(t, k)
	ctx, op := opSpan(t)
	expect(t, "register", http.StatusCreated,
		p.postJSON(t, "", registration{OpID: op, OrgID: acme.OrgID, TeamID: acme.TeamID, AgentID: acme.AgentID}))

	link.SetTarget("127.0.0.1:1") // refuses everything
	link.Reset()
	streamLive := func() bool {
		for _, h := range k.Status().Sources {
			if h.Name == "stream" {
				return h.Live
			}
		}
		return false
	}
	testutil.Eventually(t, waitLong, func() bool { return !streamLive() }, "the gateway stream still live after the cut")

	agentScope := controlstore.AgentOpIDPrefix + acme.AgentID
	expect(t, "halt-agent pause", http.StatusOK, p.do(t, http.MethodPost, "/"+op+"/halt-agent", "application/json", `{"action":"pause"}`))
	testutil.Eventually(t, waitLong, func() bool { return store.State(agentScope) == controlstore.Paused },
		"the pause did not arrive by the bus while the stream was down")
	done := make(chan error, 1)
	go func() { _, err := tool.Echo(ctx, "held"); done <- err }()
	testutil.Eventually(t, waitLong, func() bool { return store.Stats().Held == 1 }, "the call is not held")

	link.SetTarget(strings.TrimPrefix(env[opcontrol.EnvGatewayURL], "http://"))
	testutil.Eventually(t, waitLong, streamLive, "the gateway stream not live again")
	expect(t, "halt-agent resume", http.StatusOK, p.do(t, http.MethodPost, "/"+op+"/halt-agent", "application/json", `{"action":"resume"}`))
	if err := <-done; err != nil {
		t.Fatalf("held call after the resume: %v", err)
	}
	expect(t, "global terminate", http.StatusOK, p.do(t, http.MethodPost, "/global/halt", "application/json", `{"action":"terminate"}`))
	testutil.Eventually(t, waitLong, func() bool { return store.State(controlstore.GlobalOpID) == controlstore.Terminated }, "global terminate not applied")
}
