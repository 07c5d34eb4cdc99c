package interceptor_test

// The in-flight path's contract, per call and op-scoped: what the call's
// context carries, what a terminate does to it, and that nothing stays
// behind.

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/toolserver"
)

// blockingInvoker reports the context it was given, then blocks until it
// is done and returns its error as gRPC would.
type blockingInvoker struct {
	ctxs chan context.Context
}

func newBlockingInvoker() *blockingInvoker {
	return &blockingInvoker{ctxs: make(chan context.Context, 1)}
}

func (b *blockingInvoker) invoke(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
	b.ctxs <- ctx
	<-ctx.Done()
	return status.FromContextError(ctx.Err()).Err()
}

// derivingInterceptor stands for any interceptor inside the gate that
// derives its own context (a per-attempt timeout, a tracing span).
func derivingInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	return invoker(ctx, method, req, reply, cc, opts...)
}

// chained is the gate followed by derivingInterceptor.
func chained(gate grpc.UnaryClientInterceptor) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return gate(ctx, method, req, reply, cc, func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
			return derivingInterceptor(ctx, method, req, reply, cc, invoker, opts...)
		}, opts...)
	}
}

// inFlightPaths are the two ways a running call is made cancellable.
var inFlightPaths = []struct {
	name   string
	scoped bool
}{{"per-call", false}, {"op-scoped", true}}

func TestInFlightContextContract(t *testing.T) {
	tr := newTracing(t)
	for _, p := range inFlightPaths {
		t.Run(p.name, func(t *testing.T) {
			store := newStore(t)
			unary := chained(interceptor.UnaryClientInterceptor(store))
			opCtx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			deadline := time.Now().Add(time.Hour)
			caller, cancelCaller := context.WithDeadline(opCtx, deadline)
			defer cancelCaller()
			if p.scoped {
				var done context.CancelFunc
				caller, done = interceptor.ContextWithOpCancel(caller, store)
				defer done()
			}

			// The caller's deadline reaches the invoker, inside the chain.
			inv := newBlockingInvoker()
			done := async(func() error { return unary(caller, methodBlock, nil, nil, nil, inv.invoke) })
			got := recv(t, inv.ctxs, "call to start")
			if d, ok := got.Deadline(); !ok || d.After(deadline) {
				t.Fatalf("invoker's deadline = %v, %v; want the caller's %v", d, ok, deadline)
			}
			// A terminate: the cause, on the context of the inner
			// interceptor's child, is the terminated error.
			apply(t, store, opID, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, done, "cancelled call"), opID, controlstore.ScopeOp, opID)
			var te *controlstore.TerminatedError
			if !errors.As(context.Cause(got), &te) || te.OpID != opID {
				t.Fatalf("cause inside the chain = %v, want the terminated error of %s", context.Cause(got), opID)
			}
			// The scope's registration ended with its context.
			if n := store.InFlight(); n != 0 {
				t.Fatalf("InFlight = %d after the call", n)
			}
		})
	}
}

func TestCallerCancelCausePropagates(t *testing.T) {
	tr := newTracing(t)
	mine := errors.New("the caller's own reason")
	for _, p := range inFlightPaths {
		t.Run(p.name, func(t *testing.T) {
			store := newStore(t)
			unary := chained(interceptor.UnaryClientInterceptor(store))
			opCtx, span, _ := tr.start(context.Background(), "op")
			defer span.End()
			caller, cancelCaller := context.WithCancelCause(opCtx)
			ctx := caller
			if p.scoped {
				var done context.CancelFunc
				ctx, done = interceptor.ContextWithOpCancel(caller, store)
				defer done()
			}
			inv := newBlockingInvoker()
			done := async(func() error { return unary(ctx, methodBlock, nil, nil, nil, inv.invoke) })
			got := recv(t, inv.ctxs, "call to start")
			cancelCaller(mine)
			if err := recv(t, done, "cancelled call"); status.Code(err) != codes.Canceled || errors.Is(err, controlstore.ErrTerminated) {
				t.Fatalf("err = %v, want the caller's Canceled", err)
			}
			if c := context.Cause(got); !errors.Is(c, mine) {
				t.Fatalf("cause inside the chain = %v, want the caller's %v", c, mine)
			}
		})
	}
}

