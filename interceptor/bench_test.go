package interceptor_test

// Benchmarks of the gate's own cost. The comparisons that matter are
// measured within one run, interleaved, so that the drift of a loaded
// machine hits every variant alike:
//
//	go test -run '^$' -bench 'Interleaved' ./interceptor/
//	go test -run '^$' -bench 'BenchmarkUnaryParallel' -cpu 1,2 ./interceptor/
//
// The first reports each variant's ns/call, its allocations and its ratio to
// the first variant; the second is read as the throughput ratio of -cpu 2 to
// -cpu 1.

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
)

func noopInvoker(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
	return nil
}

// spanCtx returns a context carrying a valid, sampled span context, as a
// traced agent's tool calls do.
func spanCtx(i uint64) context.Context {
	var tid trace.TraceID
	var sid trace.SpanID
	for k := 0; k < 8; k++ {
		tid[k] = byte(i >> (8 * k))
		sid[k] = byte(i>>(8*k)) ^ 0x5a
	}
	tid[15], sid[7] = 1, 1
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(context.Background(), sc)
}

// fill puts n active per-op entries (half paused, half terminated) for ops
// other than the benchmarked ones into store.
func fill(b *testing.B, store *controlstore.Store, n int) {
	for i := 0; i < n; i++ {
		sig := controlstore.SignalPause
		if i%2 == 1 {
			sig = controlstore.SignalTerminate
		}
		sc := trace.SpanContextFromContext(spanCtx(uint64(1_000_000 + i)))
		if err := store.Apply(opIDOf(sc), sig); err != nil {
			b.Fatal(err)
		}
	}
}

// gateMode is one way of running the gate.
type gateMode struct {
	name string
	opts []interceptor.Option
	// scoped: the caller's context comes from ContextWithOpCancel.
	scoped bool
}

var gateModes = []gateMode{
	{name: "inflight=off", opts: []interceptor.Option{interceptor.WithInFlightCancellation(false)}},
	{name: "inflight=on"},
	{name: "inflight=op-scoped", scoped: true},
}

// callerCtx is the context a caller of mode passes: ctx, or ctx wrapped by
// ContextWithOpCancel once (per op, not per call).
func (m gateMode) callerCtx(ctx context.Context, b *testing.B, store *controlstore.Store) context.Context {
	if !m.scoped {
		return ctx
	}
	ctx, done := interceptor.ContextWithOpCancel(ctx, store)
	b.Cleanup(done)
	return ctx
}

