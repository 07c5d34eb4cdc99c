package e2e_test

// Latency benchmarks over loopback TCP, through the whole path: gateway
// publish → subscriber → store → interceptor → tool server. Run each signal
// benchmark with -benchtime 10000x (10,000 signals); ns/op is the cost of a
// whole cycle (set-up included) and means little, the percentiles are the
// result:
//
//	go test -run '^$' -bench 'SignalTo|TerminateInFlight' -benchtime 10000x ./e2e/
//	go test -run '^$' -bench EchoOverhead -benchtime 20000x ./e2e/

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/toolserver"
)

// benchOps hands out real SDK spans, one per op. Nothing records them: the
// interceptor only reads the span context, and 10,000 recorded spans would
// only cost memory.
type benchOps struct{ tracer trace.Tracer }

func newBenchOps(b *testing.B) benchOps {
	tp := sdktrace.NewTracerProvider()
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return benchOps{tracer: tp.Tracer("github.com/opcontrol/opcontrol/e2e/bench")}
}

func (o benchOps) next() (context.Context, string, controlstore.Op) {
	ctx, span := o.tracer.Start(context.Background(), "op")
	span.End() // the span context stays in ctx
	sc := span.SpanContext()
	return ctx, sc.TraceID().String() + ":" + sc.SpanID().String(), controlstore.OpFromSpanContext(sc)
}

// pollUntil waits for cond between measurements. It sleeps between polls
// rather than spin: on a loaded 2-core machine a spinning thread takes a
// core from the goroutines it waits for, and the kernel then makes them wait
// a whole time slice (milliseconds).
func pollUntil(b *testing.B, what string, cond func() bool) {
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(benchPoll)
	}
}

const benchPoll = 20 * time.Microsecond

