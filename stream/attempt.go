package stream

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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

// attempt opens one stream and, once live, receives until it ends.
func (s *Subscriber) attempt(ctx context.Context, window time.Duration) outcome {
	s.beginAttempt()
	if r, ok := s.cc.(interface{ ResetConnectBackoff() }); ok {
		r.ResetConnectBackoff()
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if s.opts.token != "" {
		actx = metadata.AppendToOutgoingContext(actx, contract.CredentialTokenKey, s.opts.token)
	}
	timer := time.AfterFunc(window, func() { cancel(errWindow) })

	// The rejections of the real gateway come as a trailers-only response
	// (Header returns nil, RecvMsg the status); a ClientConnInterface
	// wrapped by interceptors may return them from NewStream. Both end
	// here as err and are classified alike.
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
			err = cs.RecvMsg(&s.msg)
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
		if err = cs.RecvMsg(&s.msg); err != nil {
			break
		}
		s.handle(&s.msg)
	}
	s.goDown()
	return outcome{err: err, liveFor: max(time.Since(liveAt), 1)}
}