// BenchmarkUnary measures the unary interceptor alone, with a no-op
// invoker: quiet (nothing signalled) and with 4,096 active entries of
// other ops, in every mode, with the no-op and the SDK meter provider.
func BenchmarkUnary(b *testing.B) {
	for _, meters := range []struct {
		name string
		mp   func() metric.MeterProvider
	}{
		{"noop-metrics", func() metric.MeterProvider { return noop.NewMeterProvider() }},
		{"sdk-metrics", func() metric.MeterProvider {
			return sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		}},
	} {
		for _, entries := range []int{0, 4096} {
			for _, m := range gateModes {
				b.Run(fmt.Sprintf("%s/entries=%d/%s", meters.name, entries, m.name), func(b *testing.B) {
					store := newStore(b)
					fill(b, store, entries)
					unary := interceptor.UnaryClientInterceptor(store, append(m.opts, interceptor.WithMeterProvider(meters.mp()))...)
					ctx := m.callerCtx(spanCtx(1), b, store)
					b.ReportAllocs()
					for b.Loop() {
						if err := unary(ctx, methodEcho, nil, nil, nil, noopInvoker); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
	b.Run("baseline-invoker-only", func(b *testing.B) {
		ctx := spanCtx(1)
		b.ReportAllocs()
		for b.Loop() {
			_ = noopInvoker(ctx, methodEcho, nil, nil, nil)
		}
	})
}

// BenchmarkUnaryParallel is BenchmarkUnary from every P at once. ops=each:
// every goroutine has its own op; ops=one: all share one op (the calls of
// one op must not serialise either); ops=none: no span at all. Run it with
// -cpu 1,2: the gate scales when ns/op at -cpu 2 is well under -cpu 1's.
func BenchmarkUnaryParallel(b *testing.B) {
	for _, entries := range []int{0, 4096} {
		for _, m := range gateModes {
			for _, ops := range []string{"each", "one", "none"} {
				if m.scoped && ops == "none" {
					continue // a scope is made for an op
				}
				b.Run(fmt.Sprintf("entries=%d/%s/ops=%s", entries, m.name, ops), func(b *testing.B) {
					store := newStore(b)
					fill(b, store, entries)
					unary := interceptor.UnaryClientInterceptor(store,
						append(m.opts, interceptor.WithMeterProvider(noop.NewMeterProvider()))...)
					var seq atomic.Uint64
					shared := m.callerCtx(spanCtx(1), b, store)
					b.ReportAllocs()
					b.RunParallel(func(pb *testing.PB) {
						var ctx context.Context
						switch ops {
						case "each":
							ctx = spanCtx(seq.Add(1) + 1)
							if m.scoped {
								var done context.CancelFunc
								ctx, done = interceptor.ContextWithOpCancel(ctx, store)
								defer done()
							}
						case "one":
							ctx = shared
						default:
							ctx = context.Background()
						}
						for pb.Next() {
							if err := unary(ctx, methodEcho, nil, nil, nil, noopInvoker); err != nil {
								b.Error(err)
								return
							}
						}
					})
				})
			}
		}
	}
}

// BenchmarkParallelControl is work that shares nothing at all (a few
// hundred ns of arithmetic on the goroutine's own stack), run like
// BenchmarkUnaryParallel. Its -cpu 2 / -cpu 1 throughput ratio is what the
// machine offers at that moment; a gate that shares nothing between calls
// scales as this does.
func BenchmarkParallelControl(b *testing.B) {
	b.RunParallel(func(pb *testing.PB) {
		x := uint64(1)
		for pb.Next() {
			for range 100 {
				x = x*6364136223846793005 + 1442695040888963407
			}
		}
		sink.Add(x & 1)
	})
}

var sink atomic.Uint64

// BenchmarkScaling measures how throughput grows from one processor to two,
// for the gate in every mode and for work that shares nothing (control),
// in rounds that alternate GOMAXPROCS=1 and 2 so that each ratio is taken
// within tens of milliseconds, on whatever the machine offers then. It
// reports, per variant, the median over rounds of throughput(2)/throughput(1)
// and that divided by the control's ratio of the same round (1 means it
// scales as well as work that shares nothing). Run with -benchtime 30x.
func BenchmarkScaling(b *testing.B) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	store := newStore(b)
	noMetrics := interceptor.WithMeterProvider(noop.NewMeterProvider())
	on := interceptor.UnaryClientInterceptor(store, noMetrics)
	off := interceptor.UnaryClientInterceptor(store, noMetrics, interceptor.WithInFlightCancellation(false))
	shared := spanCtx(1)
	scoped, done := interceptor.ContextWithOpCancel(shared, store)
	defer done()
	gated := func(u grpc.UnaryClientInterceptor, ctxOf func(g int) context.Context) func(g, n int) {
		return func(g, n int) {
			ctx := ctxOf(g)
			for range n {
				if err := u(ctx, methodEcho, nil, nil, nil, noopInvoker); err != nil {
					b.Error(err)
					return
				}
			}
		}
	}
	eachOp := func(g int) context.Context { return spanCtx(uint64(g + 2)) }
	oneOp := func(int) context.Context { return shared }
	variants := []struct {
		name string
		n    int
		run  func(g, n int)
	}{
		{"control", 20000, func(_, n int) {
			x := uint64(1)
			for range n * 100 {
				x = x*6364136223846793005 + 1442695040888963407
			}
			sink.Add(x & 1)
		}},
		{"default-each-op", 20000, gated(on, eachOp)},
		{"default-one-op", 20000, gated(on, oneOp)},
		{"inflight-off", 200000, gated(off, eachOp)},
		{"op-scoped-one-op", 100000, gated(on, func(int) context.Context { return scoped })},
	}
	run := func(procs int, n int, f func(g, n int)) time.Duration {
		runtime.GOMAXPROCS(procs)
		var wg sync.WaitGroup
		t0 := time.Now()
		for g := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(g, n/procs)
			}()
		}
		wg.Wait()
		return time.Since(t0)
	}
	ratios := make([][]float64, len(variants))
	rel := make([][]float64, len(variants))
	for b.Loop() {
		var control float64
		for i, v := range variants {
			r := float64(run(1, v.n, v.run)) / float64(run(2, v.n, v.run))
			if i == 0 {
				control = r
			}
			ratios[i] = append(ratios[i], r)
			rel[i] = append(rel[i], r/control)
		}
	}
	for i, v := range variants {
		slices.Sort(ratios[i])
		slices.Sort(rel[i])
		b.ReportMetric(ratios[i][len(ratios[i])/2], v.name+"-x")
		if i > 0 {
			b.ReportMetric(rel[i][len(rel[i])/2], v.name+"/control")
		}
	}
}

// variant is one contender of an interleaved comparison.
type variant struct {
	name string
	call func()
}

// interleave runs the variants in turn, block calls each per b.Loop
// iteration, rotating which goes first, and reports for each the median
// ns/call over its blocks, its allocations per call, and its ratio to the
// first variant's median, and to the variant named by over, if any (for
// the pair in over). Blocks keep the clock's own cost (tens of ns) out of
// calls that take a few hundred.
func interleave(b *testing.B, block int, vs []variant, over ...[2]string) {
	allocs := make([]float64, len(vs))
	for i, v := range vs {
		allocs[i] = testing.AllocsPerRun(200, v.call)
	}
	per := make([][]float64, len(vs))
	r := 0
	for b.Loop() {
		r++
		for k := range vs {
			i := (r + k) % len(vs)
			t0 := time.Now()
			for range block {
				vs[i].call()
			}
			per[i] = append(per[i], float64(time.Since(t0).Nanoseconds())/float64(block))
		}
	}
	med := make([]float64, len(vs))
	for i := range vs {
		slices.Sort(per[i])
		med[i] = per[i][len(per[i])/2]
		b.ReportMetric(med[i], vs[i].name+"-ns/call")
		b.ReportMetric(allocs[i], vs[i].name+"-allocs/call")
	}
	for i := 1; i < len(vs); i++ {
		b.ReportMetric(med[i]/med[0], vs[i].name+"/"+vs[0].name)
	}
	for _, pair := range over {
		num, den := slices.IndexFunc(vs, func(v variant) bool { return v.name == pair[0] }),
			slices.IndexFunc(vs, func(v variant) bool { return v.name == pair[1] })
		b.ReportMetric(med[num]/med[den], pair[0]+"/"+pair[1])
		b.ReportMetric(med[num]-med[den], pair[0]+"-minus-"+pair[1]+"-ns")
	}
}

// BenchmarkUnaryInterleaved compares, in one loop, a call with no gate (the
// no-op invoker alone), the context package's floor for a per-call
// cancellable context (ctx-floor), the default (in-flight cancellation on),
// in-flight cancellation off, and the op-scoped path (ContextWithOpCancel),
// nothing signalled and with 4,096 active entries of other ops; the
// caller's context is a cancellable request context with a span. What is
// the gate's own in the default is default minus ctx-floor.
func BenchmarkUnaryInterleaved(b *testing.B) {
	for _, entries := range []int{0, 4096} {
		b.Run(fmt.Sprintf("entries=%d", entries), func(b *testing.B) {
			store := newStore(b)
			fill(b, store, entries)
			noMetrics := interceptor.WithMeterProvider(noop.NewMeterProvider())
			ctx, cancel := context.WithCancel(spanCtx(1))
			defer cancel()
			scoped, done := interceptor.ContextWithOpCancel(ctx, store)
			defer done()
			on := interceptor.UnaryClientInterceptor(store, noMetrics)
			off := interceptor.UnaryClientInterceptor(store, noMetrics, interceptor.WithInFlightCancellation(false))
			call := func(u grpc.UnaryClientInterceptor, ctx context.Context) func() {
				return func() {
					if err := u(ctx, methodEcho, nil, nil, nil, noopInvoker); err != nil {
						b.Fatal(err)
					}
				}
			}
			interleave(b, 256, []variant{
				{"bare", func() { _ = noopInvoker(ctx, methodEcho, nil, nil, nil) }},
				// The context package's floor under any per-call
				// cancellable context: derive one, cancel it.
				{"ctx-floor", func() {
					c, cancel := context.WithCancelCause(ctx)
					_ = noopInvoker(c, methodEcho, nil, nil, nil)
					cancel(nil)
				}},
				{"default", call(on, ctx)},
				{"inflight-off", call(off, ctx)},
				{"op-scoped", call(on, scoped)},
			}, [2]string{"default", "ctx-floor"}, [2]string{"op-scoped", "inflight-off"})
		})
	}
}

// streamer is a fake streamer whose stream ends at its first RecvMsg.
func streamer(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	return &doneStream{fakeStream{ctx: ctx}}, nil
}

// BenchmarkStreamOpen measures opening and finishing a gated stream with a
// fake streamer, in every mode.
func BenchmarkStreamOpen(b *testing.B) {
	for _, m := range gateModes {
		b.Run(m.name, func(b *testing.B) {
			store := newStore(b)
			stream := interceptor.StreamClientInterceptor(store,
				append(m.opts, interceptor.WithMeterProvider(noop.NewMeterProvider()))...)
			desc := &grpc.StreamDesc{ServerStreams: true}
			ctx := m.callerCtx(spanCtx(1), b, store)
			b.ReportAllocs()
			for b.Loop() {
				cs, err := stream(ctx, desc, nil, methodWatch, streamer)
				if err != nil {
					b.Fatal(err)
				}
				_ = cs.RecvMsg(nil) // io.EOF: finished
			}
		})
	}
}

// BenchmarkStreamOpenInterleaved compares stream open and finish with
// in-flight cancellation on (the default) and off, and op-scoped, in one
// loop.
func BenchmarkStreamOpenInterleaved(b *testing.B) {
	store := newStore(b)
	noMetrics := interceptor.WithMeterProvider(noop.NewMeterProvider())
	on := interceptor.StreamClientInterceptor(store, noMetrics)
	off := interceptor.StreamClientInterceptor(store, noMetrics, interceptor.WithInFlightCancellation(false))
	desc := &grpc.StreamDesc{ServerStreams: true}
	ctx, cancel := context.WithCancel(spanCtx(1))
	defer cancel()
	scoped, done := interceptor.ContextWithOpCancel(ctx, store)
	defer done()
	open := func(s grpc.StreamClientInterceptor, ctx context.Context) func() {
		return func() {
			cs, err := s(ctx, desc, nil, methodWatch, streamer)
			if err != nil {
				b.Fatal(err)
			}
			_ = cs.RecvMsg(nil)
		}
	}
	interleave(b, 64, []variant{
		{"inflight-off", open(off, ctx)},
		{"default", open(on, ctx)},
		{"op-scoped", open(on, scoped)},
	})
}

// doneStream's RecvMsg ends the stream at once.
type doneStream struct{ fakeStream }

func (d *doneStream) RecvMsg(any) error { return io.EOF }

// BenchmarkOpScopePerSpan is what making the op-scoped context at every
// span start would cost, as an OpenTelemetry TracerProvider wrapper would
// do it: a real SDK span started and ended, bare and with
// ContextWithOpCancel made after Start and ended before End.
func BenchmarkOpScopePerSpan(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tracer := tp.Tracer("bench")
	store := newStore(b)
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	interleave(b, 64, []variant{
		{"span", func() {
			_, span := tracer.Start(parent, "op")
			span.End()
		}},
		{"span+scope", func() {
			ctx, span := tracer.Start(parent, "op")
			_, done := interceptor.ContextWithOpCancel(ctx, store)
			done()
			span.End()
		}},
	})
}

// BenchmarkTerminateLatency measures, in process, the time from Apply
// (TERMINATE) of an op to the return of that op's in-flight call: with a
// fake invoker that blocks on its context, and with a real RPC over
// loopback whose handler blocks, each with the call's own registration
// (default) and under an op scope. One op per iteration (terminate is
// sticky). Reports p50 and p99 in microseconds.
func BenchmarkTerminateLatency(b *testing.B) {
	for _, scoped := range []bool{false, true} {
		suffix := map[bool]string{false: "", true: "/op-scoped"}[scoped]
		b.Run("fake-invoker"+suffix, func(b *testing.B) {
			store := newStore(b)
			unary := interceptor.UnaryClientInterceptor(store, interceptor.WithMeterProvider(noop.NewMeterProvider()))
			started := make(chan struct{}, 1)
			blocking := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
				started <- struct{}{}
				<-ctx.Done()
				return status.FromContextError(ctx.Err()).Err()
			}
			measure(b, store, scoped, func(ctx context.Context) error {
				return unary(ctx, methodBlock, nil, nil, nil, blocking)
			}, func(int) { <-started })
		})
		b.Run("loopback"+suffix, func(b *testing.B) {
			ts := startServer(b)
			store := newStore(b)
			cc := dial(b, ts, interceptor.DialOptions(store, interceptor.WithMeterProvider(noop.NewMeterProvider()))...)
			measure(b, store, scoped, func(ctx context.Context) error { return callBlock(ctx, cc) },
				func(i int) { waitEntered(b, ts, methodBlock, i) })
		})
	}
}

// measure runs one call per iteration, waits until it runs (started(i) for
// the i-th), terminates its op and records how long the call took to
// return.
func measure(b *testing.B, store *controlstore.Store, scoped bool, call func(context.Context) error, started func(i int)) {
	lat := make([]time.Duration, 0, 1024)
	done := make(chan time.Time, 1)
	i := 0
	for b.Loop() {
		i++
		ctx := spanCtx(uint64(i))
		opID := opIDOf(trace.SpanContextFromContext(ctx))
		var end context.CancelFunc = func() {}
		if scoped {
			ctx, end = interceptor.ContextWithOpCancel(ctx, store)
		}
		go func() {
			_ = call(ctx)
			done <- time.Now()
		}()
		started(i)
		t0 := time.Now()
		if err := store.Apply(opID, controlstore.SignalTerminate); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-done).Sub(t0))
		end()
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
