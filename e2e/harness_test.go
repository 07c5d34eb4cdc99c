package e2e_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Generous bounds for 2 shared cores under -race: nothing waits for them
// unless something is broken.
const (
	waitFor = 30 * time.Second
	// longWork is a Work call that only a kill ends within the test.
	longWork = time.Hour
)

var (
	agentOne = controlstore.Agent{OrgID: "acme", TeamID: "e2e", AgentID: "did:key:z6MkE2EAgentOne"}
	agentTwo = controlstore.Agent{OrgID: "acme", TeamID: "e2e", AgentID: "did:key:z6MkE2EAgentTwo"}
)

const (
	tokenOne = "e2e-token-one"
	tokenTwo = "e2e-token-two"
)

// env is one world: a gateway that knows both agents' tokens, a tool server
// and real SDK tracing. Everything is closed when the test ends.
type env struct {
	gw    *gatewaytest.Gateway
	tools *toolserver.Server
	tr    *tracing
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{tr: newTracing(t)}
	gw, err := gatewaytest.Start(gatewaytest.WithToken(tokenOne, agentOne), gatewaytest.WithToken(tokenTwo, agentTwo))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	e.gw = gw
	tools, err := toolserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tools.Close)
	e.tools = tools
	return e
}

// agentConfig varies how an agent is wired.
type agentConfig struct {
	id    controlstore.Agent
	token string
	sub   []stream.Option
	gate  []interceptor.Option
	// gateGatewayConn installs interceptor.DialOptions on the gateway
	// connection too, as a user might by applying one set of dial
	// options everywhere.
	gateGatewayConn bool
}

// agent is an agent wired as in production: store, subscriber on a gateway
// connection dialled with stream.GatewayDialOptions, tool connection dialled with
// interceptor.DialOptions.
type agent struct {
	id       controlstore.Agent
	store    *controlstore.Store
	sub      *stream.Subscriber
	gwConn   *grpc.ClientConn
	toolConn *grpc.ClientConn
	tools    *toolserver.Client
}

func (e *env) startAgent(t testing.TB, cfg agentConfig) *agent {
	t.Helper()
	if cfg.id.AgentID == "" {
		cfg.id, cfg.token = agentOne, tokenOne
	}
	a := &agent{id: cfg.id, store: testutil.NewStore(t, cfg.id)}
	gwOpts := stream.GatewayDialOptions()
	if cfg.gateGatewayConn {
		gwOpts = append(interceptor.DialOptions(a.store), gwOpts...)
	}
	a.gwConn = dial(t, e.gw.Addr(), gwOpts...)
	subOpts := append([]stream.Option{stream.WithCredentialToken(cfg.token), stream.WithLogger(nil)}, cfg.sub...)
	a.sub = stream.NewSubscriber(a.gwConn, a.store, subOpts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.sub.Run(ctx) }()
	// Cleanups run last-in first-out: the subscriber stops before its
	// connection closes and before the gateway closes.
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	a.toolConn = dial(t, e.tools.Addr(), interceptor.DialOptions(a.store, cfg.gate...)...)
	a.tools = toolserver.NewClient(a.toolConn)
	select {
	case <-a.sub.Ready():
	case <-time.After(waitFor):
		t.Fatalf("subscriber not live after %v: %+v", waitFor, a.sub.Status())
	}
	return a
}

func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// fastReconnect replaces the default backoff (250 ms to 3 s) and turns the
// reconnect spread (up to 5 s) off, so that tests of disconnects do not
// wait for them; the subscriber still waits at least 1 s per attempt while
// the gateway is away.
func fastReconnect() []stream.Option {
	return []stream.Option{
		stream.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }),
		stream.WithReconnectSpread(0),
	}
}

// signal publishes sig for id through the gateway's publish API, choosing
// the call the operator's action maps to ("*": HaltAll, "agent:{id}":
// HaltAgent, else Publish), and waits until a's store applied it.
func (e *env) signal(t testing.TB, a *agent, id string, sig controlstore.Signal) {
	t.Helper()
	before := a.store.Stats().Applied
	e.publish(a, id, sig)
	waitUntil(t, "store to apply "+sig.String()+" "+id, func() bool { return a.store.Stats().Applied > before })
}

