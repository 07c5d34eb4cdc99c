package operatorapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

func opPath(id, endpoint string) string { return operatorapi.OpsPath + "/" + id + "/" + endpoint }

func TestRegisterAndList(t *testing.T) {
	e := newEnv(t)
	created := e.clock.Now()
	rec := e.register(aliceOp, &alice)
	want := operatorapi.OpRecord{OpID: aliceOp, State: "running", OrgID: alice.OrgID, TeamID: alice.TeamID,
		AgentID: alice.AgentID, CreatedAt: created, UpdatedAt: created}
	if rec != want {
		t.Fatalf("registered %+v, want %+v", rec, want)
	}
	e.register("trace-1:span-1", nil)

	// Registering again is idempotent and never resets the state.
	e.clock.Advance(time.Second)
	if r := e.post(opPath(aliceOp, "pause"), ""); r.status != http.StatusOK {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	again := e.register(aliceOp, &alice)
	if again.State != "paused" || !again.CreatedAt.Equal(created) || !again.UpdatedAt.Equal(created.Add(time.Second)) {
		t.Fatalf("re-registered %+v, want still paused, created %v, updated a second later", again, created)
	}

	r := e.do(http.MethodGet, operatorapi.OpsPath, "")
	if r.status != http.StatusOK {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	list := decode[operatorapi.OpList](t, r)
	if len(list.Ops) != 2 || list.Ops[0].OpID != aliceOp || list.Ops[0].State != "paused" ||
		list.Ops[1].OpID != "trace-1:span-1" || list.Ops[1].State != "running" || list.Ops[1].AgentID != "" {
		t.Fatalf("list %+v, want alice's op paused then the unowned op running, ordered by id", list)
	}
	// No owner: the owner fields are absent, not empty strings.
	if strings.Contains(string(r.body[strings.Index(string(r.body), "trace-1:span-1"):]), "agent_id") {
		t.Fatalf("unowned op listed with an agent_id: %s", r.body)
	}
	if h := e.do(http.MethodHead, operatorapi.OpsPath, ""); h.status != http.StatusOK || len(h.body) != 0 {
		t.Fatalf("HEAD: %d %q", h.status, h.body)
	}

	empty := decode[operatorapi.OpList](t, newEnv(t).do(http.MethodGet, operatorapi.OpsPath, ""))
	if empty.Ops == nil || len(empty.Ops) != 0 {
		t.Fatalf("empty registry listed as %#v, want an empty array", empty.Ops)
	}
}

// Pause, resume and terminate reach the owning agent's store over the
// gateway stream, and only that agent's.
func TestOpActionsReachAgent(t *testing.T) {
	e := newEnv(t)
	e.register(aliceOp, &alice)
	e.register(bobOp, &bob)
	op := controlstore.OpFromID(aliceOp)

	act := func(endpoint string) {
		t.Helper()
		e.clock.Advance(time.Millisecond)
		r := e.post(opPath(aliceOp, endpoint), "")
		if r.status != http.StatusOK {
			t.Fatalf("%s: %d %s", endpoint, r.status, r.body)
		}
		got := decode[operatorapi.ActionAccepted](t, r)
		want := operatorapi.ActionAccepted{OpID: aliceOp, Action: endpoint, AcceptedAt: e.clock.Now()}
		if got != want {
			t.Fatalf("%s answered %+v, want %+v", endpoint, got, want)
		}
	}

	act("pause")
	eventually(t, "alice's op paused", stateIs(e.alice, aliceOp, controlstore.Paused))
	if err := e.alice.Check(op); !errors.Is(err, controlstore.ErrPaused) {
		t.Fatalf("alice's gate while paused: %v, want ErrPaused", err)
	}
	act("resume")
	eventually(t, "alice's op running", stateIs(e.alice, aliceOp, controlstore.Running))
	if err := e.alice.Check(op); err != nil {
		t.Fatalf("alice's gate after resume: %v", err)
	}
	act("pause")
	eventually(t, "alice's op paused again", stateIs(e.alice, aliceOp, controlstore.Paused))
	act("terminate")
	eventually(t, "alice's op terminated", stateIs(e.alice, aliceOp, controlstore.Terminated))
	if err := e.alice.Check(op); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("alice's gate after terminate: %v, want ErrTerminated", err)
	}

	// Terminate is idempotent: 200 again, nothing published.
	before := e.published()
	act("terminate")
	if n := e.published(); n != before {
		t.Fatalf("a repeated terminate published %d envelopes", n-before)
	}

	// Bob saw none of it: a signal for him published after all of alice's
	// arrives after them, and finds his store clean.
	if r := e.post(opPath(bobOp, "pause"), ""); r.status != http.StatusOK {
		t.Fatalf("pause bob: %d %s", r.status, r.body)
	}
	eventually(t, "bob's op paused", stateIs(e.bob, bobOp, controlstore.Paused))
	if n := e.bob.Len(); n != 1 || e.bob.State(aliceOp) != controlstore.Running {
		t.Fatalf("bob's store holds %d entries (alice's op %v), want only his own op", n, e.bob.State(aliceOp))
	}
}

func TestInvalidTransitions(t *testing.T) {
	e := newEnv(t)
	e.register(aliceOp, &alice)
	before := e.published()
	refuse := func(endpoint, state string) {
		t.Helper()
		r := e.post(opPath(aliceOp, endpoint), "")
		wantError(t, endpoint+" when "+state, r, http.StatusConflict, operatorapi.CodeInvalidTransition)
		if msg := decode[operatorapi.ErrorBody](t, r).Message; !strings.Contains(msg, state) {
			t.Fatalf("409 message %q does not name the state %q", msg, state)
		}
	}
	refuse("resume", "running")
	if r := e.post(opPath(aliceOp, "pause"), ""); r.status != http.StatusOK {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	refuse("pause", "paused")
	if r := e.post(opPath(aliceOp, "terminate"), ""); r.status != http.StatusOK {
		t.Fatalf("terminate: %d %s", r.status, r.body)
	}
	refuse("pause", "terminated")
	refuse("resume", "terminated")
	if n := e.published() - before; n != 2 {
		t.Fatalf("published %d envelopes, want 2 (the accepted pause and terminate only)", n)
	}
	eventually(t, "alice's op terminated", stateIs(e.alice, aliceOp, controlstore.Terminated))
}

// An op with no recorded owner changes state in the registry, as upstream,
// but no agent is signalled; it learns its owner from a later registration.
func TestOpWithoutOwner(t *testing.T) {
	e := newEnv(t)
	e.register(aliceOp, nil)
	before := e.published()
	if r := e.post(opPath(aliceOp, "pause"), ""); r.status != http.StatusOK {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if n := e.published(); n != before {
		t.Fatalf("pause of an unowned op published %d envelopes", n-before)
	}
	wantError(t, "halt-agent of an unowned op", e.post(opPath(aliceOp, "halt-agent"), `{"action":"pause"}`),
		http.StatusConflict, operatorapi.CodeNoOwningAgent)

	rec := e.register(aliceOp, &alice)
	if rec.State != "paused" || rec.AgentID != alice.AgentID {
		t.Fatalf("registered with an owner: %+v, want paused and owned by alice", rec)
	}
	wantError(t, "another owner", e.post(operatorapi.OpsPath, `{"op_id":"`+aliceOp+`","agent_id":"`+bob.AgentID+`"}`),
		http.StatusConflict, operatorapi.CodeOwnerConflict)
	// Registering without owner fields leaves the owner alone.
	if rec := e.register(aliceOp, nil); rec.AgentID != alice.AgentID {
		t.Fatalf("re-registered without owner: %+v", rec)
	}
	if r := e.post(opPath(aliceOp, "terminate"), ""); r.status != http.StatusOK {
		t.Fatalf("terminate: %d %s", r.status, r.body)
	}
	eventually(t, "alice's op terminated", stateIs(e.alice, aliceOp, controlstore.Terminated))
}

func TestHaltAgent(t *testing.T) {
	e := newEnv(t)
	e.register(aliceOp, &alice)
	e.register(bobOp, &bob)
	aliceHalt := controlstore.AgentOpIDPrefix + alice.AgentID

	halt := func(action string) {
		t.Helper()
		e.clock.Advance(time.Millisecond)
		r := e.post(opPath(aliceOp, "halt-agent"), `{"action":"`+action+`"}`)
		if r.status != http.StatusOK {
			t.Fatalf("halt-agent %s: %d %s", action, r.status, r.body)
		}
		got := decode[operatorapi.HaltAccepted](t, r)
		want := operatorapi.HaltAccepted{Scope: "agent", Target: alice.AgentID, Action: action, AcceptedAt: e.clock.Now()}
		if got != want {
			t.Fatalf("halt-agent %s answered %+v, want %+v", action, got, want)
		}
	}
	halt("pause")
	eventually(t, "alice halted", stateIs(e.alice, aliceHalt, controlstore.Paused))
	// Every op of alice is held, even one the registry never heard of.
	var pe *controlstore.PausedError
	if err := e.alice.Check(controlstore.OpFromID("trace-x:span-x")); !errors.As(err, &pe) || pe.Scope != controlstore.ScopeAgent {
		t.Fatalf("alice's gate: %v, want a pause of scope agent", err)
	}
	// Bob is not: a signal for him after alice's halt finds his scope running.
	if r := e.post(opPath(bobOp, "pause"), ""); r.status != http.StatusOK {
		t.Fatalf("pause bob: %d %s", r.status, r.body)
	}
	eventually(t, "bob's op paused", stateIs(e.bob, bobOp, controlstore.Paused))
	if err := e.bob.Check(controlstore.OpFromID("trace-x:span-x")); err != nil {
		t.Fatalf("bob's gate after alice's halt: %v", err)
	}

	// Halts carry no registry state: the op is still running, and any
	// sequence is accepted.
	if rec := e.register(aliceOp, nil); rec.State != "running" {
		t.Fatalf("op after halt-agent: %+v, want running", rec)
	}
	halt("resume")
	eventually(t, "alice resumed", stateIs(e.alice, aliceHalt, controlstore.Running))
	halt("resume")
	halt("terminate")
	eventually(t, "alice terminated", stateIs(e.alice, aliceHalt, controlstore.Terminated))
	halt("terminate")
}

func TestGlobalHalt(t *testing.T) {
	e := newEnv(t)
	halt := func(action string) {
		t.Helper()
		e.clock.Advance(time.Millisecond)
		r := e.post(operatorapi.GlobalHaltPath, `{"action":"`+action+`"}`)
		if r.status != http.StatusOK {
			t.Fatalf("global %s: %d %s", action, r.status, r.body)
		}
		got := decode[operatorapi.HaltAccepted](t, r)
		want := operatorapi.HaltAccepted{Scope: "global", Target: "", Action: action, AcceptedAt: e.clock.Now()}
		if got != want {
			t.Fatalf("global %s answered %+v, want %+v", action, got, want)
		}
		// target is present, as an empty string.
		var raw map[string]any
		if err := json.Unmarshal(r.body, &raw); err != nil || raw["target"] != "" {
			t.Fatalf("global halt body %s: want \"target\":\"\"", r.body)
		}
	}
	both := func(what string, want controlstore.State) {
		t.Helper()
		eventually(t, "alice "+what, stateIs(e.alice, controlstore.GlobalOpID, want))
		eventually(t, "bob "+what, stateIs(e.bob, controlstore.GlobalOpID, want))
	}
	halt("pause")
	both("paused", controlstore.Paused)
	halt("resume")
	both("resumed", controlstore.Running)
	halt("terminate")
	both("terminated", controlstore.Terminated)
	// Sticky, on the agents' side: a later resume is accepted but lifts nothing.
	halt("resume")
	if r := e.post(opPath("nobody", "pause"), ""); r.status != http.StatusNotFound {
		t.Fatalf("unknown op: %d", r.status)
	}
	if err := e.alice.Check(controlstore.Op{}); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("alice after global terminate and resume: %v, want ErrTerminated", err)
	}
}

// Every error the API answers, with its status and code.
func TestErrors(t *testing.T) {
	e := newEnv(t)
	e.register(aliceOp, &alice)
	e.register("unowned", nil)
	long := strings.Repeat("x", controlstore.MaxOpIDLen+1)
	big := `{"action":"` + strings.Repeat("p", operatorapi.MaxBodyBytes) + `"}`
	const halt = `{"action":"pause"}`

	for _, tc := range []struct {
		name         string
		method, path string
		body         string
		header       []string
		status       int
		code         string
	}{
		// 400: blank, malformed and reserved op ids.
		{"blank id pause", "POST", opPath("%20", "pause"), "", nil, 400, operatorapi.CodeBlankOpID},
		{"empty id resume", "POST", opPath("", "resume"), "", nil, 400, operatorapi.CodeBlankOpID},
		{"blank id terminate", "POST", opPath("%09", "terminate"), "", nil, 400, operatorapi.CodeBlankOpID},
		{"blank id halt-agent", "POST", opPath("%20", "halt-agent"), halt, nil, 400, operatorapi.CodeBlankOpID},
		{"blank id register", "POST", operatorapi.OpsPath, `{"op_id":" "}`, nil, 400, operatorapi.CodeBlankOpID},
		{"missing id register", "POST", operatorapi.OpsPath, `{"agent_id":"a"}`, nil, 400, operatorapi.CodeBlankOpID},
		{"id not UTF-8", "POST", opPath("%FF", "pause"), "", nil, 400, operatorapi.CodeInvalidOpID},
		{"id too long", "POST", opPath(long, "pause"), "", nil, 400, operatorapi.CodeInvalidOpID},
		{"id too long register", "POST", operatorapi.OpsPath, `{"op_id":"` + long + `"}`, nil, 400, operatorapi.CodeInvalidOpID},
		{"global id register", "POST", operatorapi.OpsPath, `{"op_id":"*"}`, nil, 400, operatorapi.CodeInvalidOpID},
		{"agent id register", "POST", operatorapi.OpsPath, `{"op_id":"agent:did:key:z6MkAlice"}`, nil, 400, operatorapi.CodeInvalidOpID},
		{"global id pause", "POST", opPath("*", "pause"), "", nil, 400, operatorapi.CodeInvalidOpID},
		// 400: actions.
		{"unknown action halt-agent", "POST", opPath(aliceOp, "halt-agent"), `{"action":"stop"}`, nil, 400, operatorapi.CodeUnknownAction},
		{"uppercase action global", "POST", operatorapi.GlobalHaltPath, `{"action":"PAUSE"}`, nil, 400, operatorapi.CodeUnknownAction},
		{"missing action global", "POST", operatorapi.GlobalHaltPath, `{}`, nil, 400, operatorapi.CodeUnknownAction},
		// 400: bodies.
		{"empty body", "POST", operatorapi.GlobalHaltPath, "", []string{"Content-Type", "application/json"}, 400, operatorapi.CodeInvalidBody},
		{"not JSON", "POST", operatorapi.GlobalHaltPath, `action=pause`, nil, 400, operatorapi.CodeInvalidBody},
		{"array", "POST", operatorapi.GlobalHaltPath, `["pause"]`, nil, 400, operatorapi.CodeInvalidBody},
		{"trailing data", "POST", operatorapi.GlobalHaltPath, `{"action":"pause"}{"action":"terminate"}`, nil, 400, operatorapi.CodeInvalidBody},
		{"unknown field", "POST", opPath(aliceOp, "halt-agent"), `{"action":"pause","scope":"all"}`, nil, 400, operatorapi.CodeInvalidBody},
		{"duplicate field", "POST", operatorapi.GlobalHaltPath, `{"action":"pause","action":"terminate"}`, nil, 400, operatorapi.CodeInvalidBody},
		{"number", "POST", operatorapi.GlobalHaltPath, `{"action":1}`, nil, 400, operatorapi.CodeInvalidBody},
		{"null", "POST", operatorapi.GlobalHaltPath, `{"action":null}`, nil, 400, operatorapi.CodeInvalidBody},
		{"invalid UTF-8", "POST", operatorapi.OpsPath, "{\"op_id\":\"a\xffb\"}", nil, 400, operatorapi.CodeInvalidBody},
		{"org without agent", "POST", operatorapi.OpsPath, `{"op_id":"x","org_id":"acme"}`, nil, 400, operatorapi.CodeInvalidBody},
		{"team with empty agent", "POST", operatorapi.OpsPath, `{"op_id":"x","team_id":"t","agent_id":""}`, nil, 400, operatorapi.CodeInvalidBody},
		// 413, 415.
		{"body too large", "POST", operatorapi.GlobalHaltPath, big, nil, 413, operatorapi.CodeBodyTooLarge},
		{"no content type", "POST", operatorapi.GlobalHaltPath, halt, []string{"Content-Type", ""}, 415, operatorapi.CodeUnsupportedMediaType},
		{"form content type", "POST", opPath(aliceOp, "halt-agent"), halt, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, operatorapi.CodeUnsupportedMediaType},
		// 404: ops and endpoints.
		{"unknown op pause", "POST", opPath("trace-9:span-9", "pause"), "", nil, 404, operatorapi.CodeOpNotFound},
		{"unknown op resume", "POST", opPath("trace-9:span-9", "resume"), "", nil, 404, operatorapi.CodeOpNotFound},
		{"unknown op terminate", "POST", opPath("trace-9:span-9", "terminate"), "", nil, 404, operatorapi.CodeOpNotFound},
		{"unknown op halt-agent", "POST", opPath("trace-9:span-9", "halt-agent"), halt, nil, 404, operatorapi.CodeOpNotFound},
		{"root", "GET", "/", "", nil, 404, operatorapi.CodeNotFound},
		{"prefix only", "GET", "/api/v1/opsx", "", nil, 404, operatorapi.CodeNotFound},
		{"trailing slash", "GET", operatorapi.OpsPath + "/", "", nil, 404, operatorapi.CodeNotFound},
		{"id only", "POST", operatorapi.OpsPath + "/" + aliceOp, "", nil, 404, operatorapi.CodeNotFound},
		{"unknown endpoint", "POST", opPath(aliceOp, "explode"), "", nil, 404, operatorapi.CodeNotFound},
		{"extra segment", "POST", opPath(aliceOp, "pause") + "/now", "", nil, 404, operatorapi.CodeNotFound},
		{"global without halt", "POST", operatorapi.OpsPath + "/global", "", nil, 404, operatorapi.CodeNotFound},
		// 405.
		{"GET pause", "GET", opPath(aliceOp, "pause"), "", nil, 405, operatorapi.CodeMethodNotAllowed},
		{"PUT halt-agent", "PUT", opPath(aliceOp, "halt-agent"), halt, nil, 405, operatorapi.CodeMethodNotAllowed},
		{"GET global", "GET", operatorapi.GlobalHaltPath, "", nil, 405, operatorapi.CodeMethodNotAllowed},
		{"DELETE ops", "DELETE", operatorapi.OpsPath, "", nil, 405, operatorapi.CodeMethodNotAllowed},
		// 409.
		{"no owning agent", "POST", opPath("unowned", "halt-agent"), halt, nil, 409, operatorapi.CodeNoOwningAgent},
		{"owner conflict", "POST", operatorapi.OpsPath, `{"op_id":"` + aliceOp + `","agent_id":"other"}`, nil, 409, operatorapi.CodeOwnerConflict},
		{"invalid transition", "POST", opPath(aliceOp, "resume"), "", nil, 409, operatorapi.CodeInvalidTransition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, list := e.published(), e.do("GET", operatorapi.OpsPath, "").body
			r := e.do(tc.method, tc.path, tc.body, tc.header...)
			wantError(t, tc.name, r, tc.status, tc.code)
			if tc.status == http.StatusMethodNotAllowed && r.header.Get("Allow") == "" {
				t.Fatal("405 without an Allow header")
			}
			// A refused request changes nothing and publishes nothing.
			if n := e.published(); n != before {
				t.Fatalf("published %d envelopes", n-before)
			}
			if after := e.do("GET", operatorapi.OpsPath, "").body; string(after) != string(list) {
				t.Fatalf("registry changed from %s to %s", list, after)
			}
		})
	}
	if got := e.do("GET", opPath(aliceOp, "pause"), "").header.Get("Allow"); got != "POST" {
		t.Fatalf("Allow %q for an action, want POST", got)
	}
	if got := e.do("DELETE", operatorapi.OpsPath, "").header.Get("Allow"); got != "GET, HEAD, POST" {
		t.Fatalf("Allow %q for the ops collection, want GET, HEAD, POST", got)
	}
}

// Op ids travel as one escaped path segment: a did:key agent's colons and
// an escaped slash are part of the id.
func TestOpIDEscaping(t *testing.T) {
	e := newEnv(t)
	id := "trace/1:span 1"
	e.register(id, &alice)
	if r := e.post(opPath("trace%2F1:span%201", "pause"), ""); r.status != http.StatusOK {
		t.Fatalf("pause of an escaped id: %d %s", r.status, r.body)
	}
	eventually(t, "alice's op paused", stateIs(e.alice, id, controlstore.Paused))
}

// recorder is a Publisher that records its calls and answers err.
type recorder struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (p *recorder) PublishAgentHalt(_ context.Context, agent controlstore.Agent, sig controlstore.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("agent %s/%s/%s %v", agent.OrgID, agent.TeamID, agent.AgentID, sig))
	return p.err
}

