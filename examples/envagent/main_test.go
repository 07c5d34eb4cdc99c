package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

// The agent leaves nothing running, however it ends.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var dev = controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkEnvAgent"}

const devToken = "env-agent-token"

// Generous for a loaded machine under -race; a passing test never waits
// this long.
const waitLong = testutil.WaitLong

// localGateway is the local gateway in-process, as cmd/localgateway runs
// it: gatewaytest admitting dev, and the operator API over real HTTP. It
// sets the environment the gateway would print for dev.
func localGateway(t *testing.T) *httptest.Server {
	t.Helper()
	gw, err := gatewaytest.Start(gatewaytest.WithToken(devToken, dev))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	api, err := operatorapi.New(gw, operatorapi.WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	t.Setenv(opcontrol.EnvGatewayURL, "http://"+gw.Addr())
	t.Setenv(opcontrol.EnvOrgID, dev.OrgID)
	t.Setenv(opcontrol.EnvTeamID, dev.TeamID)
	t.Setenv(opcontrol.EnvAgentID, dev.AgentID)
	t.Setenv(opcontrol.EnvCredentialToken, devToken)
	t.Setenv(opcontrol.EnvFailClosedAfter, "")
	t.Setenv(opcontrol.EnvNATSURL, "")
	return srv
}

// agentRun is the agent's run function running in-process.
type agentRun struct {
	out, errs testutil.SyncBuffer
	cancel    context.CancelFunc
	done      chan int
}

func start(t *testing.T, args ...string) *agentRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &agentRun{cancel: cancel, done: make(chan int, 1)}
	go func() { a.done <- run(ctx, args, &a.out, &a.errs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-a.done:
		case <-time.After(waitLong):
			t.Errorf("the agent did not stop within %v of cancel", waitLong)
		}
	})
	return a
}

// waitFor waits until the output matches re and returns the first match's
// groups.
func (a *agentRun) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	testutil.Eventually(t, waitLong, func() bool { m = re.FindStringSubmatch(a.out.String()); return m != nil },
		"output never matched %s; output:\n%s\nstderr:\n%s", re, a.out.String(), a.errs.String())
	return m
}

func (a *agentRun) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-a.done:
		a.done <- code // for cleanup
		return code
	case <-time.After(waitLong):
		t.Fatalf("the agent did not exit within %v; output:\n%s", waitLong, a.out.String())
		return -1
	}
}

func post(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Post(url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
}

var opLine = regexp.MustCompile(`(?m)^  OP=([0-9a-f]{32}:[0-9a-f]{16})$`)

// A person's session, driven by REST: the agent registers its op with its
// owner, pause holds its calls, resume releases them, and terminate stops
// the agent with exit status 0.
func TestPauseResumeTerminate(t *testing.T) {
	api := localGateway(t)
	a := start(t, "-api", api.URL, "-every", "5ms")
	op := a.waitFor(t, opLine)[1]
	ops := api.URL + operatorapi.OpsPath

	// Registered, with its owning agent, from the environment alone.
	resp, err := http.Get(ops)
	if err != nil {
		t.Fatal(err)
	}
	var list operatorapi.OpList
	err = json.NewDecoder(resp.Body).Decode(&list)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Ops) != 1 || list.Ops[0].OpID != op || list.Ops[0].AgentID != dev.AgentID ||
		list.Ops[0].OrgID != dev.OrgID || list.Ops[0].TeamID != dev.TeamID || list.Ops[0].State != "running" {
		t.Fatalf("registry %+v, want op %s owned by %+v", list.Ops, op, dev)
	}
	a.waitFor(t, regexp.MustCompile(`(?m)^call 2: ok$`))

	post(t, ops+"/"+op+"/pause")
	held := a.waitFor(t, regexp.MustCompile(`(?m)^call (\d+): held: op paused \(`+op+`\)$`))[1]
	// The held call cannot finish before the resume below; a gate that
	// did not hold it would print its ok now, in microseconds.
	okAfterHeld := regexp.MustCompile(`(?m)^call ` + held + `: ok after .* held$`)
	before := a.out.String()
	if okAfterHeld.MatchString(before) || strings.Contains(before, "call "+held+": ok\n") {
		t.Fatalf("call %s finished while paused:\n%s", held, before)
	}
	post(t, ops+"/"+op+"/resume")
	a.waitFor(t, okAfterHeld)

	post(t, ops+"/"+op+"/terminate")
	if code := a.wait(t); code != 0 {
		t.Fatalf("exit status %d after terminate, want 0; stderr:\n%s", code, a.errs.String())
	}
	a.waitFor(t, regexp.MustCompile(`(?m)^call \d+: terminated: FailedPrecondition, op terminated \(`+op+`\)$`))
}

