package interceptor_test

import (
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
)

// fakeInvoker counts calls and records the context it was given.
type fakeInvoker struct {
	calls atomic.Int64
	ctx   atomic.Pointer[context.Context]
	// during, when set, runs inside the call.
	during func(ctx context.Context) error
}

func (f *fakeInvoker) invoke(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
	f.calls.Add(1)
	f.ctx.Store(&ctx)
	if f.during != nil {
		return f.during(ctx)
	}
	return nil
}

func modes() []struct {
	name string
	opt  interceptor.Option
} {
	return []struct {
		name string
		opt  interceptor.Option
	}{
		{"inflight=on", interceptor.WithInFlightCancellation(true)},
		{"inflight=off", interceptor.WithInFlightCancellation(false)},
	}
}

func mustPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if r == nil {
			t.Fatalf("no panic, want one mentioning %q", want)
		}
		if s, _ := r.(string); !strings.Contains(s, want) {
			t.Fatalf("panic %v, want one mentioning %q", r, want)
		}
	}()
	f()
}

// A nil store is a programmer error and panics; options never panic on
// data: a nil Option is ignored, WithOpFunc(nil) means the default, and an
// exempt name that can never match is ignored.
func TestConstructorsCannotBeMisused(t *testing.T) {
	mustPanic(t, "controlstore.Store", func() { interceptor.UnaryClientInterceptor(nil) })
	mustPanic(t, "controlstore.Store", func() { interceptor.StreamClientInterceptor(nil) })
	mustPanic(t, "controlstore.Store", func() { interceptor.DialOptions(nil) })
	mustPanic(t, "controlstore.Store", func() { interceptor.ContextWithOpCancel(context.Background(), nil) })

	tr := newTracing(t)
	store := newStore(t)
	ctx, span, opID := tr.start(context.Background(), "op")
	defer span.End()
	apply(t, store, opID, controlstore.SignalTerminate)
	opts := []interceptor.Option{
		nil,
		interceptor.WithOpFunc(nil),
		interceptor.WithExemptMethods("", "Echo", "pkg.Svc/Echo", "/pkg.Svc/", "/Echo", "//", methodOther),
		nil,
	}
	inv := &fakeInvoker{}
	unary := interceptor.UnaryClientInterceptor(store, opts...)
	// The default op (the span) still decides...
	wantTerminated(t, unary(ctx, methodEcho, nil, nil, nil, inv.invoke), opID, controlstore.ScopeOp, opID)
	// ...and the well-formed exempt name still exempts.
	if err := unary(ctx, methodOther, nil, nil, nil, inv.invoke); err != nil || inv.calls.Load() != 1 {
		t.Fatalf("exempt call: err %v, invoked %d times", err, inv.calls.Load())
	}
	_, err := interceptor.StreamClientInterceptor(store, opts...)(ctx, chatDesc, nil, methodChat, nil)
	wantTerminated(t, err, opID, controlstore.ScopeOp, opID)
	if n := len(interceptor.DialOptions(store, opts...)); n != 2 {
		t.Fatalf("DialOptions returned %d options, want 2", n)
	}
}

func TestUnaryRefusedCallsNeverInvoke(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		for _, tc := range []struct {
			scope  controlstore.Scope
			target func(opID string) string
		}{
			{controlstore.ScopeOp, func(op string) string { return op }},
			{controlstore.ScopeAgent, func(string) string { return agentOpID }},
			{controlstore.ScopeGlobal, func(string) string { return controlstore.GlobalOpID }},
		} {
			t.Run(m.name+"/"+tc.scope.String(), func(t *testing.T) {
				store := newStore(t)
				inv := &fakeInvoker{}
				unary := interceptor.UnaryClientInterceptor(store, m.opt)
				ctx, span, opID := tr.start(context.Background(), "op")
				defer span.End()
				apply(t, store, tc.target(opID), controlstore.SignalTerminate)

				err := unary(ctx, methodEcho, nil, nil, nil, inv.invoke)
				wantTerminated(t, err, opID, tc.scope, tc.target(opID))
				if n := inv.calls.Load(); n != 0 {
					t.Fatalf("invoker called %d times for a terminated call", n)
				}
				if n := store.InFlight(); n != 0 {
					t.Fatalf("InFlight = %d after a refused call", n)
				}
				// Message names the terminated id.
				if !strings.Contains(status.Convert(err).Message(), tc.target(opID)) {
					t.Fatalf("message %q does not name %q", status.Convert(err).Message(), tc.target(opID))
				}
			})
		}
	}
}

