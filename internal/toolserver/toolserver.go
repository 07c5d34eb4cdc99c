// Package toolserver is a small gRPC tool service for opcontrol's demo and
// end-to-end tests: the kind of server an agent's tool client talks to. It
// uses well-known wrapper messages, so it needs no generated code.
//
// Methods of service opcontrol.tools.v1.ToolService:
//
//	Echo     unary             returns its input at once
//	Work     unary             runs for the requested duration, or until cancelled
//	Progress server-streaming  sends a tick every interval until cancelled or done
package toolserver

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Method names, for exemptions and assertions.
const (
	ServiceName    = "opcontrol.tools.v1.ToolService"
	EchoMethod     = "/" + ServiceName + "/Echo"
	WorkMethod     = "/" + ServiceName + "/Work"
	ProgressMethod = "/" + ServiceName + "/Progress"
)

// Event is what the server saw of one call.
type Event struct {
	Method string
	// Err is nil when the call completed, else what ended it on the server
	// side: the context error when cancellation reached the server, or the
	// error reading the request.
	Err error
	// Ticks is the number of messages a Progress stream sent.
	Ticks int
}

// Server is a running tool server on loopback.
type Server struct {
	srv *grpc.Server
	ln  net.Listener

	mu     sync.Mutex
	events []Event
	notify chan struct{} // closed and replaced on every event
	wg     sync.WaitGroup
}

// Start serves the tool service on 127.0.0.1:0.
func Start(opts ...grpc.ServerOption) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{srv: grpc.NewServer(opts...), ln: ln, notify: make(chan struct{})}
	s.srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Echo", Handler: s.echo},
			{MethodName: "Work", Handler: s.work},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: "Progress", Handler: s.progress, ServerStreams: true},
		},
	}, nil)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// Addr is the address to dial.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server at once and waits for it.
func (s *Server) Close() {
	s.srv.Stop()
	s.wg.Wait()
}

// Events returns what the server saw so far, oldest first.
func (s *Server) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// WaitEvents blocks until the server has seen at least n calls end, or ctx
// ends.
func (s *Server) WaitEvents(ctx context.Context, n int) ([]Event, error) {
	for {
		s.mu.Lock()
		if len(s.events) >= n {
			ev := append([]Event(nil), s.events...)
			s.mu.Unlock()
			return ev, nil
		}
		ch := s.notify
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("toolserver: %d of %d calls seen: %w", len(s.Events()), n, ctx.Err())
		}
	}
}

func (s *Server) record(e Event) {
	s.mu.Lock()
	s.events = append(s.events, e)
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
}

func (s *Server) echo(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.StringValue)
	if err := dec(in); err != nil {
		s.record(Event{Method: EchoMethod, Err: err})
		return nil, err
	}
	handler := func(context.Context, any) (any, error) {
		s.record(Event{Method: EchoMethod})
		return in, nil
	}
	if interceptor == nil {
		return handler(ctx, in)
	}
	return interceptor(ctx, in, &grpc.UnaryServerInfo{FullMethod: EchoMethod}, handler)
}

func (s *Server) work(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(durationpb.Duration)
	if err := dec(in); err != nil {
		s.record(Event{Method: WorkMethod, Err: err})
		return nil, err
	}
	handler := func(ctx context.Context, _ any) (any, error) {
		t := time.NewTimer(in.AsDuration())
		defer t.Stop()
		select {
		case <-t.C:
			s.record(Event{Method: WorkMethod})
			return wrapperspb.String("done"), nil
		case <-ctx.Done():
			s.record(Event{Method: WorkMethod, Err: ctx.Err()})
			return nil, ctx.Err()
		}
	}
	if interceptor == nil {
		return handler(ctx, in)
	}
	return interceptor(ctx, in, &grpc.UnaryServerInfo{FullMethod: WorkMethod}, handler)
}

func (s *Server) progress(_ any, ss grpc.ServerStream) error {
	in := new(durationpb.Duration)
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	every := max(in.AsDuration(), time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for ticks := 0; ; {
		select {
		case <-ss.Context().Done():
			s.record(Event{Method: ProgressMethod, Err: ss.Context().Err(), Ticks: ticks})
			return ss.Context().Err()
		case <-t.C:
			ticks++
			if err := ss.SendMsg(wrapperspb.Int64(int64(ticks))); err != nil {
				// A send fails because the call ended: report the
				// context's error when there is one, as documented.
				if cerr := ss.Context().Err(); cerr != nil {
					err = cerr
				}
				s.record(Event{Method: ProgressMethod, Err: err, Ticks: ticks})
				return err
			}
		}
	}
}

// Client calls the tool service over any connection (with or without
// interceptors).
type Client struct {
	cc grpc.ClientConnInterface
}

// NewClient returns a client over cc.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

// Echo calls Echo.
func (c *Client) Echo(ctx context.Context, msg string) (string, error) {
	out := new(wrapperspb.StringValue)
	err := c.cc.Invoke(ctx, EchoMethod, wrapperspb.String(msg), out)
	return out.GetValue(), err
}

// Work calls Work, which runs for d on the server.
func (c *Client) Work(ctx context.Context, d time.Duration) error {
	return c.cc.Invoke(ctx, WorkMethod, durationpb.New(d), new(wrapperspb.StringValue))
}

// ProgressStream is an open Progress call.
type ProgressStream struct{ grpc.ClientStream }

// Recv returns the next tick number.
func (p ProgressStream) Recv() (int64, error) {
	v := new(wrapperspb.Int64Value)
	err := p.RecvMsg(v)
	return v.GetValue(), err
}

// Progress opens a Progress stream ticking every interval.
func (c *Client) Progress(ctx context.Context, every time.Duration) (ProgressStream, error) {
	st, err := c.cc.NewStream(ctx, &grpc.StreamDesc{StreamName: "Progress", ServerStreams: true}, ProgressMethod)
	if err != nil {
		return ProgressStream{}, err
	}
	if err := st.SendMsg(durationpb.New(every)); err != nil {
		return ProgressStream{}, err
	}
	if err := st.CloseSend(); err != nil {
		return ProgressStream{}, err
	}
	return ProgressStream{st}, nil
}
