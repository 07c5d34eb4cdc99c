package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/internal/toolserver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Generous bounds: 2 shared cores under -race. Nothing waits for them unless
// something is broken.
const waitFor = testutil.WaitLong

const (
	testAgentID = "did:key:z6MkTestAgent"
	agentOpID   = controlstore.AgentOpIDPrefix + testAgentID

	methodEcho  = toolserver.EchoMethod
	methodBlock = toolserver.WorkMethod  // unary; runs until cancelled with callBlock
	methodChat  = toolserver.ChatMethod  // bidi echo
	methodWatch = toolserver.BurstMethod // server-streaming: n messages, then until cancelled
	methodOther = "/opcontrol.tools.v1.ToolService/Other"
	methodFlaky = toolserver.FlakyMethod
)

var (
	chatDesc  = &grpc.StreamDesc{StreamName: "Chat", ServerStreams: true, ClientStreams: true}
	watchDesc = &grpc.StreamDesc{StreamName: "Burst", ServerStreams: true}
	opCtlDesc = &grpc.StreamDesc{StreamName: "OpControlStream", ServerStreams: true}
)

func newStore(t testing.TB, opts ...controlstore.Option) *controlstore.Store {
	t.Helper()
	return testutil.NewStore(t, controlstore.Agent{OrgID: "org", TeamID: "team", AgentID: testAgentID}, opts...)
}

// holdFailClosed makes store fail closed, as a source that knows it lost
// signals does, until the returned function is called.
func holdFailClosed(store *controlstore.Store) (release func()) {
	src := store.AddSource("test", controlstore.SourceGateway)
	src.HoldFailClosed("test")
	return src.ReleaseFailClosed
}

func apply(t testing.TB, s *controlstore.Store, id string, sig controlstore.Signal) {
	t.Helper()
	if err := s.Apply(id, sig); err != nil {
		t.Fatalf("Apply(%q, %v): %v", id, sig, err)
	}
}

// startServer starts the shared tool server (internal/toolserver) on
// 127.0.0.1:0; it is stopped when the test ends.
func startServer(t testing.TB, opts ...grpc.ServerOption) *toolserver.Server {
	t.Helper()
	srv, err := toolserver.Start(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// withOpControlStream makes a tool server also answer the gateway's
// op-control method: one message, then the end of the stream.
func withOpControlStream() grpc.ServerOption {
	return grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		if m, _ := grpc.MethodFromServerStream(ss); m != interceptor.OpControlStreamMethod {
			return status.Errorf(codes.Unimplemented, "unknown method %s", m)
		}
		in := new(wrapperspb.StringValue)
		if err := ss.RecvMsg(in); err != nil {
			return err
		}
		return ss.SendMsg(wrapperspb.String("signal"))
	})
}

