package interceptor_test

// A killed stream stops talking: once the store has applied a terminate of
// a stream's op, nothing the server sent reaches the caller.

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/toolserver"
)

// bufferedStream behaves as gRPC's client stream does with messages that
// arrived before the stream was cancelled: RecvMsg hands them out first,
// and Header reports headers without an error.
type bufferedStream struct {
	ctx  context.Context
	msgs chan int
}

func newBufferedStream(ctx context.Context, n int) *bufferedStream {
	f := &bufferedStream{ctx: ctx, msgs: make(chan int, n)}
	for i := range n {
		f.msgs <- i
	}
	return f
}

func (f *bufferedStream) Header() (metadata.MD, error) { return metadata.Pairs("k", "v"), nil }
func (f *bufferedStream) Trailer() metadata.MD         { return nil }
func (f *bufferedStream) CloseSend() error             { return nil }
func (f *bufferedStream) Context() context.Context     { return f.ctx }
func (f *bufferedStream) SendMsg(any) error            { return nil }

func (f *bufferedStream) RecvMsg(any) error {
	select {
	case <-f.msgs:
		return nil
	default:
	}
	select {
	case <-f.msgs:
		return nil
	case <-f.ctx.Done():
		return status.FromContextError(f.ctx.Err()).Err()
	}
}

func TestStreamStopsTalkingAfterTerminate(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		for _, sc := range scopeCases {
			t.Run(m.name+"/"+sc.scope.String(), func(t *testing.T) {
				store := newStore(t)
				ctx, span, opID := tr.start(context.Background(), "op")
				defer span.End()
				var fs *bufferedStream
				streamer := func(ctx context.Context, _ *grpc.StreamDesc, _ *grpc.ClientConn, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
					fs = newBufferedStream(ctx, 10)
					return fs, nil
				}
				cs, err := interceptor.StreamClientInterceptor(store, m.opt)(ctx, watchDesc, nil, methodWatch, streamer)
				if err != nil {
					t.Fatal(err)
				}
				if err := cs.RecvMsg(nil); err != nil {
					t.Fatalf("RecvMsg before the terminate: %v", err)
				}
				if md, err := cs.Header(); err != nil || md.Get("k")[0] != "v" {
					t.Fatalf("Header before the terminate = %v, %v", md, err)
				}
				apply(t, store, sc.target(opID), controlstore.SignalTerminate)
				// Nine messages are still buffered: none may be delivered.
				for i := range 3 {
					err := cs.RecvMsg(nil)
					if err == nil {
						t.Fatalf("RecvMsg %d after the terminate delivered a buffered message", i)
					}
					wantTerminated(t, err, opID, sc.scope, sc.target(opID))
				}
				md, err := cs.Header()
				wantTerminated(t, err, opID, sc.scope, sc.target(opID))
				if md != nil {
					t.Fatalf("Header after the terminate returned metadata %v", md)
				}
				wantTerminated(t, cs.SendMsg(nil), opID, sc.scope, sc.target(opID))
				// Whether the terminate cancelled it or the gate did on
				// noticing it, the stream itself is over.
				if !errorsIsTerminated(context.Cause(fs.ctx)) {
					t.Fatalf("stream context cause = %v, want the terminated error", context.Cause(fs.ctx))
				}
				eventually(t, "stream registration released", func() bool { return store.InFlight() == 0 })
			})
		}
	}
}

// Over a real connection: the Burst handler has sent 50 messages, which
// gRPC holds for the client, when the op is terminated.
func TestLoopbackStreamStopsTalkingAfterTerminate(t *testing.T) {
	tr := newTracing(t)
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ts, store, cc := loopback(t, m.opt)
			ctx, span, opID := tr.start(context.Background(), "op")
			defer span.End()
			ps, err := toolserver.NewClient(cc).Burst(ctx, 50)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := ps.Recv(); err != nil || n != 1 {
				t.Fatalf("first Recv = %d, %v", n, err)
			}
			wctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := ts.Wait(wctx, func() bool { return ts.Sent(methodWatch) == 50 }); err != nil {
				t.Fatalf("the server sent %d of 50 messages", ts.Sent(methodWatch))
			}
			apply(t, store, opID, controlstore.SignalTerminate)
			for i := range 5 {
				n, err := ps.Recv()
				if err == nil {
					t.Fatalf("Recv %d after the terminate delivered message %d", i, n)
				}
				wantTerminated(t, err, opID, controlstore.ScopeOp, opID)
			}
			_, err = ps.Header()
			wantTerminated(t, err, opID, controlstore.ScopeOp, opID)
			waitServerCancelled(t, ts, methodWatch, 1)
			eventually(t, "stream registration released", func() bool { return store.InFlight() == 0 })
		})
	}
}

func errorsIsTerminated(err error) bool {
	_, ok := err.(*controlstore.TerminatedError) //nolint:errorlint // the store's own error, as the cause
	return ok
}