func TestUnaryAllowed(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			store := newStore(t)
			// Another op's signals must not touch this call.
			apply(t, store, "0123456789abcdef0123456789abcdef:0123456789abcdef", controlstore.SignalTerminate)
			apply(t, store, "trace-001:span-001", controlstore.SignalPause)
			ctx, span, _ := tr.start(context.Background(), "op")
			defer span.End()
			var inFlightDuring int
			inv := &fakeInvoker{during: func(context.Context) error {
				inFlightDuring = store.InFlight()
				return nil
			}}
			if err := interceptor.UnaryClientInterceptor(store, m.opt)(ctx, methodEcho, nil, nil, nil, inv.invoke); err != nil {
				t.Fatal(err)
			}
			if inv.calls.Load() != 1 {
				t.Fatal("invoker not called")
			}
			got := *inv.ctx.Load()
			if m.name == "inflight=on" {
				if inFlightDuring != 1 {
					t.Fatalf("InFlight during call = %d, want 1", inFlightDuring)
				}
				if got == ctx || got.Done() == nil {
					t.Fatal("in-flight call not given a cancellable context of its own")
				}
				if got.Err() == nil {
					t.Fatal("call context not cancelled after the call")
				}
			} else {
				if inFlightDuring != 0 {
					t.Fatalf("InFlight during call = %d with in-flight cancellation off", inFlightDuring)
				}
				if got != ctx {
					t.Fatal("invoker not given the caller's context with in-flight cancellation off")
				}
			}
			if n := store.InFlight(); n != 0 {
				t.Fatalf("InFlight = %d after the call", n)
			}
		})
	}
}

func TestOpPrecedence(t *testing.T) {
	tr := newTracing(t)
	const funcOp = "func-trace:func-span"
	const explicit = "trace-001:span-001"
	for _, tc := range []struct {
		name     string
		opFunc   bool
		ctx      func(context.Context) context.Context
		wantOpID func(spanOp string) string
	}{
		{"span", false, func(c context.Context) context.Context { return c }, func(s string) string { return s }},
		{"func over span", true, func(c context.Context) context.Context { return c }, func(string) string { return funcOp }},
		{"explicit over span", false, func(c context.Context) context.Context { return interceptor.ContextWithOpID(c, explicit) }, func(string) string { return explicit }},
		{"explicit over func", true, func(c context.Context) context.Context { return interceptor.ContextWithOpID(c, explicit) }, func(string) string { return explicit }},
		{"empty explicit clears", false, func(c context.Context) context.Context {
			return interceptor.ContextWithOpID(interceptor.ContextWithOpID(c, explicit), "")
		}, func(s string) string { return s }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, m := range modes() {
				store := newStore(t)
				ctx, span, spanOp := tr.start(context.Background(), "op")
				ctx = tc.ctx(ctx)
				opts := []interceptor.Option{m.opt}
				if tc.opFunc {
					opts = append(opts, interceptor.WithOpFunc(func(context.Context) controlstore.Op { return controlstore.OpFromID(funcOp) }))
				}
				unary := interceptor.UnaryClientInterceptor(store, opts...)
				inv := &fakeInvoker{}
				want := tc.wantOpID(spanOp)
				// Terminating every candidate but the wanted one lets the call through...
				for _, id := range []string{spanOp, funcOp, explicit} {
					if id != want {
						apply(t, store, id, controlstore.SignalTerminate)
					}
				}
				if err := unary(ctx, methodEcho, nil, nil, nil, inv.invoke); err != nil {
					t.Fatalf("%s: call of op %q refused: %v", m.name, want, err)
				}
				// ...and terminating the wanted one stops it, naming it.
				apply(t, store, want, controlstore.SignalTerminate)
				err := unary(ctx, methodEcho, nil, nil, nil, inv.invoke)
				wantTerminated(t, err, want, controlstore.ScopeOp, want)
				span.End()
			}
		})
	}
}