// Under ContextWithOpCancel the gate hands gRPC the caller's context as it
// is: no context and no registration of the call's own.
func TestOpScopePassesThrough(t *testing.T) {
	tr := newTracing(t)
	store, other := newStore(t), newStore(t)
	opCtx, span, opID := tr.start(context.Background(), "op")
	defer span.End()
	scoped, done := interceptor.ContextWithOpCancel(opCtx, store)
	if n := store.InFlight(); n != 1 {
		t.Fatalf("InFlight = %d after ContextWithOpCancel, want 1", n)
	}
	for _, tc := range []struct {
		name        string
		store       *controlstore.Store
		ctx         context.Context
		passThrough bool
	}{
		{"same op and store", store, scoped, true},
		{"another op", store, interceptor.ContextWithOpID(scoped, "trace-001:span-001"), false},
		{"another store", other, scoped, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var during int
			inv := &fakeInvoker{during: func(context.Context) error { during = tc.store.InFlight(); return nil }}
			if err := interceptor.UnaryClientInterceptor(tc.store)(tc.ctx, methodEcho, nil, nil, nil, inv.invoke); err != nil {
				t.Fatal(err)
			}
			got := *inv.ctx.Load()
			if (got == tc.ctx) != tc.passThrough {
				t.Fatalf("invoker got the caller's context: %v, want %v", got == tc.ctx, tc.passThrough)
			}
			want := 1 // the call's own registration, or the scope's
			if tc.store == store && !tc.passThrough {
				want = 2
			}
			if during != want {
				t.Fatalf("InFlight during the call = %d, want %d", during, want)
			}
		})
	}
	done()
	if n := store.InFlight(); n != 0 {
		t.Fatalf("InFlight = %d after the scope ended", n)
	}
	// An ended scope is a cancelled context, not a terminate.
	err := interceptor.UnaryClientInterceptor(store)(scoped, methodEcho, nil, nil, nil, newBlockingInvoker().invoke)
	if status.Code(err) != codes.Canceled || errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("call under an ended scope: %v, want Canceled", err)
	}
	_ = opID
}

// Over a real connection: a terminate of the op, its agent or every agent
// kills unary calls and streams running under the op's scope, reaching the
// server, and reports the terminate; a call held under the scope ends
// terminated too; a scope made after the terminate is cancelled at once.
func TestLoopbackOpScopeKill(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		for _, sc := range scopeCases {
			t.Run(m.name+"/"+sc.scope.String(), func(t *testing.T) {
				ts := startServer(t)
				store := newStore(t)
				mr, mp := newMetrics(t)
				cc := dial(t, ts, interceptor.DialOptions(store, m.opt, interceptor.WithMeterProvider(mp))...)
				tools := toolserver.NewClient(cc)
				opCtx, span, opID := tr.start(context.Background(), "op")
				defer span.End()
				ctx, done := interceptor.ContextWithOpCancel(opCtx, store)
				defer done()

				work := async(func() error { return tools.Work(ctx, longWork) })
				ps, err := tools.Burst(ctx, 1)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := ps.Recv(); err != nil {
					t.Fatal(err)
				}
				recvd := async(func() error { _, err := ps.Recv(); return err })
				waitEntered(t, ts, methodBlock, 1)
				apply(t, store, sc.target(opID), controlstore.SignalTerminate)
				wantTerminated(t, recv(t, work, "Work under the scope"), opID, sc.scope, sc.target(opID))
				wantTerminated(t, recv(t, recvd, "Burst under the scope"), opID, sc.scope, sc.target(opID))
				waitServerCancelled(t, ts, methodBlock, 1)
				waitServerCancelled(t, ts, methodWatch, 1)
				if !errors.Is(context.Cause(ctx), controlstore.ErrTerminated) {
					t.Fatalf("scope cause = %v", context.Cause(ctx))
				}
				if n := mr.sum(t, interceptor.MetricInFlightCancelled, "scope", sc.scope.String()); n != 2 {
					t.Fatalf("in-flight cancellations = %d, want 2", n)
				}

				// A scope made for an op that is already terminated.
				late, lateDone := interceptor.ContextWithOpCancel(opCtx, store)
				defer lateDone()
				if !errors.Is(context.Cause(late), controlstore.ErrTerminated) {
					t.Fatalf("scope of a terminated op: cause %v", context.Cause(late))
				}
				wantTerminated(t, callEcho(late, cc), opID, sc.scope, sc.target(opID))
			})
		}
	}
}