// latencies collects one duration per signal and reports percentiles.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	pct := func(p float64) float64 {
		return float64(l[min(len(l)-1, int(p*float64(len(l))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.90), "p90-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(float64(l[len(l)-1].Nanoseconds())/1e3, "max-µs")
}

// BenchmarkSignalToEnforcement measures how long an operator's signal takes
// to be enforced, from the gateway's Publish to:
//
//   - terminate-to-denied: the next call of the op returning denied. The
//     benchmark learns that the store applied the terminate from a
//     registration (Store.Track) whose cancel function Apply calls, so it
//     needs no polling, then makes the call and stops the clock when the
//     call has returned denied.
//   - resume-to-released: a call held by a pause being let through, i.e.
//     reaching the interceptor chained after the gate (the RPC itself is not
//     counted).
func BenchmarkSignalToEnforcement(b *testing.B) {
	b.Run("terminate-to-denied", func(b *testing.B) {
		e := newEnv(b)
		a := e.startAgent(b, agentConfig{gate: []interceptor.Option{interceptor.WithMeterProvider(noop.NewMeterProvider())}})
		ops := newBenchOps(b)
		lat := make(latencies, 0, 10000)
		for b.Loop() {
			ctx, opID, op := ops.next()
			applied, notify := context.WithCancelCause(context.Background())
			call := a.store.Track(op, notify)
			t0 := time.Now()
			e.gw.Publish(a.id, opID, controlstore.SignalTerminate)
			select {
			case <-applied.Done():
			case <-time.After(waitFor):
				b.Fatal("terminate never applied")
			}
			err := echo(ctx, a)
			lat = append(lat, time.Since(t0))
			call.Release()
			notify(nil)
			if !errors.Is(err, controlstore.ErrTerminated) {
				b.Fatalf("call after the terminate: %v", err)
			}
		}
		lat.report(b)
	})

	b.Run("resume-to-released", func(b *testing.B) {
		e := newEnv(b)
		released := make(chan time.Time, 1)
		// Chained after the gate: it runs when the gate lets the call go.
		mark := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			released <- time.Now()
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		a := e.startAgent(b, agentConfig{gate: []interceptor.Option{interceptor.WithMeterProvider(noop.NewMeterProvider())}})
		conn := dial(b, e.tools.Addr(), append(interceptor.DialOptions(a.store, interceptor.WithMeterProvider(noop.NewMeterProvider())),
			grpc.WithChainUnaryInterceptor(mark))...)
		tools := toolserver.NewClient(conn)
		ctx, opID, op := newBenchOps(b).next()
		if _, err := tools.Echo(ctx, "warm-up"); err != nil { // connect outside the timing
			b.Fatal(err)
		}
		<-released
		lat := make(latencies, 0, 10000)
		done := make(chan error, 1)
		for b.Loop() {
			e.gw.Publish(a.id, opID, controlstore.SignalPause)
			// Wait until the pause is enforced, as Check sees it: State
			// can report an entry a moment before Check enforces it.
			pollUntil(b, "pause applied", func() bool { return errors.Is(a.store.Check(op), controlstore.ErrPaused) })
			go func() {
				_, err := tools.Echo(ctx, "held")
				done <- err
			}()
			pollUntil(b, "the call held", func() bool { return a.store.Stats().Held == 1 })
			t0 := time.Now()
			e.gw.Publish(a.id, opID, controlstore.SignalResume)
			select {
			case at := <-released:
				lat = append(lat, at.Sub(t0))
			case <-time.After(waitFor):
				b.Fatal("held call never released")
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		lat.report(b)
	})
}

// BenchmarkTerminateInFlight measures, from the gateway's Publish of a
// terminate, how long a running Work call (its handler running on the tool
// server) takes to return the terminated error: with the call's own
// registration (the default) and under a ContextWithOpCancel scope made for
// the op. One op per signal: a terminate is sticky.
func BenchmarkTerminateInFlight(b *testing.B) {
	for _, scoped := range []bool{false, true} {
		b.Run(map[bool]string{false: "per-call", true: "op-scoped"}[scoped], func(b *testing.B) {
			benchTerminateInFlight(b, scoped)
		})
	}
}

func benchTerminateInFlight(b *testing.B, scoped bool) {
	e := newEnv(b)
	a := e.startAgent(b, agentConfig{gate: []interceptor.Option{interceptor.WithMeterProvider(noop.NewMeterProvider())}})
	ops := newBenchOps(b)
	lat := make(latencies, 0, 10000)
	type result struct {
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	for b.Loop() {
		ctx, opID, _ := ops.next()
		end := context.CancelFunc(func() {})
		if scoped {
			ctx, end = interceptor.ContextWithOpCancel(ctx, a.store)
		}
		running := e.tools.Entered(toolserver.WorkMethod)
		go func() {
			err := a.tools.Work(ctx, longWork)
			done <- result{err, time.Now()}
		}()
		e.waitEntered(b, toolserver.WorkMethod, running+1)
		t0 := time.Now()
		e.gw.Publish(a.id, opID, controlstore.SignalTerminate)
		var r result
		select {
		case r = <-done:
		case <-time.After(waitFor):
			b.Fatal("in-flight Work not cancelled")
		}
		end()
		if !errors.Is(r.err, controlstore.ErrTerminated) {
			b.Fatalf("in-flight Work ended with %v", r.err)
		}
		lat = append(lat, r.at.Sub(t0))
	}
	lat.report(b)
}

// BenchmarkEchoOverhead is a real unary RPC over loopback (the tool server's
// Echo, under a real recording SDK span), bare and through the gate in every
// mode: the default (in-flight cancellation on: a context and a
// registration per call), in-flight cancellation off, and op-scoped (the
// default gate, called under a ContextWithOpCancel scope made once for the
// op). All four go over one connection, interleaved call by call in an
// order that rotates, so that neither a connection's own speed nor the
// drift of a loaded machine favours one: the connection's one interceptor
// hands each call to the gate of its variant (bare: straight to gRPC). Each
// variant reports its median call, its overhead in percent of the bare
// median, and its allocations per call (the process's, so the bare call's
// include gRPC's and the server's; the difference is the gate's).
//
// store=quiet: nothing signalled (a fresh process). store=armed: another op
// is terminated, as after any terminate (they are sticky), so the gate
// resolves and looks up every call's op.
//
// ctx=cancellable: the caller's context can be cancelled (a request context,
// a deadline), as an agent's tool calls usually are. ctx=background: it
// cannot; then in-flight cancellation gives gRPC the first cancellable
// context of the call.
func BenchmarkEchoOverhead(b *testing.B) {
	for _, armed := range []bool{false, true} {
		for _, cancellable := range []bool{true, false} {
			name := map[bool]string{false: "store=quiet", true: "store=armed"}[armed] +
				map[bool]string{false: "/ctx=background", true: "/ctx=cancellable"}[cancellable]
			b.Run(name, func(b *testing.B) { benchEchoOverhead(b, armed, cancellable) })
		}
	}
}

// via is a call option naming the gate a call goes through (nil: none).
type via struct {
	grpc.EmptyCallOption
	gate grpc.UnaryClientInterceptor
}

// dispatch is the benchmark connection's one interceptor: it runs the gate
// that the call's via names, or the call itself.
func dispatch(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	for _, o := range opts {
		if v, ok := o.(via); ok && v.gate != nil {
			return v.gate(ctx, method, req, reply, cc, invoker, opts...)
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// ctxFloor derives a cancellable context per call and nothing else.
func ctxFloor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	return invoker(ctx, method, req, reply, cc, opts...)
}

func benchEchoOverhead(b *testing.B, armed, cancellable bool) {
	e := newEnv(b)
	a := e.startAgent(b, agentConfig{})
	tr := newTracing(b)
	if armed {
		_, _, other := tr.op(b, "other-op")
		e.signal(b, a, other, controlstore.SignalTerminate)
	}
	ctx, span, _ := tr.op(b, "op")
	if !span.IsRecording() {
		b.Fatal("the caller's span must be a recording SDK span")
	}
	if cancellable {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
	}
	scoped, done := interceptor.ContextWithOpCancel(ctx, a.store)
	defer done()
	noMetrics := interceptor.WithMeterProvider(noop.NewMeterProvider())
	on := interceptor.UnaryClientInterceptor(a.store, noMetrics)
	off := interceptor.UnaryClientInterceptor(a.store, noMetrics, interceptor.WithInFlightCancellation(false))
	conn := dial(b, e.tools.Addr(), grpc.WithChainUnaryInterceptor(dispatch))
	variants := []struct {
		name string
		ctx  context.Context
		via  via
		d    []time.Duration
	}{
		{name: "bare", ctx: ctx},
		{name: "gated", ctx: ctx, via: via{gate: on}},
		{name: "gated-inflight-off", ctx: ctx, via: via{gate: off}},
		{name: "gated-op-scoped", ctx: scoped, via: via{gate: on}},
		// The context package's floor under any per-call cancellable
		// context, and what a call costs in the op scope's context alone.
		{name: "ctx-floor", ctx: ctx, via: via{gate: ctxFloor}},
		{name: "bare-in-scope", ctx: scoped},
	}
	in, out := wrapperspb.String("x"), new(wrapperspb.StringValue)
	call := func(i int) {
		v := &variants[i]
		if err := conn.Invoke(v.ctx, toolserver.EchoMethod, in, out, v.via); err != nil {
			b.Fatal(err)
		}
	}
	allocs := make([]float64, len(variants))
	for i := range variants {
		call(i) // connect and warm up outside the timing
		allocs[i] = testing.AllocsPerRun(500, func() { call(i) })
	}
	r := 0
	for b.Loop() {
		r++
		for k := range variants {
			i := (r + k) % len(variants)
			t0 := time.Now()
			call(i)
			variants[i].d = append(variants[i].d, time.Since(t0))
		}
		if r%1024 == 0 {
			e.tools.Reset() // the server's records are not what is measured
		}
	}
	med := make([]time.Duration, len(variants))
	for i := range variants {
		slices.Sort(variants[i].d)
		med[i] = variants[i].d[len(variants[i].d)/2]
		b.ReportMetric(float64(med[i].Nanoseconds()), variants[i].name+"-ns")
		b.ReportMetric(allocs[i], variants[i].name+"-allocs")
	}
	for i := 1; i < len(variants); i++ {
		b.ReportMetric(100*float64(med[i]-med[0])/float64(med[0]), variants[i].name+"-overhead-%")
		b.ReportMetric(allocs[i]-allocs[0], variants[i].name+"-extra-allocs")
	}
}