func TestOpIDForms(t *testing.T) {
	tr := newTracing(t)
	_, span, opID := tr.start(context.Background(), "op")
	defer span.End()
	store := newStore(t)
	unary := interceptor.UnaryClientInterceptor(store)
	inv := &fakeInvoker{}
	// An explicit id in OpenTelemetry form is the same op as the span's.
	apply(t, store, opID, controlstore.SignalTerminate)
	err := unary(interceptor.ContextWithOpID(context.Background(), opID), methodEcho, nil, nil, nil, inv.invoke)
	wantTerminated(t, err, opID, controlstore.ScopeOp, opID)
	// Case matters: the gateway matches strings exactly.
	upper := strings.ToUpper(opID)
	if err := unary(interceptor.ContextWithOpID(context.Background(), upper), methodEcho, nil, nil, nil, inv.invoke); err != nil {
		t.Fatalf("uppercase variant refused: %v", err)
	}
}

func TestUnaryFailClosed(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			store := newStore(t)
			release := holdFailClosed(store)
			inv := &fakeInvoker{}
			ctx := interceptor.ContextWithOpID(context.Background(), "trace-001:span-001")
			err := interceptor.UnaryClientInterceptor(store, m.opt)(ctx, methodEcho, nil, nil, nil, inv.invoke)
			if status.Code(err) != codes.Unavailable || !errors.Is(err, controlstore.ErrUnavailable) {
				t.Fatalf("err = %v, want Unavailable matching ErrUnavailable", err)
			}
			if ei := errorInfo(t, err); ei.Reason != interceptor.ReasonUnavailable || ei.Metadata["op_id"] != "trace-001:span-001" {
				t.Fatalf("ErrorInfo = %v", ei)
			}
			if inv.calls.Load() != 0 {
				t.Fatal("invoker called while failing closed")
			}
			release()
			if err := interceptor.UnaryClientInterceptor(store, m.opt)(ctx, methodEcho, nil, nil, nil, inv.invoke); err != nil {
				t.Fatalf("after fail-closed ended: %v", err)
			}
		})
	}
}

func TestUnaryHeldOpEvictedFailsClosed(t *testing.T) {
	store := newStore(t, controlstore.WithMaxEntries(1))
	p := newProbe()
	unary := interceptor.UnaryClientInterceptor(store, p.option())
	inv := &fakeInvoker{}
	tr := newTracing(t)
	ctx, span, opID := tr.start(context.Background(), "op")
	defer span.End()
	apply(t, store, opID, controlstore.SignalPause)
	done := async(func() error { return unary(ctx, methodEcho, nil, nil, nil, inv.invoke) })
	recv(t, p.ch, "call to reach the gate")
	waitHeld(t, store, 1)
	notDone(t, done, "held call")
	apply(t, store, "trace-002:span-002", controlstore.SignalPause) // evicts opID's entry
	err := recv(t, done, "held call to fail closed")
	if status.Code(err) != codes.Unavailable || !errors.Is(err, controlstore.ErrEvicted) {
		t.Fatalf("err = %v, want Unavailable matching ErrEvicted", err)
	}
	if ei := errorInfo(t, err); ei.Reason != interceptor.ReasonUnavailable || ei.Metadata["evicted_id"] != opID {
		t.Fatalf("ErrorInfo = %v", ei)
	}
	if inv.calls.Load() != 0 {
		t.Fatal("invoker called for an evicted op")
	}
}

