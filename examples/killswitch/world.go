package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// The demo's agents: the subscription triple each registers with the gateway
// and the credential token the gateway's agent registry issued to it.
var demoAgents = []struct {
	id    controlstore.Agent
	token string
}{
	{controlstore.Agent{OrgID: "acme", TeamID: "research", AgentID: "did:key:z6MkDemoAgentOne"}, "demo-token-agent-1"},
	{controlstore.Agent{OrgID: "acme", TeamID: "research", AgentID: "did:key:z6MkDemoAgentTwo"}, "demo-token-agent-2"},
}

// world is everything the demo runs in this process: the bus, the gateway
// and its bridge from the bus, the tool server, tracing and the agents.
type world struct {
	cfg    config
	tl     *timeline
	bus    *jetstreamtest.Server
	busNC  *nats.Conn // the operator API's and the gateway bridge's connection
	pub    *jetstreamtest.Publisher
	bridge *jetstreamtest.Bridge
	gw     *gatewaytest.Gateway
	tools  *toolserver.Server
	tp     *sdktrace.TracerProvider
	spans  *tracetest.SpanRecorder
	tracer trace.Tracer
	agents []*agent
	// witness is a store of agent-2 fed by the gateway stream alone,
	// through agent-2's link: what an agent without the bus would know.
	witness *witness

	// ctx ends at shutdown; every op's context derives from it, so that
	// calls left running by a failed step end too.
	ctx    context.Context
	cancel context.CancelFunc
	calls  sync.WaitGroup // goroutines of calls started with start
}

func newWorld(ctx context.Context, cfg config, tl *timeline) (w *world, err error) {
	w = &world{cfg: cfg, tl: tl}
	w.ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			w.close()
		}
	}()

	opts := make([]gatewaytest.Option, 0, len(demoAgents))
	for _, d := range demoAgents {
		opts = append(opts, gatewaytest.WithToken(d.token, d.id))
	}
	if w.gw, err = gatewaytest.Start(opts...); err != nil {
		return nil, err
	}
	// The bus: JetStream with the stream AA_OPCONTROL, the operator API's
	// publisher, and the gateway's bridge, which republishes every halt on
	// the op-control stream (and replays what the stream retains when it
	// reconnects, as the real bridge does).
	if w.bus, err = jetstreamtest.StartServer(); err != nil {
		return nil, err
	}
	if w.busNC, err = w.bus.Connect(); err != nil {
		return nil, err
	}
	if w.pub, err = jetstreamtest.NewPublisher(w.busNC); err != nil {
		return nil, err
	}
	if w.bridge, err = jetstreamtest.StartBridge(w.busNC, w.gw); err != nil {
		return nil, err
	}
	// The tool server tells the scenario when a tool call's handler is
	// running, so that "terminate mid-call" never races the call's arrival.
	if w.tools, err = toolserver.Start(); err != nil {
		return nil, err
	}
	// Real SDK spans, kept in memory: the interceptor reads the op id from
	// the caller's span and records its decisions as span events.
	w.spans = tracetest.NewSpanRecorder()
	w.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(w.spans))
	w.tracer = w.tp.Tracer("github.com/opcontrol/opcontrol/examples/killswitch")

	tl.header("opcontrol kill-switch demo: one process, loopback only")
	tl.info("bus          %s  (embedded NATS JetStream; stream AA_OPCONTROL)", w.bus.URL())
	tl.info("gateway      %s  (gatewaytest; a credential token registered per agent; bridged from the bus)", w.gw.Addr())
	tl.info("tool server  %s  (Echo, Work, Progress)", w.tools.Addr())
	for i, d := range demoAgents {
		start := time.Now()
		a, err := startAgent(ctx, cfg, tl, i+1, d.id, d.token, w.gw.Addr(), w.bus.URL(), w.tools.Addr())
		if err != nil {
			return nil, err
		}
		w.agents = append(w.agents, a)
		tl.info("%-12s %s  live on the gateway stream and the bus in %s", a.name, d.id.AgentID, ms(time.Since(start)))
	}
	// What agent-2 would know from the gateway stream alone.
	if err := w.startWitness(ctx, w.agents[1]); err != nil {
		return nil, err
	}
	tl.info("witness      agent-2's gateway stream alone, through agent-2's link (no bus)")
	return w, nil
}