func (e *env) publish(a *agent, id string, sig controlstore.Signal) uint64 {
	switch id {
	case controlstore.GlobalOpID:
		return e.gw.HaltAll(sig)
	case controlstore.AgentOpIDPrefix + a.id.AgentID:
		return e.gw.HaltAgent(a.id, sig)
	}
	return e.gw.Publish(a.id, id, sig)
}

func agentScopeID(a *agent) string { return controlstore.AgentOpIDPrefix + a.id.AgentID }

// waitUntil polls cond until it holds; the test fails after waitFor.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, waitFor, cond, "waiting for %s", what)
}

// waitHeld waits until n calls are parked in a's store.
func waitHeld(t testing.TB, a *agent, n int) {
	t.Helper()
	waitUntil(t, "held calls", func() bool { return a.store.Stats().Held == n })
}

// waitLive waits until a's subscriber is live on a gateway that counts n
// subscribes accepted: a reconnect has happened when n grows.
func (e *env) waitLive(t testing.TB, a *agent, accepted uint64) {
	t.Helper()
	waitUntil(t, "the subscriber to be live again", func() bool {
		return a.sub.Connected() && e.gw.Stats().Accepted >= accepted && e.gw.SubscriberCount() > 0
	})
}

// async runs fn in a goroutine; its error arrives on the channel.
func async(fn func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	return ch
}

// recv waits for an async result.
func recv(t testing.TB, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(waitFor):
		t.Fatalf("%s did not return within %v", what, waitFor)
		return nil
	}
}

// notDone fails if an async call has already returned. Used after waitHeld,
// it checks that a held call is still held now.
func notDone(t testing.TB, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned (%v), want it still held", what, err)
	default:
	}
}

func errorInfo(t testing.TB, err error) *errdetails.ErrorInfo {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	t.Fatalf("no ErrorInfo in %v", err)
	return nil
}

// wantTerminated checks the whole contract of a call of op opID stopped by
// a terminate addressed to target at scope.
func wantTerminated(t testing.TB, err error, opID string, scope controlstore.Scope, target string) {
	t.Helper()
	if err == nil {
		t.Fatalf("call succeeded, want it terminated by %s", target)
	}
	if c := status.Code(err); c != codes.FailedPrecondition {
		t.Fatalf("code %v, want FailedPrecondition (not a bare Canceled): %v", c, err)
	}
	if !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("errors.Is(err, ErrTerminated) = false: %v", err)
	}
	var te *controlstore.TerminatedError
	if !errors.As(err, &te) || te.Scope != scope || te.OpID != target {
		t.Fatalf("TerminatedError = %+v, want scope %v id %q", te, scope, target)
	}
	ei := errorInfo(t, err)
	md := ei.Metadata
	if ei.Reason != interceptor.ReasonTerminated || ei.Domain != interceptor.ErrorDomain ||
		md[interceptor.MetadataOpID] != opID || md[interceptor.MetadataScope] != scope.String() ||
		md[interceptor.MetadataTerminatedID] != target {
		t.Fatalf("ErrorInfo = %v, want OP_TERMINATED op_id %q scope %v terminated_id %q", ei, opID, scope, target)
	}
}

// wantUnavailable checks a call refused while failing closed.
func wantUnavailable(t testing.TB, err error) {
	t.Helper()
	if status.Code(err) != codes.Unavailable || !errors.Is(err, controlstore.ErrUnavailable) {
		t.Fatalf("err = %v, want Unavailable matching controlstore.ErrUnavailable", err)
	}
	if ei := errorInfo(t, err); ei.Reason != interceptor.ReasonUnavailable || ei.Domain != interceptor.ErrorDomain {
		t.Fatalf("ErrorInfo = %v, want OP_CONTROL_UNAVAILABLE", ei)
	}
}