func TestUnaryInFlightCancelledByTerminate(t *testing.T) {
	tr := newTracing(t)
	for _, tc := range []struct {
		scope  controlstore.Scope
		target func(string) string
	}{
		{controlstore.ScopeOp, func(op string) string { return op }},
		{controlstore.ScopeAgent, func(string) string { return agentOpID }},
		{controlstore.ScopeGlobal, func(string) string { return controlstore.GlobalOpID }},
	} {
		t.Run(tc.scope.String(), func(t *testing.T) {
			store := newStore(t)
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			started := make(chan struct{})
			var cause atomic.Value
			inv := &fakeInvoker{during: func(ctx context.Context) error {
				close(started)
				<-ctx.Done()
				cause.Store(context.Cause(ctx))
				return status.FromContextError(ctx.Err()).Err()
			}}
			done := async(func() error {
				return interceptor.UnaryClientInterceptor(store)(ctx, methodBlock, nil, nil, nil, inv.invoke)
			})
			recv(t, started, "call to start")
			apply(t, store, tc.target(opID), controlstore.SignalTerminate)
			err := recv(t, done, "cancelled call to return")
			wantTerminated(t, err, opID, tc.scope, tc.target(opID))
			if c, _ := cause.Load().(error); !errors.Is(c, controlstore.ErrTerminated) {
				t.Fatalf("invoker's context cause = %v, want the terminated error", c)
			}
			if n := store.InFlight(); n != 0 {
				t.Fatalf("InFlight = %d after return", n)
			}
		})
	}
}

func TestExemptMethods(t *testing.T) {
	for _, m := range modes() {
		store := newStore(t)
		apply(t, store, controlstore.GlobalOpID, controlstore.SignalPause)
		apply(t, store, controlstore.GlobalOpID, controlstore.SignalTerminate)
		inv := &fakeInvoker{}
		unary := interceptor.UnaryClientInterceptor(store, m.opt, interceptor.WithExemptMethods(methodOther))
		for _, method := range []string{interceptor.OpControlStreamMethod, methodOther} {
			if err := unary(context.Background(), method, nil, nil, nil, inv.invoke); err != nil {
				t.Fatalf("%s: exempt %s refused: %v", m.name, method, err)
			}
		}
		err := unary(context.Background(), methodEcho, nil, nil, nil, inv.invoke)
		wantTerminated(t, err, "", controlstore.ScopeGlobal, controlstore.GlobalOpID)

		stream := interceptor.StreamClientInterceptor(store, m.opt)
		called := false
		streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
			called = true
			return nil, nil
		}
		if _, err := stream(context.Background(), opCtlDesc, nil, interceptor.OpControlStreamMethod, streamer); err != nil || !called {
			t.Fatalf("%s: op-control stream gated: %v", m.name, err)
		}
		called = false
		_, err = stream(context.Background(), chatDesc, nil, methodChat, streamer)
		wantTerminated(t, err, "", controlstore.ScopeGlobal, controlstore.GlobalOpID)
		if called {
			t.Fatal("streamer called for a terminated stream")
		}
	}
}

// fakeStream is a ClientStream whose RecvMsg blocks until its context ends
// or a message is queued.
type fakeStream struct {
	ctx  context.Context
	recv chan string
	sent atomic.Int64
}

func (f *fakeStream) Header() (metadata.MD, error) { return nil, nil }
func (f *fakeStream) Trailer() metadata.MD         { return nil }
func (f *fakeStream) CloseSend() error             { return nil }
func (f *fakeStream) Context() context.Context     { return f.ctx }
func (f *fakeStream) SendMsg(any) error {
	if f.ctx.Err() != nil {
		return io.EOF
	}
	f.sent.Add(1)
	return nil
}