func (p *recorder) PublishGlobalHalt(_ context.Context, sig controlstore.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf("global %v", sig))
	return p.err
}

func (p *recorder) got() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.calls, "; ")
}

func TestPublisher(t *testing.T) {
	const wantCalls = "agent acme/platform/did:key:z6MkAlice pause; global terminate"
	halts := func(t *testing.T, e *env) {
		t.Helper()
		if r := e.post(opPath(aliceOp, "halt-agent"), `{"action":"pause"}`); r.status != http.StatusOK {
			t.Fatalf("halt-agent: %d %s", r.status, r.body)
		}
		if r := e.post(operatorapi.GlobalHaltPath, `{"action":"terminate"}`); r.status != http.StatusOK {
			t.Fatalf("global: %d %s", r.status, r.body)
		}
	}

	t.Run("instead", func(t *testing.T) {
		p := &recorder{}
		e := newEnv(t, operatorapi.WithPublisher(p))
		e.register(aliceOp, &alice)
		before := e.published()
		halts(t, e)
		if got := p.got(); got != wantCalls {
			t.Fatalf("publisher got %q, want %q", got, wantCalls)
		}
		if n := e.published(); n != before {
			t.Fatalf("the gateway published %d halts too", n-before)
		}
		// Per-op signals still go to the gateway.
		if r := e.post(opPath(aliceOp, "pause"), ""); r.status != http.StatusOK {
			t.Fatalf("pause: %d %s", r.status, r.body)
		}
		eventually(t, "alice's op paused", stateIs(e.alice, aliceOp, controlstore.Paused))
		if got := p.got(); got != wantCalls {
			t.Fatalf("publisher got %q after a per-op pause", got)
		}
	})

	t.Run("bridged", func(t *testing.T) {
		p := &recorder{}
		e := newEnv(t, operatorapi.WithBridgedPublisher(p))
		e.register(aliceOp, &alice)
		halts(t, e)
		if got := p.got(); got != wantCalls {
			t.Fatalf("publisher got %q, want %q", got, wantCalls)
		}
		eventually(t, "alice halted through the gateway", stateIs(e.alice, controlstore.AgentOpIDPrefix+alice.AgentID, controlstore.Paused))
		eventually(t, "bob terminated through the gateway", stateIs(e.bob, controlstore.GlobalOpID, controlstore.Terminated))
	})

	for _, bridged := range []bool{false, true} {
		t.Run(fmt.Sprintf("failing bridged=%v", bridged), func(t *testing.T) {
			p := &recorder{err: errors.New("nats: timeout")}
			opt := operatorapi.WithPublisher(p)
			if bridged {
				opt = operatorapi.WithBridgedPublisher(p)
			}
			e := newEnv(t, opt)
			e.register(aliceOp, &alice)
			before := e.published()
			r := e.post(opPath(aliceOp, "halt-agent"), `{"action":"terminate"}`)
			wantError(t, "halt-agent", r, http.StatusServiceUnavailable, operatorapi.CodeChannelUnavailable)
			if msg := decode[operatorapi.ErrorBody](t, r).Message; !strings.Contains(msg, "nats: timeout") {
				t.Fatalf("503 message %q does not carry the channel's error", msg)
			}
			wantError(t, "global", e.post(operatorapi.GlobalHaltPath, `{"action":"pause"}`),
				http.StatusServiceUnavailable, operatorapi.CodeChannelUnavailable)
			if n := e.published(); n != before {
				t.Fatalf("the gateway published %d halts the channel refused", n-before)
			}
			if got := p.got(); got != "agent acme/platform/did:key:z6MkAlice terminate; global pause" {
				t.Fatalf("publisher got %q", got)
			}
		})
	}
}