// close ends every call, stops the agents, then the servers.
func (w *world) close() {
	w.cancel()
	w.calls.Wait()
	for _, a := range w.agents {
		a.stop()
		w.tl.debugf("%s kill switch stopped", a.name)
	}
	if w.witness != nil {
		w.witness.stop()
	}
	if w.bridge != nil {
		w.bridge.Close()
	}
	if w.busNC != nil {
		w.busNC.Close()
	}
	if w.bus != nil {
		w.bus.Close()
	}
	if w.gw != nil {
		w.gw.Close()
	}
	if w.tools != nil {
		w.tools.Close()
	}
	if w.tp != nil {
		_ = w.tp.Shutdown(context.Background())
	}
}

// op is one operation of an agent: a span, whose ids are the op id.
type op struct {
	label string // "1/A"; "1/-" for calls with no span
	name  string
	agent *agent
	ctx   context.Context
	span  trace.Span // nil for calls with no span
	id    string     // gateway op id "trace_id:span_id"; "" with no span
}

// newOp starts the span of a new op of a.
func (w *world) newOp(a *agent, letter, name string) *op {
	ctx, span := w.tracer.Start(w.ctx, name)
	sc := span.SpanContext()
	return &op{
		label: fmt.Sprintf("%d/%s", a.n, letter),
		name:  name,
		agent: a,
		ctx:   ctx,
		span:  span,
		id:    sc.TraceID().String() + ":" + sc.SpanID().String(),
	}
}

// noSpan is the pseudo-op of a's calls made outside any span: they belong to
// no op, but agent and global halts still stop them.
func (w *world) noSpan(a *agent) *op {
	return &op{label: fmt.Sprintf("%d/-", a.n), name: "(no span)", agent: a, ctx: w.ctx}
}

// callFunc is one tool call made with c on behalf of an op.
type callFunc func(ctx context.Context, c *toolserver.Client) error

func echo(ctx context.Context, c *toolserver.Client) error {
	_, err := c.Echo(ctx, "hello")
	return err
}

func work(d time.Duration) callFunc {
	return func(ctx context.Context, c *toolserver.Client) error { return c.Work(ctx, d) }
}

// pending is a call running in the background.
type pending struct {
	o    *op
	name string
	tl   *timeline
	done chan struct{}
	out  outcome // set before done is closed
}

// start runs fn as a call of o in the background.
func (w *world) start(o *op, name string, fn callFunc) *pending {
	p := &pending{o: o, name: name, tl: w.tl, done: make(chan struct{})}
	// The interceptor records its decision as events on the caller's
	// span; the events this call adds say how it was decided. Calls of
	// one op are made one at a time, so they cannot mix.
	seen := len(spanEvents(o.span))
	w.calls.Add(1)
	go func() {
		defer w.calls.Done()
		defer close(p.done)
		begin := time.Now()
		err := fn(o.ctx, o.agent.client)
		end := time.Now()
		p.out = classify(err, spanEvents(o.span)[seen:], begin, end)
	}()
	return p
}

// wait waits for the call to return, prints it on the timeline and returns
// its outcome; it fails if ctx ends first.
func (p *pending) wait(ctx context.Context) (outcome, error) {
	select {
	case <-p.done:
		p.tl.call(p.o.label, p.name, p.out)
		return p.out, nil
	case <-ctx.Done():
		return outcome{}, fmt.Errorf("%s %s did not return: %w", p.o.label, p.name, ctx.Err())
	}
}

// returned reports whether the call has returned.
func (p *pending) returned() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// call makes a call of o and waits for it.
func (w *world) call(ctx context.Context, o *op, name string, fn callFunc) (outcome, error) {
	return w.start(o, name, fn).wait(ctx)
}