func (f *fakeStream) RecvMsg(any) error {
	select {
	case <-f.ctx.Done():
		return status.FromContextError(f.ctx.Err()).Err()
	case _, ok := <-f.recv:
		if !ok {
			return io.EOF
		}
		return nil
	}
}

func TestStreamFake(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			store := newStore(t)
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			var fs *fakeStream
			streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
				fs = &fakeStream{ctx: ctx, recv: make(chan string, 1)}
				return fs, nil
			}
			cs, err := interceptor.StreamClientInterceptor(store, m.opt)(ctx, chatDesc, nil, methodChat, streamer)
			if err != nil {
				t.Fatal(err)
			}
			if err := cs.SendMsg("a"); err != nil {
				t.Fatal(err)
			}
			wantInFlight := 0
			if m.name == "inflight=on" {
				wantInFlight = 1
			}
			if n := store.InFlight(); n != wantInFlight {
				t.Fatalf("InFlight = %d, want %d", n, wantInFlight)
			}
			apply(t, store, opID, controlstore.SignalTerminate)
			// SendMsg refuses at once; with in-flight cancellation the
			// stream's context was already cancelled by the terminate, and
			// without it SendMsg cancels it.
			wantTerminated(t, cs.SendMsg("b"), opID, controlstore.ScopeOp, opID)
			if fs.sent.Load() != 1 {
				t.Fatal("message sent after terminate")
			}
			if err := context.Cause(fs.ctx); !errors.Is(err, controlstore.ErrTerminated) {
				t.Fatalf("stream context cause = %v, want terminated", err)
			}
			wantTerminated(t, cs.RecvMsg(new(string)), opID, controlstore.ScopeOp, opID)
			eventually(t, "stream registration released", func() bool { return store.InFlight() == 0 })
		})
	}
}

func TestStreamAbandonedReleased(t *testing.T) {
	store := newStore(t)
	streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
		return &fakeStream{ctx: ctx, recv: make(chan string)}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := interceptor.StreamClientInterceptor(store)(ctx, chatDesc, nil, methodChat, streamer); err != nil {
		t.Fatal(err)
	}
	if store.InFlight() != 1 {
		t.Fatal("stream not registered")
	}
	cancel() // the application abandons the stream
	eventually(t, "abandoned stream released", func() bool { return store.InFlight() == 0 })

	// A stream whose reply arrived is released at once.
	fsCh := make(chan *fakeStream, 1)
	streamer2 := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
		fs := &fakeStream{ctx: ctx, recv: make(chan string, 1)}
		fsCh <- fs
		return fs, nil
	}
	cs, err := interceptor.StreamClientInterceptor(store)(context.Background(), &grpc.StreamDesc{ClientStreams: true}, nil, methodChat, streamer2)
	if err != nil {
		t.Fatal(err)
	}
	fs := <-fsCh
	fs.recv <- "reply"
	if err := cs.RecvMsg(new(string)); err != nil {
		t.Fatal(err)
	}
	if n := store.InFlight(); n != 0 {
		t.Fatalf("InFlight = %d after the only reply of a client stream", n)
	}
	if fs.ctx.Err() == nil {
		t.Fatal("finished stream's context not released")
	}
}

