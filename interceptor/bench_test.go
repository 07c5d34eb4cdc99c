package interceptor_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
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

// BenchmarkUnary measures the unary interceptor alone, with a no-op
// invoker: quiet (nothing signalled) and with 4,096 active entries of
// other ops, with in-flight cancellation off and on, with the no-op and
// the SDK meter provider.
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
			for _, inFlight := range []bool{false, true} {
				name := fmt.Sprintf("%s/entries=%d/inflight=%v", meters.name, entries, inFlight)
				b.Run(name, func(b *testing.B) {
					store := newStore(b)
					fill(b, store, entries)
					unary := interceptor.UnaryClientInterceptor(store,
						interceptor.WithInFlightCancellation(inFlight),
						interceptor.WithMeterProvider(meters.mp()))
					ctx := spanCtx(1)
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

// BenchmarkUnaryParallel is BenchmarkUnary from every P at once, each
// goroutine with its own op, and with no span at all.
func BenchmarkUnaryParallel(b *testing.B) {
	for _, inFlight := range []bool{false, true} {
		for _, withSpan := range []bool{true, false} {
			b.Run(fmt.Sprintf("inflight=%v/span=%v", inFlight, withSpan), func(b *testing.B) {
				store := newStore(b)
				unary := interceptor.UnaryClientInterceptor(store,
					interceptor.WithInFlightCancellation(inFlight),
					interceptor.WithMeterProvider(noop.NewMeterProvider()))
				var seq atomicCounter
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					ctx := context.Background()
					if withSpan {
						ctx = spanCtx(seq.next())
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

// BenchmarkStreamOpen measures opening and finishing a gated stream with a
// fake streamer.
func BenchmarkStreamOpen(b *testing.B) {
	for _, inFlight := range []bool{false, true} {
		b.Run(fmt.Sprintf("inflight=%v", inFlight), func(b *testing.B) {
			store := newStore(b)
			stream := interceptor.StreamClientInterceptor(store,
				interceptor.WithInFlightCancellation(inFlight),
				interceptor.WithMeterProvider(noop.NewMeterProvider()))
			streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
				return &doneStream{fakeStream{ctx: ctx}}, nil
			}
			desc := &grpc.StreamDesc{ServerStreams: true}
			ctx := spanCtx(1)
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

// doneStream's RecvMsg ends the stream at once.
type doneStream struct{ fakeStream }

func (d *doneStream) RecvMsg(any) error { return errEOF }

// BenchmarkLoopbackUnary is a real unary RPC over loopback TCP to an echo
// handler, without the gate (bare) and with it, in the same run; passthrough
// is a do-nothing interceptor, the cost of having any interceptor at all.
func BenchmarkLoopbackUnary(b *testing.B) {
	ts := startServer(b)
	store := newStore(b)
	passthrough := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	conns := []struct {
		name string
		cc   *grpc.ClientConn
	}{
		{"bare", dial(b, ts)},
		{"passthrough", dial(b, ts, grpc.WithChainUnaryInterceptor(passthrough))},
		{"gated", dial(b, ts, interceptor.DialOptions(store, interceptor.WithMeterProvider(noop.NewMeterProvider()))...)},
		{"gated-inflight=off", dial(b, ts, interceptor.DialOptions(store,
			interceptor.WithInFlightCancellation(false), interceptor.WithMeterProvider(noop.NewMeterProvider()))...)},
	}
	// A request context: cancellable, with the caller's span.
	ctx, cancel := context.WithCancel(spanCtx(1))
	defer cancel()
	for _, c := range conns {
		if err := callEcho(ctx, c.cc); err != nil { // connect outside the timing
			b.Fatal(err)
		}
	}
	for _, c := range conns {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := callEcho(ctx, c.cc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// On a shared machine, load drifts between sub-benchmarks by more than
	// the gate costs. interleaved/X alternates bare and X calls within one
	// loop (swapping their order every iteration) and reports the median of
	// each and X's overhead in percent of the bare median.
	for _, c := range conns[1:] {
		b.Run("interleaved/"+c.name, func(b *testing.B) {
			bare := conns[0].cc
			var tb, tx []time.Duration
			swap := false
			for b.Loop() {
				first, second := bare, c.cc
				if swap {
					first, second = second, first
				}
				t0 := time.Now()
				if err := callEcho(ctx, first); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := callEcho(ctx, second); err != nil {
					b.Fatal(err)
				}
				d0, d1 := t1.Sub(t0), time.Since(t1)
				if swap {
					d0, d1 = d1, d0
				}
				tb, tx = append(tb, d0), append(tx, d1)
				swap = !swap
			}
			mb, mx := median(tb), median(tx)
			b.ReportMetric(float64(mb.Nanoseconds()), "bare-ns/call")
			b.ReportMetric(float64(mx.Nanoseconds()), "ns/call")
			b.ReportMetric(100*float64(mx-mb)/float64(mb), "overhead-%")
		})
	}
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// BenchmarkTerminateLatency measures, in process, the time from Apply
// (TERMINATE) of an op to the return of that op's in-flight call: with a
// fake invoker that blocks on its context, and with a real RPC over
// loopback whose handler blocks. One op per iteration (terminate is
// sticky). Reports p50 and p99 in microseconds.
func BenchmarkTerminateLatency(b *testing.B) {
	b.Run("fake-invoker", func(b *testing.B) {
		store := newStore(b)
		unary := interceptor.UnaryClientInterceptor(store, interceptor.WithMeterProvider(noop.NewMeterProvider()))
		started := make(chan struct{}, 1)
		blocking := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			started <- struct{}{}
			<-ctx.Done()
			return status.FromContextError(ctx.Err()).Err()
		}
		measure(b, store, func(ctx context.Context) error {
			return unary(ctx, methodBlock, nil, nil, nil, blocking)
		}, started)
	})
	b.Run("loopback", func(b *testing.B) {
		ts := startServer(b)
		store := newStore(b)
		cc := dial(b, ts, interceptor.DialOptions(store, interceptor.WithMeterProvider(noop.NewMeterProvider()))...)
		started := make(chan struct{}, 1)
		quit := make(chan struct{})
		forwarded := make(chan struct{})
		go func() {
			defer close(forwarded)
			for {
				select {
				case <-ts.entered:
					started <- struct{}{}
				case <-quit:
					return
				}
			}
		}()
		b.Cleanup(func() { close(quit); <-forwarded })
		measure(b, store, func(ctx context.Context) error { return callBlock(ctx, cc) }, started)
	})
}

func measure(b *testing.B, store *controlstore.Store, call func(context.Context) error, started <-chan struct{}) {
	lat := make([]time.Duration, 0, 1024)
	done := make(chan time.Time, 1)
	i := uint64(0)
	for b.Loop() {
		i++
		ctx := spanCtx(i)
		opID := opIDOf(trace.SpanContextFromContext(ctx))
		go func() {
			_ = call(ctx)
			done <- time.Now()
		}()
		<-started
		t0 := time.Now()
		if err := store.Apply(opID, controlstore.SignalTerminate); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-done).Sub(t0))
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

type atomicCounter struct{ n atomic.Uint64 }

func (c *atomicCounter) next() uint64 { return c.n.Add(1) }

var errEOF = io.EOF
