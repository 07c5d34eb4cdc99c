package interceptor

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/opcontrol/opcontrol/controlstore"
)

func (g *gate) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if g.isExempt(method) {
		return streamer(ctx, desc, cc, method, opts...)
	}
	op, scoped := g.resolve(ctx)
	s := &clientStream{g: g, ctx: ctx, op: op, serverStreams: desc.ServerStreams}
	if !scoped {
		// The stream gets a context of its own, so that the gate can end
		// it when it finds its op terminated, and (in flight) so that a
		// terminate cancels it. With ContextWithOpCancel, ctx is that
		// context already.
		s.ctx, s.cancel = context.WithCancelCause(ctx)
		if g.inFlight {
			// Register first, check second (see unary). The registration
			// also ends by itself if the application abandons the stream
			// by cancelling its context.
			s.call = g.store.TrackContext(s.ctx, op, s.cancel)
		}
	}
	if err := g.admit(ctx, op, true, false); err != nil {
		s.finish()
		return nil, err
	}
	cs, err := streamer(s.ctx, desc, cc, method, opts...)
	if err != nil {
		if e := s.stopped(); e != nil {
			err = e
		}
		s.finish()
		return nil, err
	}
	s.ClientStream = cs
	return s, nil
}

// clientStream gates SendMsg and stops the stream once the store has
// applied a terminate of its op: from then on SendMsg, RecvMsg and Header
// return the terminated error, and no message that gRPC had already
// buffered reaches the caller. It ends (releasing its registration and its
// context) when gRPC says the stream is over: RecvMsg returns an error (or
// the single reply of a stream that is not server-streaming), or SendMsg an
// error other than io.EOF; its registration also ends with its context.
type clientStream struct {
	grpc.ClientStream
	g             *gate
	ctx           context.Context         // the stream's context
	cancel        context.CancelCauseFunc // nil when ctx is an op scope's
	op            controlstore.Op
	call          controlstore.Call // zero without in-flight cancellation
	serverStreams bool

	done    atomic.Bool
	termErr atomic.Pointer[Error] // the stream's one terminated verdict
}

// stopped returns the stream's terminated error once the store has applied
// a terminate of its op, or nil. While nothing is signalled it is two
// atomic loads.
func (s *clientStream) stopped() *Error {
	if e := s.termErr.Load(); e != nil {
		return e
	}
	if !s.g.store.Armed() {
		return nil
	}
	if te := s.g.terminated(s.op); te != nil {
		return s.kill(te)
	}
	return nil
}

// kill records te as the stream's verdict, once (the stream counts once as
// a running call stopped by a terminate), and ends the stream: with
// in-flight cancellation the terminate has cancelled it already; without,
// this cancels it, so that the server sees the cancellation too.
func (s *clientStream) kill(te *controlstore.TerminatedError) *Error {
	e := newError(s.op, te)
	if !s.termErr.CompareAndSwap(nil, e) {
		return s.termErr.Load()
	}
	s.g.recordCancelled(s.ctx, e)
	if s.cancel != nil {
		s.cancel(te)
	}
	s.finish()
	return e
}

// SendMsg holds while the stream's op is paused (until its context ends)
// and refuses the message once the op is terminated.
func (s *clientStream) SendMsg(m any) error {
	if e := s.stopped(); e != nil {
		return e
	}
	if s.g.store.Armed() {
		if err := s.g.admit(s.ctx, s.op, false, s.g.inFlight && s.cancel != nil); err != nil {
			if e := s.stopped(); e != nil {
				return e // terminated while held
			}
			return err
		}
	}
	err := s.ClientStream.SendMsg(m)
	if err != nil {
		if e := s.stopped(); e != nil {
			return e
		}
		if !errors.Is(err, io.EOF) {
			s.finish()
		}
	}
	return err
}

// RecvMsg returns the terminated error, not a message or a bare Canceled,
// once the store has applied a terminate of the stream's op: checked before
// receiving and again when a message or an error arrives.
func (s *clientStream) RecvMsg(m any) error {
	if e := s.stopped(); e != nil {
		return e
	}
	err := s.ClientStream.RecvMsg(m)
	if err == nil || !errors.Is(err, io.EOF) {
		if e := s.stopped(); e != nil {
			return e
		}
	}
	if err != nil || !s.serverStreams {
		s.finish()
	}
	return err
}

// Header returns the terminated error once the store has applied a
// terminate of the stream's op. (gRPC's own Header reports no error when a
// stream fails, only a nil header; RecvMsg gives the status.)
func (s *clientStream) Header() (metadata.MD, error) {
	if e := s.stopped(); e != nil {
		return nil, e
	}
	md, err := s.ClientStream.Header()
	if e := s.stopped(); e != nil {
		return nil, e
	}
	return md, err
}

// finish ends the stream's registration and context. Idempotent.
func (s *clientStream) finish() {
	if !s.done.CompareAndSwap(false, true) {
		return
	}
	s.call.Release()
	if s.cancel != nil {
		s.cancel(nil)
	}
}