func TestSpanEventsAndMetrics(t *testing.T) {
	tr := newTracing(t)
	mr, mp := newMetrics(t)
	store := newStore(t)
	p := newProbe()
	unary := interceptor.UnaryClientInterceptor(store, interceptor.WithMeterProvider(mp), p.option())
	inv := &fakeInvoker{}

	// allowed
	ctx, span, _ := tr.start(context.Background(), "allowed")
	if err := unary(ctx, methodEcho, nil, nil, nil, inv.invoke); err != nil {
		t.Fatal(err)
	}
	span.End()
	recv(t, p.ch, "allowed call at the gate")
	if len(tr.ended(t, "allowed").Events()) != 0 {
		t.Fatal("events on an allowed call")
	}

	// held, then resumed
	ctx, span, opID := tr.start(context.Background(), "held")
	apply(t, store, opID, controlstore.SignalPause)
	done := async(func() error { return unary(ctx, methodEcho, nil, nil, nil, inv.invoke) })
	recv(t, p.ch, "held call at the gate")
	waitHeld(t, store, 1)
	notDone(t, done, "held call")
	apply(t, store, opID, controlstore.SignalResume)
	if err := recv(t, done, "resumed call"); err != nil {
		t.Fatal(err)
	}
	span.End()
	ev, ok := eventNamed(tr.ended(t, "held"), "opcontrol.held")
	if !ok {
		t.Fatal("no opcontrol.held event")
	}
	if d, ok := attrOf(ev.Attributes, "opcontrol.hold.duration"); !ok || d.AsFloat64() <= 0 {
		t.Fatalf("hold duration attribute = %v", d)
	}
	if v, _ := attrOf(ev.Attributes, "opcontrol.op_id"); v.AsString() != opID {
		t.Fatalf("held event op id = %q", v.AsString())
	}

	// denied
	ctx, span, opID = tr.start(context.Background(), "denied")
	apply(t, store, opID, controlstore.SignalTerminate)
	if err := unary(ctx, methodEcho, nil, nil, nil, inv.invoke); err == nil {
		t.Fatal("terminated call allowed")
	}
	span.End()
	ev, ok = eventNamed(tr.ended(t, "denied"), "opcontrol.denied")
	if !ok {
		t.Fatal("no opcontrol.denied event")
	}
	if v, _ := attrOf(ev.Attributes, "opcontrol.terminated_id"); v.AsString() != opID {
		t.Fatalf("denied event terminated id = %q", v.AsString())
	}

	// unavailable
	release := holdFailClosed(store)
	_ = unary(context.Background(), methodEcho, nil, nil, nil, inv.invoke)
	release()

	// cancelled in flight
	ctx, span, _ = tr.start(context.Background(), "cancelled")
	started := make(chan struct{})
	blocking := &fakeInvoker{during: func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}}
	done = async(func() error { return unary(ctx, methodBlock, nil, nil, nil, blocking.invoke) })
	recv(t, started, "call to start")
	apply(t, store, agentOpID, controlstore.SignalTerminate)
	if err := recv(t, done, "cancelled call"); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("err = %v", err)
	}
	span.End()
	if _, ok := eventNamed(tr.ended(t, "cancelled"), "opcontrol.cancelled"); !ok {
		t.Fatal("no opcontrol.cancelled event")
	}

	for outcome, want := range map[string]int64{"allowed": 2, "held": 1, "denied": 1, "unavailable": 1} {
		if got := mr.sum(t, interceptor.MetricDecisions, "outcome", outcome); got != want {
			t.Errorf("decisions{outcome=%s} = %d, want %d", outcome, got, want)
		}
	}
	if n, sum := mr.holds(t, "resumed"); n != 1 || sum <= 0 {
		t.Errorf("hold histogram{resumed}: count %d sum %v", n, sum)
	}
	if got := mr.sum(t, interceptor.MetricInFlightCancelled, "scope", "agent"); got != 1 {
		t.Errorf("inflight.cancelled{scope=agent} = %d, want 1", got)
	}
}

func TestSpanEventsOff(t *testing.T) {
	tr := newTracing(t)
	store := newStore(t)
	ctx, span, opID := tr.start(context.Background(), "denied")
	apply(t, store, opID, controlstore.SignalTerminate)
	err := interceptor.UnaryClientInterceptor(store, interceptor.WithSpanEvents(false))(ctx, methodEcho, nil, nil, nil, (&fakeInvoker{}).invoke)
	wantTerminated(t, err, opID, controlstore.ScopeOp, opID)
	span.End()
	if n := len(tr.ended(t, "denied").Events()); n != 0 {
		t.Fatalf("%d events with span events off", n)
	}
}

