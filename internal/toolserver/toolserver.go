// Package toolserver is a small gRPC tool service for opcontrol's demo and
// end-to-end tests: the kind of server an agent's tool client talks to. It
// uses well-known wrapper messages, so it needs no generated code.
//
// Methods of service opcontrol.tools.v1.ToolService:
//
//	Echo     unary             returns its input at once
//	Work     unary             runs for the requested duration, or until cancelled
//	Flaky    unary             fails every odd-numbered call with Unavailable, echoes the others
//	Progress server-streaming  sends a tick every interval until cancelled or done
//	Burst    server-streaming  sends n ticks at once, then waits until cancelled
//	Chat     bidi-streaming    echoes every message until the client closes or cancels
package toolserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Method names, for exemptions and assertions.
const (
	ServiceName    = "opcontrol.tools.v1.ToolService"
	EchoMethod     = "/" + ServiceName + "/Echo"
	WorkMethod     = "/" + ServiceName + "/Work"
	ProgressMethod = "/" + ServiceName + "/Progress"
	FlakyMethod    = "/" + ServiceName + "/Flaky"
	BurstMethod    = "/" + ServiceName + "/Burst"
	ChatMethod     = "/" + ServiceName + "/Chat"
)

// Event is what the server saw of one call.
type Event struct {
	Method string
	// Err is nil when the call completed, else what ended it on the server
	// side: the context error when cancellation reached the server, or the
	// error reading the request.
	Err error
	// Ticks is the number of messages a Progress or Burst stream sent, or
	// the number of messages a Chat stream echoed.
	Ticks int
}

// Server is a running tool server on loopback.
type Server struct {
	srv *grpc.Server
	ln  net.Listener

	mu      sync.Mutex
	events  []Event
	entered map[string]int
	ended   []End
	headers map[string][]metadata.MD
	sent    map[string]int
	flaky   int
	notify  chan struct{} // closed and replaced on every record
	wg      sync.WaitGroup
}

// End is one call as the server's gRPC layer ended it, seen by a stats
// handler the server installs itself. Unlike Events, Ends include calls
// cancelled before their handler finished reading the request, so they are
// the proof that a client's cancellation reached the server.
type End struct {
	Method string
	Err    error // the status the call ended with; nil for OK
}

// Start serves the tool service on 127.0.0.1:0.
func Start(opts ...grpc.ServerOption) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, entered: make(map[string]int), headers: make(map[string][]metadata.MD), sent: make(map[string]int), notify: make(chan struct{})}
	s.srv = grpc.NewServer(append([]grpc.ServerOption{grpc.StatsHandler(observer{s})}, opts...)...)
	s.srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Echo", Handler: s.echo},
			{MethodName: "Work", Handler: s.work},
			{MethodName: "Flaky", Handler: s.flakyCall},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: "Progress", Handler: s.progress, ServerStreams: true},
			{StreamName: "Burst", Handler: s.burst, ServerStreams: true},
			{StreamName: "Chat", Handler: s.chat, ServerStreams: true, ClientStreams: true},
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
	if err := s.Wait(ctx, func() bool { return len(s.Events()) >= n }); err != nil {
		return nil, fmt.Errorf("toolserver: %d of %d calls seen: %w", len(s.Events()), n, err)
	}
	return s.Events(), nil
}

// Reset forgets everything the server has recorded (events, entered and
// sent counts, request headers, ends), so that a long test can measure
// its own memory without the server's records in it.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events, s.ended = nil, nil
	clear(s.entered)
	clear(s.sent)
	clear(s.headers)
	s.changedLocked()
}

// Entered returns how many calls of method have reached their handler (the
// server received their request).
func (s *Server) Entered(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entered[method]
}

// Headers returns the request metadata of every call of method that has
// reached the server, oldest first.
func (s *Server) Headers(method string) []metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]metadata.MD(nil), s.headers[method]...)
}

// Sent returns how many messages the server has written to calls of
// method (unary replies included).
func (s *Server) Sent(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent[method]
}

// Ended returns every call the server's gRPC layer has ended, oldest first.
func (s *Server) Ended() []End {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]End(nil), s.ended...)
}