// waitHeld waits until p is held in the gate of its agent's store. It fails
// if p returns instead: the call was not held.
func (w *world) waitHeld(ctx context.Context, p *pending) error {
	store := p.o.agent.store
	err := poll(ctx, func() bool { return store.Stats().Held > 0 || p.returned() })
	if err != nil {
		return fmt.Errorf("%s %s: never held: %w", p.o.label, p.name, err)
	}
	if p.returned() {
		p.tl.call(p.o.label, p.name, p.out)
		return fmt.Errorf("%s %s was not held: it returned at once (%s, %s)", p.o.label, p.name, p.out.decisionText(), p.out.codeText())
	}
	return nil
}

// waitRunning waits until n more calls of method than before have entered
// the tool server's handlers. It fails if any of calls returns first.
func (w *world) waitRunning(ctx context.Context, method string, before, n int, calls ...*pending) error {
	err := poll(ctx, func() bool {
		for _, p := range calls {
			if p.returned() {
				return true
			}
		}
		return w.tools.Entered(method) >= before+n
	})
	for _, p := range calls {
		if p.returned() {
			p.tl.call(p.o.label, p.name, p.out)
			return fmt.Errorf("%s %s returned before the operator acted (%s, %s)", p.o.label, p.name, p.out.decisionText(), p.out.codeText())
		}
	}
	if err != nil {
		return fmt.Errorf("%d %s call(s) never reached the tool server: %w", n, method, err)
	}
	return nil
}

// serverSawCancel waits until the tool server's gRPC server has ended a
// call of method with Canceled, among the calls of method it ended after the
// first mark: the kill reached the server, not just the client.
func (w *world) serverSawCancel(ctx context.Context, mark int, method string) (toolserver.End, error) {
	var found toolserver.End
	err := w.tools.Wait(ctx, func() bool {
		for _, se := range w.tools.Ended()[mark:] {
			if se.Method == method && status.Code(se.Err) == codes.Canceled {
				found = se
				return true
			}
		}
		return false
	})
	if err != nil {
		return toolserver.End{}, fmt.Errorf("the tool server never saw a %s call cancelled: %w", method, err)
	}
	return found, nil
}

// toolEvent waits for the tool server's record of a call of method among
// the calls it recorded after the first from.
func (w *world) toolEvent(ctx context.Context, from int, method string) (toolserver.Event, error) {
	for n := from + 1; ; n++ {
		evs, err := w.tools.WaitEvents(ctx, n)
		if err != nil {
			return toolserver.Event{}, fmt.Errorf("the tool server did not record the %s call: %w", method, err)
		}
		for _, ev := range evs[from:] {
			if ev.Method == method {
				return ev, nil
			}
		}
		n = len(evs)
	}
}

// publish sends sig for o's op id through the gateway, as the real gateway
// does when the operator acts on o, and waits until o's agent applied it. It
// returns when the signal was published.
func (w *world) publish(ctx context.Context, o *op, sig controlstore.Signal) (time.Time, error) {
	text := fmt.Sprintf("%s %s", strings.ToUpper(sig.String()), o.label)
	return w.operate(ctx, text, []*agent{o.agent}, func() (uint64, error) { return w.gw.Publish(o.agent.id, o.id, sig), nil })
}

// haltAgent publishes sig for "agent:{agent_id}" of a (every op of that
// agent) on the bus, as the operator API does: the agent's bus source and,
// through the gateway's bridge, its gateway stream both carry it.
func (w *world) haltAgent(ctx context.Context, a *agent, sig controlstore.Signal) (time.Time, error) {
	text := fmt.Sprintf("%s %s%s (on the bus)", strings.ToUpper(sig.String()), controlstore.AgentOpIDPrefix, a.id.AgentID)
	return w.operate(ctx, text, []*agent{a}, func() (uint64, error) { return w.pub.HaltAgent(ctx, a.id, sig) })
}

// haltAll publishes sig for "*" (every op of every agent) on the bus.
func (w *world) haltAll(ctx context.Context, sig controlstore.Signal) (time.Time, error) {
	text := fmt.Sprintf("%s %s (on the bus)", strings.ToUpper(sig.String()), controlstore.GlobalOpID)
	return w.operate(ctx, text, w.agents, func() (uint64, error) { return w.pub.HaltAll(ctx, sig) })
}