// blocker is a Publisher that blocks until released or its context ends
// (unless ignoreCtx).
type blocker struct {
	entered   chan struct{}
	release   chan struct{}
	ctxErr    chan error // the context's error when the call returned
	ignoreCtx bool
}

func newBlocker() *blocker {
	return &blocker{entered: make(chan struct{}, 1), release: make(chan struct{}), ctxErr: make(chan error, 1)}
}

func (b *blocker) PublishAgentHalt(ctx context.Context, _ controlstore.Agent, _ controlstore.Signal) error {
	return b.PublishGlobalHalt(ctx, controlstore.SignalUnspecified)
}

func (b *blocker) PublishGlobalHalt(ctx context.Context, _ controlstore.Signal) error {
	b.entered <- struct{}{}
	if b.ignoreCtx {
		<-b.release
		b.ctxErr <- ctx.Err()
		return nil
	}
	select {
	case <-b.release:
		b.ctxErr <- ctx.Err()
		return nil
	case <-ctx.Done():
		b.ctxErr <- ctx.Err()
		return ctx.Err()
	}
}

func TestPublishTimeout(t *testing.T) {
	b := newBlocker()
	e := newEnv(t, operatorapi.WithPublisher(b), operatorapi.WithPublishTimeout(50*time.Millisecond))
	wantError(t, "global", e.post(operatorapi.GlobalHaltPath, `{"action":"pause"}`),
		http.StatusServiceUnavailable, operatorapi.CodeChannelUnavailable)
	if err := <-b.ctxErr; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publisher's context ended with %v, want DeadlineExceeded", err)
	}
}

