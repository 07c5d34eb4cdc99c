package operatorapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

var (
	alice = controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkAlice"}
	// bob differs from alice in the agent id only.
	bob = controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkBob"}
)

const (
	aliceToken = "alice-token"
	bobToken   = "bob-token"
	// OpenTelemetry-form op ids, as the gateway forms them.
	aliceOp = "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"
	bobOp   = "0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331"
	// waitFor is a generous deadline for asynchronous effects on a loaded
	// machine.
	waitFor = 20 * time.Second
)

// clock is a settable clock for WithClock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 8, 23, 10, 0, 0, 123456789, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a gateway, the operator API over real HTTP on loopback, and the
// stores of alice and bob kept fresh by real subscribers over real gRPC.
type env struct {
	t          *testing.T
	gw         *gatewaytest.Gateway
	srv        *httptest.Server
	clock      *clock
	alice, bob *controlstore.Store
}

func newEnv(t *testing.T, opts ...operatorapi.Option) *env {
	t.Helper()
	gw, err := gatewaytest.Start(gatewaytest.WithToken(aliceToken, alice), gatewaytest.WithToken(bobToken, bob))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	e := &env{t: t, gw: gw, clock: newClock()}
	h, err := operatorapi.New(gw, append([]operatorapi.Option{operatorapi.WithLogger(nil), operatorapi.WithClock(e.clock.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = newServer(t, h)
	e.alice = subscribe(t, gw, alice, aliceToken)
	e.bob = subscribe(t, gw, bob, bobToken)
	return e
}

// newServer serves h over real HTTP on loopback until the test ends.
func newServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// subscribe returns agent's store, kept fresh by a live subscriber.
func subscribe(t *testing.T, gw *gatewaytest.Gateway, agent controlstore.Agent, token string) *controlstore.Store {
	t.Helper()
	cc, err := grpc.NewClient(gw.Addr(), append(stream.GatewayDialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	store := testutil.NewStore(t, agent)
	sub := stream.NewSubscriber(cc, store, stream.WithCredentialToken(token), stream.WithLogger(nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("subscriber of %s: %v", agent.AgentID, err)
		}
		_ = cc.Close()
	})
	select {
	case <-sub.Ready():
	case <-time.After(waitFor):
		t.Fatalf("subscriber of %s never live: %+v", agent.AgentID, sub.Status())
	}
	return store
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request; a non-empty body goes as application/json unless
// header says otherwise.
func (e *env) do(method, path, body string, header ...string) response {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.srv.URL+path, bytes.NewBufferString(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (e *env) post(path, body string) response {
	e.t.Helper()
	return e.do(http.MethodPost, path, body)
}

// register registers opID owned by owner (nil: no owner) and checks the 201.
func (e *env) register(opID string, owner *controlstore.Agent) operatorapi.OpRecord {
	e.t.Helper()
	body := map[string]string{"op_id": opID}
	if owner != nil {
		body["org_id"], body["team_id"], body["agent_id"] = owner.OrgID, owner.TeamID, owner.AgentID
	}
	b, _ := json.Marshal(body)
	r := e.post(operatorapi.OpsPath, string(b))
	if r.status != http.StatusCreated {
		e.t.Fatalf("register %q: %d %s", opID, r.status, r.body)
	}
	return decode[operatorapi.OpRecord](e.t, r)
}

// decode decodes r's body strictly into T and checks it is JSON.
func decode[T any](t *testing.T, r response) T {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json (body %s)", ct, r.body)
	}
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	var v T
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
	return v
}

// wantError checks that r is an error response with status and code.
func wantError(t *testing.T, what string, r response, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d (body %s)", what, r.status, status, r.body)
	}
	eb := decode[operatorapi.ErrorBody](t, r)
	if eb.Code != code || eb.Message == "" {
		t.Fatalf("%s: error body %+v, want code %q and a message", what, eb, code)
	}
}

// eventually polls cond until it holds or the generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, waitFor, cond, "waiting for %s", what)
}

// stateIs reports whether store records want for id.
func stateIs(store *controlstore.Store, id string, want controlstore.State) func() bool {
	return func() bool { return store.State(id) == want }
}

// published returns how many envelopes the gateway has published.
func (e *env) published() uint64 { return e.gw.Stats().Published }
