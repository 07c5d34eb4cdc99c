package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

var acme = controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkLocalTest"}

const acmeToken = "acme-dev-token"

func acmeFlag() string {
	return "id=" + acme.AgentID + ",org=" + acme.OrgID + ",team=" + acme.TeamID + ",token=" + acmeToken
}

// opSpan starts a real OpenTelemetry SDK span: the op, as an agent runs it.
func opSpan(t *testing.T) (context.Context, string) {
	t.Helper()
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("localgateway_test").Start(context.Background(), "op")
	t.Cleanup(func() { span.End() })
	return ctx, controlstore.OpFromSpanContext(span.SpanContext()).String()
}

// The session the README shows, with HTTP requests for curl: an agent
// configured only from the environment the command printed, its op
// registered over REST, paused (its call is held), resumed (the call runs),
// halted as an agent, and terminated in the middle of a call (the call is
// cancelled, and later calls fail fast).
func TestOperatorSession(t *testing.T) {
	p := startCmd(t, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-agent", acmeFlag())
	if env := p.setEnv(t, 0); env[opcontrol.EnvAgentID] != acme.AgentID || env[opcontrol.EnvOrgID] != acme.OrgID ||
		env[opcontrol.EnvTeamID] != acme.TeamID || env[opcontrol.EnvCredentialToken] != acmeToken {
		t.Fatalf("printed environment %v, want %+v with token %q", env, acme, acmeToken)
	}
	k := p.killSwitch(t, 0)
	waitLive(t, k)
	store := k.Store()
	srv, tool := tools(t, k)
	ctx, op := opSpan(t)

	rec := decode[operatorapi.OpRecord](t, expect(t, "register", http.StatusCreated,
		p.postJSON(t, "", registration{OpID: op, OrgID: acme.OrgID, TeamID: acme.TeamID, AgentID: acme.AgentID})))
	if rec.OpID != op || rec.State != "running" || rec.AgentID != acme.AgentID || rec.OrgID != acme.OrgID || rec.TeamID != acme.TeamID {
		t.Fatalf("registered %+v", rec)
	}

	// Pause: the next call is held and never reaches the tool server.
	acc := decode[operatorapi.ActionAccepted](t, expect(t, "pause", http.StatusOK, p.do(t, http.MethodPost, "/"+op+"/pause", "", "")))
	if acc.OpID != op || acc.Action != "pause" || acc.AcceptedAt.IsZero() {
		t.Fatalf("pause answered %+v", acc)
	}
	testutil.Eventually(t, waitLong, func() bool { return store.State(op) == controlstore.Paused }, "op not paused")
	held := make(chan error, 1)
	go func() {
		callCtx, cancel := context.WithTimeout(ctx, waitLong)
		defer cancel()
		_, err := tool.Echo(callCtx, "held")
		held <- err
	}()
	testutil.Eventually(t, waitLong, func() bool { return store.Held() == 1 }, "the call is not held")
	if n := srv.Entered(toolserver.EchoMethod); n != 0 {
		t.Fatalf("a held call reached the tool server (%d calls)", n)
	}

	// Resume: the held call runs.
	expect(t, "resume", http.StatusOK, p.do(t, http.MethodPost, "/"+op+"/resume", "", ""))
	select {
	case err := <-held:
		if err != nil {
			t.Fatalf("the resumed call failed: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatal("the resumed call did not return")
	}
	if n := srv.Entered(toolserver.EchoMethod); n != 1 {
		t.Fatalf("tool server saw %d calls, want 1", n)
	}

	// halt-agent reaches the op's owner: every op of the agent pauses.
	halt := decode[operatorapi.HaltAccepted](t, expect(t, "halt-agent", http.StatusOK,
		p.postJSON(t, "/"+op+"/halt-agent", map[string]string{"action": "pause"})))
	if halt.Scope != "agent" || halt.Target != acme.AgentID || halt.Action != "pause" {
		t.Fatalf("halt-agent answered %+v", halt)
	}
	var paused *controlstore.PausedError
	testutil.Eventually(t, waitLong, func() bool {
		return errors.As(store.Check(controlstore.Op{}), &paused) && paused.Scope == controlstore.ScopeAgent
	}, "agent not paused")
	expect(t, "halt-agent resume", http.StatusOK, p.postJSON(t, "/"+op+"/halt-agent", map[string]string{"action": "resume"}))
	testutil.Eventually(t, waitLong, func() bool { return store.Check(controlstore.Op{}) == nil }, "agent still paused")

	// Terminate in the middle of a call: the call is cancelled.
	working := make(chan error, 1)
	go func() {
		callCtx, cancel := context.WithTimeout(ctx, waitLong)
		defer cancel()
		working <- tool.Work(callCtx, time.Hour)
	}()
	testutil.Eventually(t, waitLong, func() bool { return srv.Entered(toolserver.WorkMethod) == 1 }, "Work never started")
	expect(t, "terminate", http.StatusOK, p.do(t, http.MethodPost, "/"+op+"/terminate", "", ""))
	select {
	case err := <-working:
		if status.Code(err) != codes.FailedPrecondition || !errors.Is(err, controlstore.ErrTerminated) {
			t.Fatalf("the call in flight ended with %v, want FailedPrecondition/ErrTerminated", err)
		}
	case <-time.After(waitLong):
		t.Fatal("terminate did not cancel the call in flight")
	}
	// Sticky: later calls fail at once and reach nothing.
	if _, err := tool.Echo(ctx, "after"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a call after terminate: %v, want FailedPrecondition", err)
	}
	if n := srv.Entered(toolserver.EchoMethod); n != 1 {
		t.Fatalf("a terminated op's call reached the tool server (%d Echo calls)", n)
	}
	list := decode[operatorapi.OpList](t, expect(t, "list", http.StatusOK, p.do(t, http.MethodGet, "", "", "")))
	if len(list.Ops) != 1 || list.Ops[0].OpID != op || list.Ops[0].State != "terminated" {
		t.Fatalf("ops %+v, want the op terminated", list.Ops)
	}
}

// The operator API's refusals reach the client as the handler gives them:
// the command serves it directly (a ServeMux in front would redirect
// /api/v1/ops//pause instead of answering blank_op_id).
func TestOperatorAPIErrors(t *testing.T) {
	p := startCmd(t, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-agent", acmeFlag())
	const op = "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"
	expect(t, "register without owner", http.StatusCreated, p.postJSON(t, "", registration{OpID: op}))
	tests := []struct {
		name, method, path, contentType, body string
		status                                int
		code                                  string
	}{
		{"blank id", http.MethodPost, "//pause", "", "", http.StatusBadRequest, operatorapi.CodeBlankOpID},
		{"reserved id", http.MethodPost, "/*/pause", "", "", http.StatusBadRequest, operatorapi.CodeInvalidOpID},
		{"unknown op", http.MethodPost, "/0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331/pause", "", "", http.StatusNotFound, operatorapi.CodeOpNotFound},
		{"resume a running op", http.MethodPost, "/" + op + "/resume", "", "", http.StatusConflict, operatorapi.CodeInvalidTransition},
		{"halt-agent without owner", http.MethodPost, "/" + op + "/halt-agent", "application/json", `{"action":"pause"}`, http.StatusConflict, operatorapi.CodeNoOwningAgent},
		{"unknown action", http.MethodPost, "/global/halt", "application/json", `{"action":"explode"}`, http.StatusBadRequest, operatorapi.CodeUnknownAction},
		{"no content type", http.MethodPost, "/global/halt", "", `{"action":"pause"}`, http.StatusUnsupportedMediaType, operatorapi.CodeUnsupportedMediaType},
		{"unknown endpoint", http.MethodPost, "/" + op + "/explode", "", "", http.StatusNotFound, operatorapi.CodeNotFound},
		{"wrong method", http.MethodDelete, "", "", "", http.StatusMethodNotAllowed, operatorapi.CodeMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := decode[operatorapi.ErrorBody](t, expect(t, tt.name, tt.status, p.do(t, tt.method, tt.path, tt.contentType, tt.body)))
			if e.Code != tt.code || e.Message == "" {
				t.Fatalf("error body %+v, want code %q and a message", e, tt.code)
			}
		})
	}
}

// Several agents, given by id alone: each gets its own issued token, the
// printed environments work, and a global halt reaches every agent.
func TestAgentsWithIssuedTokensAndGlobalHalt(t *testing.T) {
	ids := []string{"did:key:z6MkOne", "did:key:z6MkTwo"}
	p := startCmd(t, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-agent", ids[0], "-agent", ids[1])
	if len(p.envs) != 2 {
		t.Fatalf("%d environment lines, want 2", len(p.envs))
	}
	var stores []*controlstore.Store
	tokens := map[string]bool{}
	for i, id := range ids {
		env := p.setEnv(t, i)
		if env[opcontrol.EnvAgentID] != id || env[opcontrol.EnvOrgID] != "" || env[opcontrol.EnvTeamID] != "" {
			t.Fatalf("agent %d: printed environment %v", i, env)
		}
		tok := env[opcontrol.EnvCredentialToken]
		if len(tok) != 32 || strings.Trim(tok, "0123456789abcdef") != "" || tokens[tok] {
			t.Fatalf("agent %d: issued token %q, want 128 fresh bits in hex", i, tok)
		}
		tokens[tok] = true
		k := p.killSwitch(t, i)
		waitLive(t, k)
		stores = append(stores, k.Store())
	}
	expect(t, "global pause", http.StatusOK, p.postJSON(t, "/global/halt", map[string]string{"action": "pause"}))
	for i, s := range stores {
		var paused *controlstore.PausedError
		testutil.Eventually(t, waitLong, func() bool {
			return errors.As(s.Check(controlstore.Op{}), &paused) && paused.Scope == controlstore.ScopeGlobal
		}, "agent %d not paused by the global halt", i)
	}
	expect(t, "global terminate", http.StatusOK, p.postJSON(t, "/global/halt", map[string]string{"action": "terminate"}))
	for i, s := range stores {
		testutil.Eventually(t, waitLong, func() bool { return errors.Is(s.Check(controlstore.Op{}), controlstore.ErrTerminated) },
			"agent %d not terminated by the global halt", i)
	}
}

// With no -agent, one default agent is registered and its printed
// environment works.
func TestDefaultAgent(t *testing.T) {
	p := startCmd(t, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0")
	if env := p.setEnv(t, 0); len(p.envs) != 1 || env[opcontrol.EnvAgentID] != defaultAgentID {
		t.Fatalf("environment lines %q, want one for %s", p.envs, defaultAgentID)
	}
	waitLive(t, p.killSwitch(t, 0))
}

// A refused subscribe is logged with the reason, and no token is logged,
// neither the one sent nor the registered one.
func TestRefusedSubscribeIsLoggedWithoutTokens(t *testing.T) {
	p := startCmd(t, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-agent", acmeFlag())
	const wrong = "not-the-token-0123456789"
	k := p.killSwitch(t, 0, opcontrol.WithCredentialToken(wrong))
	testutil.Eventually(t, waitLong, func() bool {
		return strings.Contains(p.stderr.String(), `msg="subscribe refused"`)
	}, "no refusal logged; stderr:\n%s", p.stderr.String())
	logs := p.stderr.String()
	if !strings.Contains(logs, "code=Unauthenticated") || !strings.Contains(logs, "agent="+acme.AgentID) {
		t.Fatalf("refusal logged without code or agent:\n%s", logs)
	}
	if strings.Contains(logs, wrong) || strings.Contains(logs, acmeToken) {
		t.Fatalf("a token was logged:\n%s", logs)
	}
	testutil.Eventually(t, waitLong, func() bool { st := k.Status(); return !st.Live && st.Sources[0].State == "unauthorized" },
		"kill switch status %+v, want unauthorized", k.Status())
}

// An address that is taken is exit status 1 with a message naming it, and
// nothing is left listening.
func TestAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = taken.Close() }()
	addr := taken.Addr().String()
	for _, tt := range []struct{ flag, want string }{{"-grpc", "gRPC on " + addr}, {"-http", "operator API on " + addr}} {
		t.Run(tt.flag, func(t *testing.T) {
			args := []string{"-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", tt.flag, addr}
			var stdout, stderr testutil.SyncBuffer
			if code := run(context.Background(), args, &stdout, &stderr); code != 1 {
				t.Fatalf("exit status %d, want 1", code)
			}
			if !strings.Contains(stderr.String(), tt.want) || !strings.Contains(stderr.String(), "address already in use") {
				t.Fatalf("stderr %q, want %q and the cause", stderr.String(), tt.want)
			}
			if stdout.String() != "" {
				t.Fatalf("a banner for a gateway that did not start:\n%s", stdout.String())
			}
		})
	}
}

// The operator API drops a client that never finishes its request headers,
// so that none can hold a connection (or the shutdown) for ever.
func TestSlowClientIsCutOff(t *testing.T) {
	cfg, err := parseFlags([]string{"-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0"}, &testutil.SyncBuffer{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.timeouts.readHeader = 100 * time.Millisecond
	var stdout, stderr testutil.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, &stdout, testLogger(&stderr), func() {}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	testutil.Eventually(t, waitLong, func() bool { return strings.Contains(stdout.String(), bannerEnd) }, "no banner")
	host := strings.TrimPrefix(strings.TrimSuffix(parseBanner(t, stdout.String()).ops, operatorapi.OpsPath), "http://")

	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := conn.Write([]byte("GET /api/v1/ops HTTP/1.1\r\nHost: x\r\n")); err != nil { // no blank line: never finished
		t.Fatal(err)
	}
	// The deadline is far beyond the header timeout; a server without one
	// would keep the connection until it.
	_ = conn.SetReadDeadline(time.Now().Add(waitShort))
	buf := make([]byte, 512)
	for {
		_, err := conn.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the server kept a half-sent request open for %v", waitShort)
		}
		if err != nil {
			return // closed by the server
		}
	}
}

// Every printed line survives a real shell: the environment line sets
// exactly the triple and token, and the registration body is the JSON the
// API expects, whatever the characters in the names.
func TestPrintedLinesSurviveTheShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	a := agentCred{
		agent: controlstore.Agent{OrgID: `acme corp's "R&D"`, TeamID: "$HOME `id` \\ *", AgentID: "did:key:z6Mk;日本"},
		token: `tok'en"$x`,
	}
	var out testutil.SyncBuffer
	printBanner(&out, "127.0.0.1:50051", "127.0.0.1:7391", "", []agentCred{a})
	var envLine, curlLine string
	for line := range strings.SplitSeq(out.String(), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, opcontrol.EnvGatewayURL) {
			envLine = strings.TrimSuffix(line, `\`)
		}
		if strings.HasPrefix(line, "curl --json '{\"op_id\"") {
			curlLine = line
		}
	}
	if envLine == "" || curlLine == "" {
		t.Fatalf("banner without an environment or registration line:\n%s", out.String())
	}

	// The assignments set the environment of the command they prefix, as
	// when they prefix go run: a second shell reads it.
	got, err := exec.Command(sh, "-c", envLine+` sh -c 'printf "%s\n" "$AA_GATEWAY_URL" "$AA_AGENT_ORG_ID" "$AA_AGENT_TEAM_ID" "$AA_AGENT_ID" "$AA_AGENT_CREDENTIAL_TOKEN"'`).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{"http://127.0.0.1:50051", a.agent.OrgID, a.agent.TeamID, a.agent.AgentID, a.token}, "\n") + "\n"
	if string(got) != want {
		t.Fatalf("the shell read the environment as\n%q\nwant\n%q", got, want)
	}
	if words := shellWords(t, envLine); strings.Join(words, "\n") != strings.Join([]string{
		"AA_GATEWAY_URL=http://127.0.0.1:50051", "AA_AGENT_ORG_ID=" + a.agent.OrgID, "AA_AGENT_TEAM_ID=" + a.agent.TeamID,
		"AA_AGENT_ID=" + a.agent.AgentID, "AA_AGENT_CREDENTIAL_TOKEN=" + a.token,
	}, "\n") {
		t.Fatalf("the tests' parser disagrees with the shell: %q", words)
	}

	// The body word of the curl line, with OP set, as the operator would.
	body, _, _ := strings.Cut(strings.TrimPrefix(curlLine, "curl --json "), " $OPS")
	got, err = exec.Command(sh, "-c", `OP='4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7'; printf '%s' `+body).Output()
	if err != nil {
		t.Fatal(err)
	}
	reg := decode[registration](t, got)
	if reg != (registration{OpID: "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7", OrgID: a.agent.OrgID, TeamID: a.agent.TeamID, AgentID: a.agent.AgentID}) {
		t.Fatalf("registration body %s", got)
	}
}

// A cancelled context (what main never does, but tests and embedders may)
// shuts down the same way.
func TestContextEndShutsDown(t *testing.T) {
	p := launch(t, context.Background(), "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0")
	testutil.Eventually(t, waitLong, func() bool { return strings.Contains(p.stdout.String(), bannerEnd) }, "no banner")
	p.cancel()
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}
