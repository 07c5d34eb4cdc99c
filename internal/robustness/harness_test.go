package robustness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/faultproxy"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// Generous bounds: 2 shared cores under -race. Nothing waits for them
// unless something is broken.
const (
	waitLong  = 30 * time.Second
	waitShort = 10 * time.Second
)

const token = "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5"

func testAgent(name string) controlstore.Agent {
	return controlstore.Agent{OrgID: "acme-corp", TeamID: "platform", AgentID: "did:key:z6Mk" + name}
}

// waitUntil polls cond until it holds or d passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// poll reports whether cond held within d.
func poll(d time.Duration, cond func() bool) bool { return testutil.Poll(d, cond) }

// logger discards, unless OPCONTROL_ROBUSTNESS_LOG=1.
func logger() *slog.Logger {
	if os.Getenv("OPCONTROL_ROBUSTNESS_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// options of a cluster.
type options struct {
	dial    []grpc.DialOption // subscriber connection; default stream.GatewayDialOptions()
	sub     []stream.Option
	gw      []gatewaytest.Option
	store   []controlstore.Option
	cfg     Config
	noCheck bool
	history *History // record into this history (default a new one)
}

// cluster is one agent under test: the test gateway, a fault proxy in
// front of it, a subscriber dialling the proxy, its store, and a tool
// client gated by the interceptors, calling a real tool server, with real
// OpenTelemetry SDK spans. Everything it does is recorded in h.
type cluster struct {
	t      testing.TB
	h      *History
	agent  controlstore.Agent
	gw     *gatewaytest.Gateway
	proxy  *faultproxy.Proxy
	store  *controlstore.Store
	sub    *stream.Subscriber
	tools  *toolserver.Server
	client *toolserver.Client
	tracer trace.Tracer
	cfg    Config

	stopRun, stopPoll context.CancelFunc
	runDone, pollDone chan struct{}
	calls             sync.WaitGroup

	mu         sync.Mutex
	subscribes []gatewaytest.SubscribeEvent
	streams    map[[2]time.Time]int
	touched    map[string]bool
	probes     []controlstore.Call
	markers    int
	closers    []func()
}

func newCluster(t testing.TB, o options) *cluster {
	t.Helper()
	h := o.history
	if h == nil {
		h = NewHistory()
	}
	c := &cluster{
		t:       t,
		h:       h,
		agent:   testAgent(strings.ReplaceAll(t.Name(), "/", "-")),
		streams: map[[2]time.Time]int{},
		touched: map[string]bool{},
	}
	t.Cleanup(c.close)

	observe := gatewaytest.WithSubscribeObserver(func(ev gatewaytest.SubscribeEvent) {
		c.mu.Lock()
		c.subscribes = append(c.subscribes, ev)
		c.mu.Unlock()
		c.h.Add(Event{Kind: KindState, At: c.h.Now(), Note: "gateway subscribe " + ev.Code.String()})
	})
	gw, err := gatewaytest.Start(append([]gatewaytest.Option{gatewaytest.WithToken(token, c.agent), observe}, o.gw...)...)
	if err != nil {
		t.Fatal(err)
	}
	c.gw = gw
	c.closers = append(c.closers, gw.Close)
	c.proxy, err = faultproxy.New(gw.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.closers = append(c.closers, func() { _ = c.proxy.Close() })

	c.store = testutil.NewStore(t, c.agent, o.store...)
	dial := o.dial
	if dial == nil {
		dial = stream.GatewayDialOptions()
	}
	cc, err := grpc.NewClient(c.proxy.Addr(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dial...)...)
	if err != nil {
		t.Fatal(err)
	}
	c.closers = append(c.closers, func() { _ = cc.Close() })
	c.sub = stream.NewSubscriber(cc, c.store, append([]stream.Option{
		stream.WithCredentialToken(token), stream.WithLogger(logger()),
	}, o.sub...)...)

	c.tools, err = toolserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	c.closers = append(c.closers, c.tools.Close)
	toolCC, err := grpc.NewClient(c.tools.Addr(), append(interceptor.DialOptions(c.store),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(reachedInterceptor(c.h)))...)
	if err != nil {
		t.Fatal(err)
	}
	c.closers = append(c.closers, func() { _ = toolCC.Close() })
	c.client = toolserver.NewClient(toolCC)

	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	c.closers = append(c.closers, func() { _ = tp.Shutdown(context.Background()) })
	c.tracer = tp.Tracer("robustness")

	c.cfg = o.cfg
	c.cfg.AgentID = c.agent.AgentID
	if c.cfg.MaxEntries == 0 {
		c.cfg.MaxEntries = controlstore.DefaultMaxEntries
	}
	if o.noCheck {
		c.cfg.AgentID = ""
	}

	// Agent and global terminates cancel every tracked call: one probe
	// with no op sees them all, exactly when they are applied.
	c.probe("")

	runCtx, stopRun := context.WithCancel(context.Background())
	c.stopRun, c.runDone = stopRun, make(chan struct{})
	go func() {
		defer close(c.runDone)
		_ = c.sub.Run(runCtx)
	}()
	pollCtx, stopPoll := context.WithCancel(context.Background())
	c.stopPoll, c.pollDone = stopPoll, make(chan struct{})
	go c.pollStatus(pollCtx)
	return c
}

// close stops everything, in order; safe to call more than once.
func (c *cluster) close() {
	if c.stopRun == nil {
		for i := len(c.closers) - 1; i >= 0; i-- {
			c.closers[i]()
		}
		c.closers = nil
		return
	}
	c.stopRun()
	<-c.runDone
	c.stopPoll()
	<-c.pollDone
	c.calls.Wait()
	c.mu.Lock()
	for _, p := range c.probes {
		p.Release()
	}
	c.probes = nil
	c.mu.Unlock()
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i]()
	}
	c.closers = nil
	c.stopRun = nil
	// The test's cleanup keeps c: let the store and the rest be collected
	// now, so that resource checks see what the run really left behind.
	c.store, c.sub, c.gw, c.proxy, c.tools, c.client = nil, nil, nil, nil, nil, nil
}

// pollStatus records every change of the subscriber's state it sees.
func (c *cluster) pollStatus(ctx context.Context) {
	defer close(c.pollDone)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	last := stream.State(-1)
	for {
		if st := c.sub.Status(); st.State != last {
			last = st.State
			note := st.State.String()
			if st.State != stream.Live && st.LastError != nil {
				note += " code=" + st.LastCode.String()
			}
			c.h.Add(Event{Kind: KindState, At: c.h.Now(), Note: note})
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// subscribeEvents returns the subscribes the gateway decided so far.
func (c *cluster) subscribeEvents() []gatewaytest.SubscribeEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]gatewaytest.SubscribeEvent(nil), c.subscribes...)
}

// waitDown waits until the subscriber has noticed that its stream is gone.
func (c *cluster) waitDown(d time.Duration) {
	c.t.Helper()
	waitUntil(c.t, d, "the subscriber to lose its stream", func() bool { return c.sub.Status().State != stream.Live })
}

// waitLive waits until the subscriber is live.
func (c *cluster) waitLive(d time.Duration) {
	c.t.Helper()
	waitUntil(c.t, d, "the subscriber to be live", func() bool { return c.sub.Status().State == stream.Live })
}

// fault records an injected fault.
func (c *cluster) fault(format string, args ...any) {
	c.h.Add(Event{Kind: KindFault, At: c.h.Now(), Note: fmt.Sprintf(format, args...)})
}

// sample records the link: whether the subscriber is live, on which
// stream (the subscriber's and the gateway's view of it together), and
// how many envelopes the gateway says that stream skipped.
func (c *cluster) sample() {
	at := c.h.Now()
	st := c.sub.Status()
	e := Event{Kind: KindLink, At: at}
	if st.State == stream.Live {
		e.Live = true
		var mine []gatewaytest.SubscriberInfo
		for _, si := range c.gw.Subscribers() {
			if si.Agent == c.agent {
				mine = append(mine, si)
			}
		}
		if len(mine) == 1 {
			key := [2]time.Time{st.Since, mine[0].Since}
			c.mu.Lock()
			id, ok := c.streams[key]
			if !ok {
				id = len(c.streams) + 1
				c.streams[key] = id
			}
			c.mu.Unlock()
			e.Stream, e.Skipped = id, mine[0].Skipped
		}
	}
	c.h.Add(e)
}

// applies says whether the store accepts sig for id (as Apply validates).
func (c *cluster) applies(id string, sig controlstore.Signal) bool {
	return sig >= controlstore.SignalPause && sig <= controlstore.SignalTerminate && id != "" &&
		len(id) <= controlstore.MaxOpIDLen &&
		(!strings.HasPrefix(id, controlstore.AgentOpIDPrefix) || id == controlstore.AgentOpIDPrefix+c.agent.AgentID)
}

// publish publishes sig for id to this agent and records it.
func (c *cluster) publish(id string, sig controlstore.Signal) int {
	return c.publishWith(id, sig, c.applies(id, sig), func() { c.gw.Publish(c.agent, id, sig) })
}

// publishAll publishes a global halt.
func (c *cluster) publishAll(sig controlstore.Signal) int {
	return c.publishWith(controlstore.GlobalOpID, sig, c.applies("*", sig), func() { c.gw.HaltAll(sig) })
}

// publishMessage sends msg as given; applies says whether the store is
// expected to accept it.
func (c *cluster) publishMessage(msg *wirev1.OpControlMessage, applies bool) int {
	return c.publishWith(msg.GetOpId(), controlstore.Signal(msg.GetSignal()), applies,
		func() { c.gw.PublishMessage(gatewaytest.ToAgent(c.agent), msg) })
}

// publishRaw sends frame, which the store never sees as a signal.
func (c *cluster) publishRaw(frame []byte, what string) int {
	return c.publishWith(what, controlstore.SignalUnspecified, false,
		func() { c.gw.PublishRaw(gatewaytest.ToAgent(c.agent), frame) })
}

func (c *cluster) publishWith(id string, sig controlstore.Signal, applies bool, do func()) int {
	c.sample()
	at := c.h.Now()
	do()
	if applies {
		c.mu.Lock()
		c.touched[id] = true
		c.mu.Unlock()
	}
	return c.h.Add(Event{Kind: KindPublish, At: at, End: c.h.Now(), OpID: id, Signal: sig, Applies: applies})
}

// observe records the store's state of id.
func (c *cluster) observe(id string) controlstore.State {
	at := c.h.Now()
	st := c.store.State(id)
	c.h.Add(Event{Kind: KindObserve, At: at, End: c.h.Now(), OpID: id, State: st})
	return st
}

// settle publishes a marker terminate and waits up to d for the store to
// apply it; then it samples the link and observes every id published since
// the last settle, and both scopes. It reports whether the marker arrived.
func (c *cluster) settle(d time.Duration) bool {
	c.mu.Lock()
	c.markers++
	id := fmt.Sprintf("settle-%d", c.markers)
	c.mu.Unlock()
	m := c.publish(id, controlstore.SignalTerminate)
	c.h.mu.Lock()
	c.h.ev[m].Note = "marker"
	c.h.mu.Unlock()
	if !poll(d, func() bool { return c.store.State(id) == controlstore.Terminated }) {
		return false
	}
	at := c.h.Now()
	c.h.Add(Event{Kind: KindObserve, At: at, End: at, OpID: id, State: controlstore.Terminated})
	c.h.Add(Event{Kind: KindSettle, At: at, Ref: m})
	c.sample()
	c.mu.Lock()
	delete(c.touched, id)
	ids := make([]string, 0, len(c.touched)+2)
	for id := range c.touched {
		ids = append(ids, id)
	}
	c.touched = map[string]bool{}
	c.mu.Unlock()
	ids = append(ids, controlstore.GlobalOpID, controlstore.AgentOpIDPrefix+c.agent.AgentID)
	for _, id := range ids {
		c.observe(id)
	}
	return true
}

// mustSettle settles or fails the test.
func (c *cluster) mustSettle() {
	c.t.Helper()
	if !c.settle(waitLong) {
		c.t.Fatalf("marker not applied within %v (subscriber %v)", waitLong, c.sub.Status().State)
	}
}

// probe registers an in-flight call of id ("" for no op) with the store
// whose cancellation records, exactly when the store applies it, every
// terminate that covers id.
func (c *cluster) probe(id string) {
	var seen sync.Map
	call := c.store.Track(controlstore.OpFromID(id), func(cause error) {
		var te *controlstore.TerminatedError
		if errors.As(cause, &te) {
			if _, dup := seen.LoadOrStore(te.OpID, true); !dup {
				c.h.Add(Event{Kind: KindApplied, At: c.h.Now(), OpID: te.OpID})
			}
		}
	})
	c.mu.Lock()
	c.probes = append(c.probes, call)
	c.mu.Unlock()
}

// terminate probes id, then publishes its terminate.
func (c *cluster) terminate(id string) int {
	c.probe(id)
	return c.publish(id, controlstore.SignalTerminate)
}

// op is an operation: a span whose ids are the op id, as the gateway forms
// it from the agent's policy check.
type op struct {
	ctx  context.Context
	span trace.Span
	id   string
}

func (c *cluster) newOp() op {
	ctx, span := c.tracer.Start(context.Background(), "agent-step")
	return op{ctx: ctx, span: span, id: controlstore.OpFromSpanContext(span.SpanContext()).String()}
}

// reachedKey carries a call's record to reachedInterceptor.
type reachedKey struct{}

type callRec struct{ invoked atomic.Int64 } // history time + 1; 0: not reached

// reachedInterceptor runs inside the gate and records when a call reaches
// the invoker: the gate let it through.
func reachedInterceptor(h *History) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := ctx.Value(reachedKey{}).(*callRec); ok {
			r.invoked.CompareAndSwap(0, int64(h.Now())+1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// pending is a call in progress.
type pending struct {
	done chan struct{}
	rec  *callRec
	ev   Event // valid once done is closed
}

func (p *pending) reached() bool { return p.rec.invoked.Load() != 0 }

// wait waits for the call to end and returns its event.
func (p *pending) wait(t testing.TB) Event {
	t.Helper()
	select {
	case <-p.done:
		return p.ev
	case <-time.After(waitLong):
		t.Fatalf("call did not end within %v", waitLong)
		return Event{}
	}
}

// call starts a gated call of o: Work for dur (Echo when dur is 0),
// abandoned after timeout, and records how it ended.
func (c *cluster) call(o op, dur, timeout time.Duration) *pending {
	p := &pending{done: make(chan struct{}), rec: &callRec{}}
	ctx, cancel := context.WithTimeout(context.WithValue(o.ctx, reachedKey{}, p.rec), timeout)
	at := c.h.Now()
	c.calls.Add(1)
	go func() {
		defer c.calls.Done()
		defer close(p.done)
		defer cancel()
		var err error
		method := "echo"
		if dur > 0 {
			method = "work"
			err = c.client.Work(ctx, dur)
		} else {
			_, err = c.client.Echo(ctx, "hi")
		}
		e := Event{Kind: KindCall, At: at, End: c.h.Now(), OpID: o.id, Dur: dur, Note: method}
		if inv := p.rec.invoked.Load(); inv != 0 {
			e.Reached, e.Invoked = true, time.Duration(inv-1)
		}
		var te *controlstore.TerminatedError
		switch {
		case err == nil:
		case errors.As(err, &te):
			e.Outcome, e.TerminatedBy = OutcomeTerminated, te.OpID
		case errors.Is(err, controlstore.ErrPaused):
			e.Outcome = OutcomeAbandoned
		case errors.Is(err, controlstore.ErrUnavailable):
			e.Outcome = OutcomeUnavailable
		default:
			e.Outcome, e.Note = OutcomeError, method+" error="+err.Error()
		}
		e.HeldBy = heldBy(o.span, at, e.End, c.h)
		p.ev = e
		c.h.Add(e)
	}()
	return p
}

// heldBy returns the paused id of the "opcontrol.held" event the gate added
// to span between from and to (history times), or "".
func heldBy(span trace.Span, from, to time.Duration, h *History) string {
	ro, ok := span.(sdktrace.ReadOnlySpan)
	if !ok {
		return ""
	}
	lo, hi := h.start.Add(from), h.start.Add(to)
	for _, ev := range ro.Events() {
		if ev.Name != "opcontrol.held" || ev.Time.Before(lo) || ev.Time.After(hi) {
			continue
		}
		for _, kv := range ev.Attributes {
			if kv.Key == "opcontrol.paused_id" {
				return kv.Value.AsString()
			}
		}
	}
	return ""
}

// held returns the number of calls held in the store.
func (c *cluster) held() int { return c.store.Stats().Held }

// check runs the checker over the history and fails the test on any
// violation.
func (c *cluster) check() []Violation {
	c.t.Helper()
	c.calls.Wait()
	if c.cfg.AgentID == "" {
		return nil
	}
	vs := Check(c.cfg, c.h.Events())
	for _, v := range vs {
		c.t.Error(v)
	}
	return vs
}

// resources records goroutines and heap after a GC.
func resources(h *History, phase string) Event {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	e := Event{Kind: KindResources, At: h.Now(), Note: phase, Goroutines: runtime.NumGoroutine(), Heap: ms.HeapAlloc}
	h.Add(e)
	return e
}

// settleResources waits (bounded) for goroutines to drop back to at most
// base+slack, then records the final resources.
func settleResources(h *History, base Event, slack int) Event {
	poll(waitShort, func() bool { return runtime.NumGoroutine() <= base.Goroutines+slack })
	return resources(h, "final")
}
