package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
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
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Generous bounds: 2 shared cores under -race. Nothing waits for them unless
// something is broken.
const (
	waitFor  = 20 * time.Second
	pollStep = 2 * time.Millisecond
)

const (
	testAgentID = "did:key:z6MkTestAgent"
	agentOpID   = controlstore.AgentOpIDPrefix + testAgentID

	toolService  = "opcontrol.test.Tool"
	methodEcho   = "/" + toolService + "/Echo"
	methodBlock  = "/" + toolService + "/Block"
	methodChat   = "/" + toolService + "/Chat"
	methodWatch  = "/" + toolService + "/Watch"
	methodOther  = "/" + toolService + "/Other"
	methodFlaky  = "/" + toolService + "/Flaky"
	policyServer = "assembly.policy.v1.PolicyService"
)

var (
	chatDesc  = &grpc.StreamDesc{StreamName: "Chat", ServerStreams: true, ClientStreams: true}
	watchDesc = &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}
	opCtlDesc = &grpc.StreamDesc{StreamName: "OpControlStream", ServerStreams: true}
)

func newStore(t testing.TB, opts ...controlstore.Option) *controlstore.Store {
	t.Helper()
	return testutil.NewStore(t, controlstore.Agent{OrgID: "org", TeamID: "team", AgentID: testAgentID}, opts...)
}

func apply(t testing.TB, s *controlstore.Store, id string, sig controlstore.Signal) {
	t.Helper()
	if err := s.Apply(id, sig); err != nil {
		t.Fatalf("Apply(%q, %v): %v", id, sig, err)
	}
}

// entered is what a blocking handler reports when it starts.
type entered struct {
	md metadata.MD
}

// toolServer is a real gRPC tool server on 127.0.0.1:0, described by hand
// (no generated code): Echo answers at once; Block, Chat and Watch block
// until their context ends or release is closed, reporting when they start
// (entered) and why they ended (exited).
type toolServer struct {
	addr    string
	echoes  atomic.Int64 // Echo and Other attempts
	blocks  atomic.Int64 // Block attempts
	flakes  atomic.Int64 // Flaky attempts
	entered chan entered
	exited  chan error
	release chan struct{}
}

// report and reportExit never block: a server used by many calls (the
// concurrency test) must not stall once nobody reads.
func (ts *toolServer) report(e entered) {
	select {
	case ts.entered <- e:
	default:
	}
}

func (ts *toolServer) reportExit(err error) {
	select {
	case ts.exited <- err:
	default:
	}
}

func (ts *toolServer) echo(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	ts.echoes.Add(1)
	return wrapperspb.String(in.GetValue()), nil
}

// flaky fails every odd attempt with Unavailable.
func (ts *toolServer) flaky(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	if ts.flakes.Add(1)%2 == 1 {
		return nil, status.Error(codes.Unavailable, "flaky")
	}
	return wrapperspb.String(in.GetValue()), nil
}

func (ts *toolServer) block(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	ts.blocks.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	ts.report(entered{md: md})
	select {
	case <-ctx.Done():
		ts.reportExit(ctx.Err())
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-ts.release:
		ts.reportExit(nil)
		return wrapperspb.String(in.GetValue()), nil
	}
}

// chat echoes every message; it reports entering before its first Recv.
func (ts *toolServer) chat(_ any, ss grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	ts.report(entered{md: md})
	for {
		in := new(wrapperspb.StringValue)
		if err := ss.RecvMsg(in); err != nil {
			ts.reportExit(ss.Context().Err())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(in); err != nil {
			ts.reportExit(ss.Context().Err())
			return err
		}
	}
}

// watch sends one message, then blocks until released (then sends one more
// and ends) or cancelled.
func (ts *toolServer) watch(_ any, ss grpc.ServerStream) error {
	in := new(wrapperspb.StringValue)
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	if err := ss.SendMsg(in); err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(ss.Context())
	ts.report(entered{md: md})
	select {
	case <-ss.Context().Done():
		ts.reportExit(ss.Context().Err())
		return ss.Context().Err()
	case <-ts.release:
		ts.reportExit(nil)
		return ss.SendMsg(in)
	}
}

func opControl(_ any, ss grpc.ServerStream) error {
	in := new(wrapperspb.StringValue)
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	return ss.SendMsg(wrapperspb.String("signal"))
}

func unaryHandler(f func(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)) grpc.MethodHandler {
	return func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		in := new(wrapperspb.StringValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		return f(ctx, in)
	}
}

// startServer starts a tool server; it is stopped when the test ends.
func startServer(t testing.TB, opts ...grpc.ServerOption) *toolServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &toolServer{
		addr:    lis.Addr().String(),
		entered: make(chan entered, 64),
		exited:  make(chan error, 64),
		release: make(chan struct{}),
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: toolService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Echo", Handler: unaryHandler(ts.echo)},
			{MethodName: "Other", Handler: unaryHandler(ts.echo)},
			{MethodName: "Block", Handler: unaryHandler(ts.block)},
			{MethodName: "Flaky", Handler: unaryHandler(ts.flaky)},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: "Chat", Handler: ts.chat, ServerStreams: true, ClientStreams: true},
			{StreamName: "Watch", Handler: ts.watch, ServerStreams: true},
		},
	}, ts)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: policyServer,
		HandlerType: (*any)(nil),
		Streams:     []grpc.StreamDesc{{StreamName: "OpControlStream", Handler: opControl, ServerStreams: true}},
	}, ts)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return ts
}

// dial connects to ts with opts (the gate's options first).
func dial(t testing.TB, ts *toolServer, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	cc, err := grpc.NewClient(ts.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func callEcho(ctx context.Context, cc *grpc.ClientConn) error {
	return cc.Invoke(ctx, methodEcho, wrapperspb.String("hi"), new(wrapperspb.StringValue))
}

func callBlock(ctx context.Context, cc *grpc.ClientConn) error {
	return cc.Invoke(ctx, methodBlock, wrapperspb.String("hi"), new(wrapperspb.StringValue))
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
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(pollStep)
	}
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