// operate publishes with send and waits until every agent in concerned has
// applied one more signal. The scenario publishes one signal at a time, so
// the next signal a store applies is this one (a halt's copy from the other
// source comes after it). seq is the gateway's sequence number, or the
// bus's stream sequence for a halt.
func (w *world) operate(ctx context.Context, text string, concerned []*agent, send func() (uint64, error)) (time.Time, error) {
	before := make([]uint64, len(concerned))
	for i, a := range concerned {
		before[i] = a.store.Stats().Applied
	}
	published := time.Now()
	seq, err := send()
	if err != nil {
		return published, fmt.Errorf("operator %s: %w", text, err)
	}
	applied := make([]string, 0, len(concerned))
	for i, a := range concerned {
		if err := poll(ctx, func() bool { return a.store.Stats().Applied > before[i] }); err != nil {
			return published, fmt.Errorf("operator %s: %s never applied it (%s): %w", text, a.name, describe(a.k.Status()), err)
		}
		applied = append(applied, fmt.Sprintf("%s within %s", a.name, ms(time.Since(published))))
	}
	w.tl.operator(published, text, fmt.Sprintf("applied by %s", strings.Join(applied, ", ")))
	w.tl.debugf("sequence %d", seq)
	return published, nil
}

// pace waits d scaled by -speed: the time an operator takes to react. It
// only paces the demo; no outcome depends on it.
func (w *world) pace(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(time.Duration(float64(d) / w.cfg.speed))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// paced returns d scaled by -speed.
func (w *world) paced(d time.Duration) time.Duration {
	return time.Duration(float64(d) / w.cfg.speed)
}

// pollEvery is how often poll re-checks: small next to the demo's steps,
// large enough not to steal a loaded machine's CPU from the code under test.
const pollEvery = 200 * time.Microsecond

// poll waits until cond holds or ctx ends.
func poll(ctx context.Context, cond func() bool) error {
	t := time.NewTimer(pollEvery)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			t.Reset(pollEvery)
		}
	}
	return nil
}

// spanEvents returns the events recorded so far on a live SDK span.
func spanEvents(span trace.Span) []sdktrace.Event {
	if ro, ok := span.(sdktrace.ReadOnlySpan); ok {
		return ro.Events()
	}
	return nil
}

// witness is a store of an agent fed by the gateway stream alone, through
// the agent's link: what the agent would know without the bus.
type witness struct {
	store *controlstore.Store
	sub   *stream.Subscriber
	conn  *grpc.ClientConn
	stopF context.CancelFunc
	done  chan struct{}
}

// startWitness starts a's witness and waits until its stream is live.
func (w *world) startWitness(ctx context.Context, a *agent) error {
	store, err := controlstore.New(a.id, controlstore.WithLogger(slog.New(w.tl.logHandler(a.name+" witness"))))
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(a.link.Addr(), append(stream.GatewayDialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return err
	}
	sub := stream.NewSubscriber(conn, store, stream.WithCredentialToken(a.token), stream.WithReconnectSpread(0),
		stream.WithLogger(slog.New(w.tl.logHandler(a.name+" witness"))))
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	w.witness = &witness{store: store, sub: sub, conn: conn, stopF: stop, done: make(chan struct{})}
	go func() {
		defer close(w.witness.done)
		_ = sub.Run(runCtx)
	}()
	select {
	case <-sub.Ready():
		return nil
	case <-time.After(w.cfg.stepTimeout):
		return fmt.Errorf("%s's witness: stream not live: %v", a.name, sub.Status().State)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (wt *witness) stop() {
	wt.stopF()
	<-wt.done
	_ = wt.conn.Close()
}

// deadAddr refuses every connection: a cut link's new target.
const deadAddr = "127.0.0.1:1"

// cut cuts a's link to the gateway: its connections are reset and new
// ones reach nothing, so its gateway stream (and its witness's) goes down.
func (w *world) cut(a *agent) {
	a.link.SetTarget(deadAddr)
	a.link.Reset()
}

// restore gives a its link to the gateway back.
func (w *world) restore(a *agent) { a.link.SetTarget(w.gw.Addr()) }

// sourceLive reports whether a's kill switch has source name live.
func sourceLive(a *agent, name string) bool {
	for _, h := range a.k.Status().Sources {
		if h.Name == name {
			return h.Live
		}
	}
	return false
}