// A call held by an agent pause must see a TERMINATE of its own op even when
// that op had no entry while the call waited.
func TestTerminateOfNewOpEntryWhileHeldByAgent(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			store := newStore(t)
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			inv := &fakeInvoker{}
			apply(t, store, agentOpID, controlstore.SignalPause)
			done := async(func() error {
				return interceptor.UnaryClientInterceptor(store, m.opt)(ctx, methodEcho, nil, nil, nil, inv.invoke)
			})
			waitHeld(t, store, 1)
			apply(t, store, opID, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, done, "held call"), opID, controlstore.ScopeOp, opID)
			if inv.calls.Load() != 0 {
				t.Fatal("invoker called")
			}
			if n := store.InFlight(); n != 0 {
				t.Fatalf("InFlight = %d", n)
			}
		})
	}
}

// Every gate reports its own counts; a meter provider shared by several
// gates sees their sum.
func TestDecisionsSumAcrossInterceptors(t *testing.T) {
	mr, mp := newMetrics(t)
	store := newStore(t)
	unary := interceptor.UnaryClientInterceptor(store, interceptor.WithMeterProvider(mp))
	stream := interceptor.StreamClientInterceptor(store, interceptor.WithMeterProvider(mp))
	inv := &fakeInvoker{}
	for range 3 {
		if err := unary(context.Background(), methodEcho, nil, nil, nil, inv.invoke); err != nil {
			t.Fatal(err)
		}
	}
	streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
		return &doneStream{fakeStream{ctx: ctx}}, nil
	}
	for range 2 {
		cs, err := stream(context.Background(), watchDesc, nil, methodWatch, streamer)
		if err != nil {
			t.Fatal(err)
		}
		_ = cs.RecvMsg(nil)
	}
	if got := mr.sum(t, interceptor.MetricDecisions, "outcome", "allowed"); got != 5 {
		t.Fatalf("decisions{allowed} = %d, want 5", got)
	}
}

// Dropping an interceptor unregisters its metrics callback, so building
// interceptors repeatedly does not pile up callbacks.
func TestMetricsCallbackUnregisteredWhenDropped(t *testing.T) {
	mr, mp := newMetrics(t)
	store := newStore(t)
	func() {
		unary := interceptor.UnaryClientInterceptor(store, interceptor.WithMeterProvider(mp))
		if err := unary(context.Background(), methodEcho, nil, nil, nil, noopInvoker); err != nil {
			t.Fatal(err)
		}
		if got := mr.sum(t, interceptor.MetricDecisions, "outcome", "allowed"); got != 1 {
			t.Fatalf("decisions{allowed} = %d while the interceptor is alive, want 1", got)
		}
		runtime.KeepAlive(unary)
	}()
	eventually(t, "callback of the dropped interceptor unregistered", func() bool {
		runtime.GC()
		return mr.sum(t, interceptor.MetricDecisions, "outcome", "allowed") == 0
	})
}

// In-flight cancellation matches an explicit op id that is not in
// OpenTelemetry form, byte for byte.
func TestInFlightCancelledForExplicitOpID(t *testing.T) {
	store := newStore(t)
	const id = "trace-001:span-001"
	started := make(chan struct{})
	inv := &fakeInvoker{during: func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}}
	ctx := interceptor.ContextWithOpID(context.Background(), id)
	done := async(func() error {
		return interceptor.UnaryClientInterceptor(store)(ctx, methodBlock, nil, nil, nil, inv.invoke)
	})
	recv(t, started, "call to start")
	apply(t, store, "TRACE-001:span-001", controlstore.SignalTerminate) // another op
	notDone(t, done, "call of another op")
	apply(t, store, id, controlstore.SignalTerminate)
	wantTerminated(t, recv(t, done, "cancelled call"), id, controlstore.ScopeOp, id)
}