func echo(ctx context.Context, a *agent) error {
	_, err := a.tools.Echo(ctx, "e2e")
	return err
}

// tracing is a real SDK tracer provider recording in memory.
type tracing struct {
	rec    *tracetest.SpanRecorder
	tracer trace.Tracer
}

func newTracing(t testing.TB) *tracing {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &tracing{rec: rec, tracer: tp.Tracer("github.com/opcontrol/opcontrol/e2e")}
}

// op starts the span of a new op and returns its context, span and the op
// id the gateway would address it by. The span ends with the test.
func (tr *tracing) op(t testing.TB, name string) (context.Context, trace.Span, string) {
	ctx, span := tr.tracer.Start(context.Background(), name)
	t.Cleanup(func() { span.End() })
	sc := span.SpanContext()
	return ctx, span, sc.TraceID().String() + ":" + sc.SpanID().String()
}

// eventsNamed returns the events called name on a live SDK span.
func eventsNamed(span trace.Span, name string) []sdktrace.Event {
	ro, ok := span.(sdktrace.ReadOnlySpan)
	if !ok {
		return nil
	}
	var out []sdktrace.Event
	for _, ev := range ro.Events() {
		if ev.Name == name {
			out = append(out, ev)
		}
	}
	return out
}

func attr(ev sdktrace.Event, key attribute.Key) attribute.Value {
	for _, kv := range ev.Attributes {
		if kv.Key == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// waitEntered waits until the tool server runs n calls of method in all.
func (e *env) waitEntered(t testing.TB, method string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if e.tools.Wait(ctx, func() bool { return e.tools.Entered(method) >= n }) != nil {
		t.Fatalf("%d %s call(s) did not reach the tool server within %v (%d did)", n, method, waitFor, e.tools.Entered(method))
	}
}

// waitServerCancelled waits until the tool server has ended a call of
// method with Canceled: the client's cancellation reached the server. No
// call of method may have ended otherwise.
func (e *env) waitServerCancelled(t testing.TB, method string) {
	t.Helper()
	var ends []toolserver.End
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := e.tools.Wait(ctx, func() bool {
		ends = ends[:0]
		for _, se := range e.tools.Ended() {
			if se.Method == method {
				ends = append(ends, se)
			}
		}
		return len(ends) > 0
	})
	if err != nil {
		t.Fatalf("the tool server never ended a %s call within %v", method, waitFor)
	}
	for _, se := range ends {
		if status.Code(se.Err) != codes.Canceled {
			t.Fatalf("the tool server ended %s with %v, want Canceled: the cancellation must reach the server", method, se.Err)
		}
	}
}

// serverEvent waits for the tool server's record of the call of method
// that ended at position pos (counting from 0) and returns it.
func (e *env) serverEvent(t testing.TB, pos int) toolserver.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	evs, err := e.tools.WaitEvents(ctx, pos+1)
	if err != nil {
		t.Fatal(err)
	}
	return evs[pos]
}

// cancelledOnServer reports whether a tool server call ended because the
// client's cancellation reached it: the handler sees either its context end
// (context.Canceled) or, for a stream caught sending, a Canceled status.
func cancelledOnServer(ev toolserver.Event) bool {
	return errors.Is(ev.Err, context.Canceled) || status.Code(ev.Err) == codes.Canceled
}

// countEvents counts the tool server's records of calls of method.
func (e *env) countEvents(method string) int {
	n := 0
	for _, ev := range e.tools.Events() {
		if ev.Method == method {
			n++
		}
	}
	return n
}

// scopeCase is one of the three scopes a signal can be addressed to.
type scopeCase struct {
	scope controlstore.Scope
	// target is the id to address for op opID of agent a.
	target func(a *agent, opID string) string
}

var scopeCases = []scopeCase{
	{controlstore.ScopeOp, func(_ *agent, opID string) string { return opID }},
	{controlstore.ScopeAgent, func(a *agent, _ string) string { return agentScopeID(a) }},
	{controlstore.ScopeGlobal, func(*agent, string) string { return controlstore.GlobalOpID }},
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
