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
	op := g.op(ctx)
	// The stream gets a context of its own, so that a terminate seen by a
	// later SendMsg can end it, and so that Track can cancel it.
	streamCtx, cancel := context.WithCancelCause(ctx)
	var call *controlstore.Call
	if g.inFlight {
		// Register first, check second (see unary).
		call = g.store.Track(op, cancel)
	}
	if err := g.admit(ctx, op, true); err != nil {
		release(call)
		cancel(nil)
		return nil, err
	}
	cs, err := streamer(streamCtx, desc, cc, method, opts...)
	if err != nil {
		if te := terminatedCause(streamCtx); te != nil {
			err = g.cancelled(ctx, op, te)
		}
		release(call)
		cancel(nil)
		return nil, err
	}
	s := &clientStream{
		ClientStream:  cs,
		g:             g,
		ctx:           streamCtx,
		cancel:        cancel,
		op:            op,
		call:          call,
		serverStreams: desc.ServerStreams,
	}
	if call != nil {
		// A stream the application abandons by cancelling its context
		// (or that a terminate cancels) must not stay registered.
		s.stop = context.AfterFunc(streamCtx, s.ctxDone)
	}
	return s, nil
}

func release(c *controlstore.Call) {
	if c != nil {
		c.Release()
	}
}

// clientStream gates SendMsg and turns errors caused by a terminate into the
// terminated error. It ends (releasing its registration and its context)
// when gRPC says the stream is over: RecvMsg returns an error (or the single
// reply of a stream that is not server-streaming), Header or SendMsg returns
// an error other than io.EOF, or the stream's context is done.
type clientStream struct {
	grpc.ClientStream
	g             *gate
	ctx           context.Context // the stream's own context
	cancel        context.CancelCauseFunc
	op            controlstore.Op
	call          *controlstore.Call // nil without in-flight cancellation
	stop          func() bool        // stops the AfterFunc; nil without call
	serverStreams bool

	done    atomic.Bool
	termErr atomic.Pointer[Error]
}

// SendMsg holds while the stream's op is paused (until its context ends)
// and refuses the message once the op is terminated.
func (s *clientStream) SendMsg(m any) error {
	if s.g.store.Check(s.op) != nil {
		if te := terminatedCause(s.ctx); te != nil {
			return s.terminated(te) // cancelled in flight already
		}
		if err := s.g.admit(s.ctx, s.op, false); err != nil {
			if te := terminatedCause(s.ctx); te != nil {
				return s.terminated(te) // cancelled while held
			}
			var te *controlstore.TerminatedError
			var e *Error
			if errors.As(err, &e) && errors.As(e.cause, &te) {
				// Without in-flight cancellation nobody has cancelled
				// the stream yet: end it, and make later calls report
				// this terminate.
				s.termErr.CompareAndSwap(nil, e)
				s.cancel(te)
			}
			return err
		}
	}
	err := s.ClientStream.SendMsg(m)
	if err != nil {
		if te := terminatedCause(s.ctx); te != nil {
			return s.terminated(te)
		}
		if !errors.Is(err, io.EOF) {
			s.finish()
		}
	}
	return err
}

// RecvMsg returns the terminated error instead of a bare Canceled when a
// terminate ended the stream.
func (s *clientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil {
		if !s.serverStreams {
			s.finish()
		}
		return nil
	}
	if !errors.Is(err, io.EOF) {
		if te := terminatedCause(s.ctx); te != nil {
			err = s.terminated(te)
		}
	}
	s.finish()
	return err
}

// Header returns the terminated error when a terminate ended the stream.
func (s *clientStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if err != nil && !errors.Is(err, io.EOF) {
		if te := terminatedCause(s.ctx); te != nil {
			err = s.terminated(te)
		}
		s.finish()
	}
	return md, err
}

// terminated returns the stream's terminated error, recording the
// cancellation once.
func (s *clientStream) terminated(te *controlstore.TerminatedError) error {
	if e := s.termErr.Load(); e != nil {
		return e
	}
	e := s.g.cancelled(s.ctx, s.op, te)
	if !s.termErr.CompareAndSwap(nil, e) {
		return s.termErr.Load()
	}
	return e
}

// finish ends the stream's registration and context. Idempotent.
func (s *clientStream) finish() {
	if !s.done.CompareAndSwap(false, true) {
		return
	}
	if s.stop != nil {
		s.stop()
	}
	release(s.call)
	s.cancel(nil)
}

// ctxDone runs, in its own goroutine, when the stream's context is done.
func (s *clientStream) ctxDone() {
	if s.done.CompareAndSwap(false, true) {
		release(s.call)
	}
}