// A publisher that hangs, ignoring its context, holds up its own request
// only: a later halt gives up waiting for it within the publish timeout.
func TestHungPublisher(t *testing.T) {
	b := newBlocker()
	b.ignoreCtx = true
	e := newEnv(t, operatorapi.WithPublisher(b), operatorapi.WithPublishTimeout(100*time.Millisecond))
	first := make(chan response, 1)
	go func() { first <- e.post(operatorapi.GlobalHaltPath, `{"action":"pause"}`) }()
	<-b.entered
	r := e.post(operatorapi.GlobalHaltPath, `{"action":"terminate"}`)
	wantError(t, "a halt behind a hung one", r, http.StatusServiceUnavailable, operatorapi.CodeChannelUnavailable)
	if msg := decode[operatorapi.ErrorBody](t, r).Message; !strings.Contains(msg, "earlier halt") {
		t.Fatalf("503 message %q does not say why", msg)
	}
	close(b.release)
	if r := <-first; r.status != http.StatusOK {
		t.Fatalf("the hung halt, once its publisher returned nil: %d %s", r.status, r.body)
	}
	// Its context can only have run out, never been cancelled.
	if err := <-b.ctxErr; err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the hung publisher's context: %v", err)
	}
}

// A client that goes away does not abandon the halt it sent.
func TestHaltOutlivesClient(t *testing.T) {
	b := newBlocker()
	gw, err := gatewaytest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	h, err := operatorapi.New(gw, operatorapi.WithLogger(nil), operatorapi.WithPublisher(b), operatorapi.WithPublishTimeout(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	reqGone := make(chan struct{})
	served := make(chan struct{})
	e := &env{t: t}
	e.srv = newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(served)
		go func() { <-r.Context().Done(); close(reqGone) }()
		h.ServeHTTP(w, r)
	}))

	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+operatorapi.GlobalHaltPath, strings.NewReader(`{"action":"terminate"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	clientDone := make(chan error, 1)
	go func() {
		resp, err := e.srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		clientDone <- err
	}()
	<-b.entered
	cancel()
	if err := <-clientDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v, want Canceled", err)
	}
	<-reqGone // the server has seen the client go
	close(b.release)
	if err := <-b.ctxErr; err != nil {
		t.Fatalf("publisher's context ended with %v when the client went away", err)
	}
	<-served
}

// Concurrent requests on shared ops: every accepted transition reaches the
// agent in registry order, so the agent's store ends where the registry does.
func TestConcurrentRequests(t *testing.T) {
	e := newEnv(t)
	ids := []string{"trace-a:span-a", "trace-b:span-b", "trace-c:span-c"}
	const workers, rounds = 6, 20 // at most 360 requests, far fewer publishes than the ring holds
	endpoints := []string{"pause", "resume", "pause", "resume", "terminate"}
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				id := ids[(w+i)%len(ids)]
				var r response
				switch {
				case i%4 == 0:
					r = e.do(http.MethodPost, operatorapi.OpsPath, `{"op_id":"`+id+`","agent_id":"`+alice.AgentID+`","org_id":"acme","team_id":"platform"}`)
				case w == 0 && i == rounds-1:
					r = e.post(opPath(id, "terminate"), "")
				case i%4 == 3:
					r = e.do(http.MethodGet, operatorapi.OpsPath, "")
				default:
					r = e.post(opPath(id, endpoints[(w*i)%4]), "")
				}
				switch r.status {
				case http.StatusOK, http.StatusCreated, http.StatusConflict, http.StatusNotFound:
				default:
					errs <- fmt.Errorf("status %d: %s", r.status, r.body)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	published := e.published()
	if published == 0 {
		t.Fatal("nothing was published")
	}
	eventually(t, "alice's store to apply every signal", func() bool { return e.alice.Stats().Applied == published })
	list := decode[operatorapi.OpList](t, e.do(http.MethodGet, operatorapi.OpsPath, ""))
	for _, rec := range list.Ops {
		if got := e.alice.State(rec.OpID).String(); got != rec.State {
			t.Errorf("op %s: registry %s, agent %s", rec.OpID, rec.State, got)
		}
	}
}

func TestRegistryFullOverHTTP(t *testing.T) {
	e := newEnv(t, operatorapi.WithMaxOps(1))
	e.register(aliceOp, &alice)
	wantError(t, "second op", e.post(operatorapi.OpsPath, `{"op_id":"`+bobOp+`"}`),
		http.StatusServiceUnavailable, operatorapi.CodeRegistryFull)
	if r := e.post(opPath(aliceOp, "terminate"), ""); r.status != http.StatusOK {
		t.Fatalf("terminate: %d %s", r.status, r.body)
	}
	e.clock.Advance(operatorapi.SweepRetention)
	e.register(bobOp, &bob)
	wantError(t, "swept op", e.post(opPath(aliceOp, "terminate"), ""), http.StatusNotFound, operatorapi.CodeOpNotFound)
}

func TestNew(t *testing.T) {
	gw, err := gatewaytest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	for _, opt := range []operatorapi.Option{
		operatorapi.WithMaxOps(0),
		operatorapi.WithMaxOps(operatorapi.MaxOpsLimit + 1),
		operatorapi.WithPublishTimeout(0),
		operatorapi.WithPublishTimeout(-time.Second),
	} {
		if _, err := operatorapi.New(gw, opt); err == nil {
			t.Error("New accepted an option out of range")
		}
	}
	if _, err := operatorapi.New(gw, nil, operatorapi.WithPublisher(nil), operatorapi.WithBridgedPublisher(nil),
		operatorapi.WithClock(nil), operatorapi.WithLogger(nil), operatorapi.WithMaxOps(operatorapi.MaxOpsLimit)); err != nil {
		t.Fatalf("New with nil options: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("New(nil) did not panic")
		}
	}()
	_, _ = operatorapi.New(nil)
}