// Wait blocks until cond holds or ctx ends. cond is evaluated again after
// every call that enters, sends, ends or records an Event, and every
// request header that arrives.
func (s *Server) Wait(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ch := s.notify
		s.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// changedLocked wakes Wait. Under mu.
func (s *Server) changedLocked() {
	close(s.notify)
	s.notify = make(chan struct{})
}

// observer is the server's stats handler: it counts calls entering their
// handler (the request arrived) and records how each call ended.
type observer struct{ s *Server }

type methodKey struct{}

func (o observer) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (o observer) HandleRPC(ctx context.Context, st stats.RPCStats) {
	method, _ := ctx.Value(methodKey{}).(string)
	s := o.s
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st := st.(type) {
	case *stats.InHeader:
		s.headers[method] = append(s.headers[method], st.Header.Copy())
	case *stats.InPayload:
		s.entered[method]++
	case *stats.OutPayload:
		s.sent[method]++
	case *stats.End:
		s.ended = append(s.ended, End{Method: method, Err: st.Error})
	default:
		return
	}
	s.changedLocked()
}

func (observer) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (observer) HandleConn(context.Context, stats.ConnStats)                       {}

func (s *Server) record(e Event) {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.changedLocked()
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

func (s *Server) flakyCall(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.StringValue)
	if err := dec(in); err != nil {
		s.record(Event{Method: FlakyMethod, Err: err})
		return nil, err
	}
	handler := func(context.Context, any) (any, error) {
		s.mu.Lock()
		s.flaky++
		fail := s.flaky%2 == 1
		s.mu.Unlock()
		if fail {
			err := status.Error(codes.Unavailable, "toolserver: flaky call failed")
			s.record(Event{Method: FlakyMethod, Err: err})
			return nil, err
		}
		s.record(Event{Method: FlakyMethod})
		return in, nil
	}
	if interceptor == nil {
		return handler(ctx, in)
	}
	return interceptor(ctx, in, &grpc.UnaryServerInfo{FullMethod: FlakyMethod}, handler)
}

// burst sends the requested number of ticks as fast as it can, then waits
// for the call to be cancelled: output the client may still have buffered
// when it is told to stop.
func (s *Server) burst(_ any, ss grpc.ServerStream) error {
	in := new(wrapperspb.Int64Value)
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	ticks := 0
	for ; int64(ticks) < in.GetValue(); ticks++ {
		if err := ss.SendMsg(wrapperspb.Int64(int64(ticks + 1))); err != nil {
			if cerr := ss.Context().Err(); cerr != nil {
				err = cerr
			}
			s.record(Event{Method: BurstMethod, Err: err, Ticks: ticks})
			return err
		}
	}
	<-ss.Context().Done()
	s.record(Event{Method: BurstMethod, Err: ss.Context().Err(), Ticks: ticks})
	return ss.Context().Err()
}

// chat echoes every message. It ends when the client closes its side
// (Err nil) or the call ends (Err is the context's error, or the error that
// ended the stream).
func (s *Server) chat(_ any, ss grpc.ServerStream) error {
	for n := 0; ; n++ {
		in := new(wrapperspb.StringValue)
		err := ss.RecvMsg(in)
		if err == nil {
			err = ss.SendMsg(in)
		} else if errors.Is(err, io.EOF) {
			s.record(Event{Method: ChatMethod, Ticks: n})
			return nil
		}
		if err != nil {
			if cerr := ss.Context().Err(); cerr != nil {
				err = cerr
			}
			s.record(Event{Method: ChatMethod, Err: err, Ticks: n})
			return err
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

// Flaky calls Flaky: every odd-numbered call the server sees fails with
// Unavailable.
func (c *Client) Flaky(ctx context.Context, msg string) (string, error) {
	out := new(wrapperspb.StringValue)
	err := c.cc.Invoke(ctx, FlakyMethod, wrapperspb.String(msg), out)
	return out.GetValue(), err
}

// Burst opens a Burst stream: n ticks at once, then nothing until the call
// is cancelled.
func (c *Client) Burst(ctx context.Context, n int64) (ProgressStream, error) {
	st, err := c.cc.NewStream(ctx, &grpc.StreamDesc{StreamName: "Burst", ServerStreams: true}, BurstMethod)
	if err != nil {
		return ProgressStream{}, err
	}
	if err := st.SendMsg(wrapperspb.Int64(n)); err != nil {
		return ProgressStream{}, err
	}
	if err := st.CloseSend(); err != nil {
		return ProgressStream{}, err
	}
	return ProgressStream{st}, nil
}

// ChatStream is an open Chat call.
type ChatStream struct{ grpc.ClientStream }

// Send sends msg; the server echoes it.
func (c ChatStream) Send(msg string) error { return c.SendMsg(wrapperspb.String(msg)) }

// Recv returns the next echoed message.
func (c ChatStream) Recv() (string, error) {
	v := new(wrapperspb.StringValue)
	err := c.RecvMsg(v)
	return v.GetValue(), err
}

// Chat opens a Chat stream.
func (c *Client) Chat(ctx context.Context) (ChatStream, error) {
	st, err := c.cc.NewStream(ctx, &grpc.StreamDesc{StreamName: "Chat", ServerStreams: true, ClientStreams: true}, ChatMethod)
	return ChatStream{st}, err
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
