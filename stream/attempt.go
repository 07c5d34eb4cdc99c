package stream

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/internal/contract"
)

// outcome is how one attempt ended.
type outcome struct {
	err      error         // nil or io.EOF: clean end
	notReady bool          // no answer within the connect window
	liveFor  time.Duration // how long the stream was live (0: never)
}

// connState is what an attempt needs to wait for the connection to be
// ready before it subscribes. *grpc.ClientConn has it.
type connState interface {
	GetState() connectivity.State
	WaitForStateChange(ctx context.Context, sourceState connectivity.State) bool
	Connect()
}

// attempt opens one stream and, once live, receives until it ends. With
// spread, it first waits until the connection is ready (within window) and
// then a random time within the reconnect spread, so that a fleet does not
// subscribe in the same instant when its gateway returns. The gateway must
// then answer within window.
func (s *Subscriber) attempt(ctx context.Context, window time.Duration, spread bool) outcome {
	s.beginAttempt()
	s.redial()
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(window, func() { cancel(errWindow) })

	if spread {
		st, ready := s.awaitReady(actx)
		if !ready || !timer.Stop() {
			timer.Stop()
			return outcome{notReady: true, err: status.Errorf(codes.Unavailable,
				"stream: connection to the gateway not ready within %v (%s)", window, strings.ToLower(st.String()))}
		}
		// The spread is not part of the window: it is waited on ctx,
		// and the gateway gets a whole window to answer after it.
		if !sleep(ctx, spreadDelay(s.opts.spread)) {
			return outcome{}
		}
		timer.Reset(window)
	}

	// The rejections of the real gateway come as a trailers-only response
	// (Header returns nil, RecvMsg the status); a ClientConnInterface
	// wrapped by interceptors may return them from NewStream. Both end
	// here as err and are classified alike.
	if s.opts.token != "" {
		actx = metadata.AppendToOutgoingContext(actx, contract.CredentialTokenKey, s.opts.token)
	}
	cs, err := s.cc.NewStream(actx, &grpc.StreamDesc{StreamName: contract.OpControlStreamName, ServerStreams: true}, FullMethod, s.callOpts...)
	var md metadata.MD
	pending := false
	if err == nil {
		// SendMsg reports io.EOF when the call has already ended; its
		// status comes from Header and RecvMsg.
		if err = cs.SendMsg(&s.req); err == nil || errors.Is(err, io.EOF) {
			_ = cs.CloseSend()
			md, err = cs.Header()
		}
		if err == nil && md == nil {
			// No headers: a trailers-only response (or a ClientStream
			// that does not report headers). RecvMsg says which.
			err = s.recv(cs)
			pending = err == nil
		}
	}
	if !timer.Stop() && ctx.Err() == nil {
		cause := "no answer"
		if err != nil {
			cause = status.Convert(err).Message()
		}
		return outcome{notReady: true, err: status.Errorf(codes.Unavailable, "stream: gateway not ready within %v: %s", window, cause)}
	}
	if err != nil {
		return outcome{err: err}
	}

	// Headers arrived: the gateway subscribed us to its broadcast before
	// sending them, so from here on nothing published is missed.
	liveAt := s.goLive()
	if pending {
		s.handle(&s.msg)
	}
	for {
		if err = s.recv(cs); err != nil {
			break
		}
		s.handle(&s.msg)
	}
	s.goDown()
	return outcome{err: err, liveFor: max(time.Since(liveAt), 1)}
}

// redial has the connection dial now if it is waiting out its own backoff
// (when cc has ResetConnectBackoff, as *grpc.ClientConn does): grpc-go
// waits up to 120 s between dials of a connection that keeps failing.
func (s *Subscriber) redial() {
	if r, ok := s.cc.(interface{ ResetConnectBackoff() }); ok {
		r.ResetConnectBackoff()
	}
}

// awaitReady waits until the connection is ready, having it dialled at
// least every readyPoll, or until ctx ends (ready false). It returns the
// last state seen. A connection that cannot report its state counts as
// ready (the attempt then waits on its own, with WaitForReady), and so does
// one shut down (the attempt then fails on its own).
func (s *Subscriber) awaitReady(ctx context.Context) (st connectivity.State, ready bool) {
	c, ok := s.cc.(connState)
	if !ok {
		return connectivity.Ready, true
	}
	for {
		st = c.GetState()
		switch st {
		case connectivity.Ready, connectivity.Shutdown:
			return st, true
		case connectivity.Idle:
			c.Connect()
		}
		wctx, cancel := context.WithTimeout(ctx, readyPoll)
		changed := c.WaitForStateChange(wctx, st)
		cancel()
		if ctx.Err() != nil {
			return st, false
		}
		if !changed {
			s.redial()
		}
	}
}

// recv receives the next frame into s.msg. A frame over the size limit
// ends the stream (grpc refuses it before reading it); it is counted here.
func (s *Subscriber) recv(cs grpc.ClientStream) error {
	err := cs.RecvMsg(&s.msg)
	if err != nil && frameTooLarge(err) {
		s.droppedTooLarge(err)
	}
	return err
}