// An interrupt ends the agent with 0, also while a call is held.
func TestInterruptWhileHeld(t *testing.T) {
	api := localGateway(t)
	a := start(t, "-api", api.URL, "-every", "5ms")
	op := a.waitFor(t, opLine)[1]
	post(t, api.URL+operatorapi.OpsPath+"/"+op+"/pause")
	a.waitFor(t, regexp.MustCompile(`(?m)^call \d+: held: `))
	a.cancel()
	if code := a.wait(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	a.waitFor(t, regexp.MustCompile(`(?m)^call \d+: interrupted$`))
}

// A halt of the whole agent reaches it too, with the scope it came from.
func TestAgentHalt(t *testing.T) {
	api := localGateway(t)
	a := start(t, "-api", api.URL, "-every", "5ms")
	op := a.waitFor(t, opLine)[1]
	resp, err := http.Post(api.URL+operatorapi.OpsPath+"/"+op+"/halt-agent", "application/json", strings.NewReader(`{"action":"terminate"}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("halt-agent: %s", resp.Status)
	}
	if code := a.wait(t); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	a.waitFor(t, regexp.MustCompile(`(?m)^call \d+: terminated: FailedPrecondition, agent terminated \(agent:`+dev.AgentID+`\)$`))
}

// What cannot work is exit status 1 with the reason, never a hang.
func TestFailures(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, apiURL string) []string
		want  string
	}{
		{"no agent id", func(t *testing.T, apiURL string) []string {
			t.Setenv(opcontrol.EnvAgentID, "")
			return []string{"-api", apiURL}
		}, "AA_AGENT_ID"},
		{"malformed gateway URL", func(t *testing.T, apiURL string) []string {
			t.Setenv(opcontrol.EnvGatewayURL, "http://127.0.0.1:1/path")
			return []string{"-api", apiURL}
		}, "AA_GATEWAY_URL"},
		{"refused credential", func(t *testing.T, apiURL string) []string {
			t.Setenv(opcontrol.EnvCredentialToken, "not-the-token")
			return []string{"-api", apiURL, "-wait", "300ms"}
		}, "the gateway stream is not live after 300ms: stream unauthorized (Unauthenticated)"},
		{"no operator API there", func(t *testing.T, apiURL string) []string {
			return []string{"-api", apiURL + "/elsewhere"}
		}, "registering the op: POST " + "%API%/elsewhere/api/v1/ops: 404 Not Found not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := localGateway(t)
			a := start(t, tt.setup(t, api.URL)...)
			if code := a.wait(t); code != 1 {
				t.Fatalf("exit status %d, want 1; stderr:\n%s", code, a.errs.String())
			}
			if want := strings.ReplaceAll(tt.want, "%API%", api.URL); !strings.Contains(a.errs.String(), want) {
				t.Fatalf("stderr does not say %q:\n%s", want, a.errs.String())
			}
		})
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-every", "0s"}, {"-wait", "-1s"}, {"extra"}, {"-api", "127.0.0.1:7391"}, {"-api", "ftp://x"}, {"-nope"}} {
		var out, errs testutil.SyncBuffer
		if code := run(context.Background(), args, &out, &errs); code != 2 {
			t.Errorf("%q: exit status %d, want 2", args, code)
		}
		if errs.String() == "" {
			t.Errorf("%q: no message", args)
		}
	}
}