func TestLoopbackOpScopeHeldThenTerminated(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ts, store, cc := loopback(t, m.opt)
			opCtx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			ctx, done := interceptor.ContextWithOpCancel(opCtx, store)
			defer done()
			apply(t, store, opID, controlstore.SignalPause)
			held := async(func() error { return callEcho(ctx, cc) })
			waitHeld(t, store, 1)
			apply(t, store, opID, controlstore.SignalTerminate)
			wantTerminated(t, recv(t, held, "held call"), opID, controlstore.ScopeOp, opID)
			if n := served(ts, methodEcho); n != 0 {
				t.Fatalf("server answered %d calls", n)
			}
		})
	}
}

// Decisions are counted per processor and summed exactly.
func TestDecisionsCountedExactlyUnderConcurrency(t *testing.T) {
	mr, mp := newMetrics(t)
	store := newStore(t)
	for _, m := range modes() {
		unary := interceptor.UnaryClientInterceptor(store, m.opt, interceptor.WithMeterProvider(mp))
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := spanCtx(uint64(g + 1))
				for range 1000 {
					if err := unary(ctx, methodEcho, nil, nil, nil, noopInvoker); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		runtime.KeepAlive(unary)
	}
	if got := mr.sum(t, interceptor.MetricDecisions, "outcome", "allowed"); got != 2*8*1000 {
		t.Fatalf("decisions{allowed} = %d, want %d", got, 2*8*1000)
	}
}

// 20,000 calls over a real connection, of every kind (unary per call and
// op-scoped, a bidi stream drained, a server stream abandoned by
// cancelling its context, calls refused): nothing stays registered, the heap does not
// grow, and (TestMain's goleak) no goroutine is left.
func TestNothingStaysBehind(t *testing.T) {
	tr := newTracing(t)
	ts, store, cc := loopback(t)
	tools := toolserver.NewClient(cc)
	opCtx, span, _ := tr.start(context.Background(), "op")
	defer span.End()
	deadOp, deadSpan, deadID := tr.start(context.Background(), "dead")
	defer deadSpan.End()
	apply(t, store, deadID, controlstore.SignalTerminate) // armed: every call resolves its op
	root, cancelRoot := context.WithCancel(opCtx)         // a long-lived parent: leaks would pile up in it
	defer cancelRoot()

	round := func(i int) {
		switch i % 5 {
		case 0:
			if _, err := tools.Echo(root, "x"); err != nil {
				t.Fatal(err)
			}
		case 1:
			ctx, done := interceptor.ContextWithOpCancel(root, store)
			if _, err := tools.Echo(ctx, "x"); err != nil {
				t.Fatal(err)
			}
			done()
		case 2:
			ctx, cancel := context.WithCancel(root)
			ps, err := tools.Burst(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ps.Recv(); err != nil {
				t.Fatal(err)
			}
			cancel() // abandoned: never drained
		case 3:
			cs, err := tools.Chat(root)
			if err != nil {
				t.Fatal(err)
			}
			if err := cs.Send("x"); err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Recv(); err != nil {
				t.Fatal(err)
			}
			_ = cs.CloseSend()
			if _, err := cs.Recv(); err == nil {
				t.Fatal("Chat did not end")
			}
		case 4:
			if _, err := tools.Echo(deadOp, "x"); !errors.Is(err, controlstore.ErrTerminated) {
				t.Fatalf("call of a terminated op: %v", err)
			}
		}
	}
	heap := func() uint64 {
		ts.Reset() // the server's records of the calls are not the gate's
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	warm, total := 2000, 20000
	if testing.Short() {
		warm, total = 500, 4000
	}
	for i := range warm {
		round(i)
	}
	eventually(t, "warm-up registrations released", func() bool { return store.InFlight() == 0 })
	before := heap()
	for i := warm; i < total; i++ {
		round(i)
	}
	eventually(t, "every registration released", func() bool { return store.InFlight() == 0 })
	after := heap()
	// A call's contexts and registration take hundreds of bytes; 1 MiB
	// over 18,000 calls (58 bytes a call) leaves room for the runtime's
	// and gRPC's own caches, and none for anything kept per call.
	if after > before && after-before > 1<<20 {
		t.Fatalf("heap grew from %d to %d bytes over %d calls", before, after, total-warm)
	}
	t.Logf("heap %d → %d bytes over %d calls", before, after, total-warm)
}