// dial connects to srv with opts (the gate's options first).
func dial(t testing.TB, srv *toolserver.Server, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	cc, err := grpc.NewClient(srv.Addr(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// loopback starts a tool server, a store, and a connection to the server
// gated by the store with opts: the set-up of every loopback test.
func loopback(t testing.TB, opts ...interceptor.Option) (*toolserver.Server, *controlstore.Store, *grpc.ClientConn) {
	t.Helper()
	ts := startServer(t)
	store := newStore(t)
	return ts, store, dial(t, ts, interceptor.DialOptions(store, opts...)...)
}

func callEcho(ctx context.Context, cc *grpc.ClientConn) error {
	return cc.Invoke(ctx, methodEcho, wrapperspb.String("hi"), new(wrapperspb.StringValue))
}

// callBlock makes a Work call that only a cancellation ends within a test.
func callBlock(ctx context.Context, cc *grpc.ClientConn) error {
	return cc.Invoke(ctx, methodBlock, durationpb.New(longWork), new(wrapperspb.StringValue))
}

// longWork is a Work call that only a cancellation ends within a test.
const longWork = time.Hour

// served counts the calls of method that the tool server has answered.
func served(srv *toolserver.Server, method string) int {
	n := 0
	for _, ev := range srv.Events() {
		if ev.Method == method {
			n++
		}
	}
	return n
}

// waitEntered waits until n calls of method in all have reached the tool
// server's handler.
func waitEntered(t testing.TB, srv *toolserver.Server, method string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if srv.Wait(ctx, func() bool { return srv.Entered(method) >= n }) != nil {
		t.Fatalf("%d %s call(s) did not reach the tool server (%d did)", n, method, srv.Entered(method))
	}
}

// waitServerCancelled waits until the tool server's gRPC layer has ended n
// calls of method in all, and checks that each ended Canceled: the client's
// cancellation reached the server.
func waitServerCancelled(t testing.TB, srv *toolserver.Server, method string, n int) {
	t.Helper()
	var ends []toolserver.End
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := srv.Wait(ctx, func() bool {
		ends = ends[:0]
		for _, e := range srv.Ended() {
			if e.Method == method {
				ends = append(ends, e)
			}
		}
		return len(ends) >= n
	})
	if err != nil {
		t.Fatalf("the tool server ended %d %s call(s), want %d", len(ends), method, n)
	}
	for _, e := range ends {
		if status.Code(e.Err) != codes.Canceled {
			t.Fatalf("the tool server ended %s with %v, want Canceled", method, e.Err)
		}
	}
}

// tracing is a real OpenTelemetry SDK tracer with a span recorder.
type tracing struct {
	tp  *sdktrace.TracerProvider
	rec *tracetest.SpanRecorder
}

func newTracing(t testing.TB) *tracing {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &tracing{tp: tp, rec: rec}
}

// start starts a caller span ("the op") and returns its context and op id.
func (tr *tracing) start(ctx context.Context, name string) (context.Context, trace.Span, string) {
	ctx, span := tr.tp.Tracer("test").Start(ctx, name)
	return ctx, span, opIDOf(span.SpanContext())
}

func opIDOf(sc trace.SpanContext) string {
	return sc.TraceID().String() + ":" + sc.SpanID().String()
}

// ended returns the recorded, ended span named name.
func (tr *tracing) ended(t testing.TB, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	for _, s := range tr.rec.Ended() {
		if s.Name() == name {
			return s
		}
	}
	t.Fatalf("no ended span %q", name)
	return nil
}

func eventNamed(s sdktrace.ReadOnlySpan, name string) (sdktrace.Event, bool) {
	for _, e := range s.Events() {
		if e.Name == name {
			return e, true
		}
	}
	return sdktrace.Event{}, false
}

func attrOf(attrs []attribute.KeyValue, key string) (attribute.Value, bool) {
	for _, kv := range attrs {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// errorInfo returns the ErrorInfo detail of err's status.
func errorInfo(t testing.TB, err error) *errdetails.ErrorInfo {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a status error: %T %v", err, err)
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	t.Fatalf("no ErrorInfo in %v", err)
	return nil
}

// wantTerminated checks the whole terminated contract on err.
func wantTerminated(t testing.TB, err error, opID string, scope controlstore.Scope, terminatedID string) {
	t.Helper()
	if err == nil {
		t.Fatal("call succeeded, want terminated")
	}
	if c := status.Code(err); c != codes.FailedPrecondition {
		t.Fatalf("code = %v, want FailedPrecondition (err %v)", c, err)
	}
	if !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("errors.Is(err, ErrTerminated) = false: %v", err)
	}
	var te *controlstore.TerminatedError
	if !errors.As(err, &te) {
		t.Fatalf("errors.As(*TerminatedError) = false: %v", err)
	}
	if te.Scope != scope || te.OpID != terminatedID {
		t.Fatalf("TerminatedError = %+v, want scope %v id %q", te, scope, terminatedID)
	}
	var ie *interceptor.Error
	if !errors.As(err, &ie) || ie.OpID() != opID {
		t.Fatalf("interceptor.Error op id: %v (want %q)", err, opID)
	}
	ei := errorInfo(t, err)
	if ei.Reason != interceptor.ReasonTerminated || ei.Domain != interceptor.ErrorDomain {
		t.Fatalf("ErrorInfo = %v", ei)
	}
	want := map[string]string{"op_id": opID, "scope": scope.String(), "terminated_id": terminatedID}
	for k, v := range want {
		if ei.Metadata[k] != v {
			t.Fatalf("ErrorInfo.Metadata[%q] = %q, want %q (all: %v)", k, ei.Metadata[k], v, ei.Metadata)
		}
	}
}

// eventually polls cond until it holds or the generous deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, waitFor, cond, "waiting for %s", what)
}

// recv receives from ch or fails after the generous deadline.
func recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// probe reports each op resolution, so that a test knows a call reached the
// gate (and, while paused, is held there).
type probe struct{ ch chan struct{} }

func newProbe() *probe { return &probe{ch: make(chan struct{}, 256)} }

func (p *probe) option() interceptor.Option {
	return interceptor.WithOpFunc(func(ctx context.Context) controlstore.Op {
		select {
		case p.ch <- struct{}{}:
		default:
		}
		return controlstore.OpFromSpanContext(trace.SpanContextFromContext(ctx))
	})
}

// async runs f in a goroutine and returns its result channel.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// notDone fails if ch already has a result.
func notDone(t testing.TB, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s finished early: %v", what, err)
	default:
	}
}

// metricsReader collects what a ManualReader saw.
type metricsReader struct {
	r *sdkmetric.ManualReader
}

func newMetrics(t testing.TB) (*metricsReader, *sdkmetric.MeterProvider) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return &metricsReader{r: r}, mp
}

// sum returns the value of counter name at attribute key=val.
func (m *metricsReader) sum(t testing.TB, name, key, val string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			if md.Name != name {
				continue
			}
			s, ok := md.Data.(metricdata.Sum[int64])
			if !ok {
				t.Fatalf("%s is %T", name, md.Data)
			}
			for _, dp := range s.DataPoints {
				if v, ok := dp.Attributes.Value(attribute.Key(key)); ok && v.AsString() == val {
					return dp.Value
				}
			}
		}
	}
	return 0
}

// holds returns the number of hold-duration records with result=val and
// their sum.
func (m *metricsReader) holds(t testing.TB, val string) (uint64, float64) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, md := range sm.Metrics {
			if md.Name != interceptor.MetricHoldDuration {
				continue
			}
			h := md.Data.(metricdata.Histogram[float64])
			for _, dp := range h.DataPoints {
				if v, ok := dp.Attributes.Value("result"); ok && v.AsString() == val {
					return dp.Count, dp.Sum
				}
			}
		}
	}
	return 0, 0
}

// waitHeld waits until at least n calls are parked in the store's Wait,
// i.e. held by the gate (Store.Held counts them exactly).
func waitHeld(t testing.TB, store *controlstore.Store, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d call(s) held in Store.Wait", n), func() bool {
		return store.Held() >= n
	})
}
