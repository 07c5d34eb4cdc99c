package gatewaytest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/contract"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

// Names of the service and method the gateway serves.
const (
	ServiceName = contract.ServiceName
	MethodName  = contract.OpControlStreamName
	// FullMethod is the path a client calls.
	FullMethod = contract.OpControlStreamMethod
)

// Route says which subscriptions an envelope reaches.
type Route struct {
	// Agent is the subscription triple the envelope is for. It must equal
	// the subscription's byte for byte. Ignored when Global.
	Agent controlstore.Agent
	// Global envelopes reach every subscription.
	Global bool
}

// ToAgent routes to the subscriptions of exactly agent's triple.
func ToAgent(agent controlstore.Agent) Route { return Route{Agent: agent} }

// ToAll routes to every subscription.
func ToAll() Route { return Route{Global: true} }

// SubscribeEvent describes one subscribe the gateway decided.
type SubscribeEvent struct {
	Time time.Time
	// Agent is the requested triple; HasAgent is false when the request
	// had no agent_id.
	Agent    controlstore.Agent
	HasAgent bool
	// Token is the credential resolved from the metadata, "" if none.
	Token string
	// Code is codes.OK when the subscription was admitted, otherwise the
	// status the stream was rejected with.
	Code codes.Code
}

// SubscriberInfo describes one live subscription.
type SubscriberInfo struct {
	Agent controlstore.Agent
	Since time.Time
	// Sent counts messages sent on this stream; Skipped counts envelopes
	// it missed because it lagged more than the ring's capacity behind.
	Sent, Skipped uint64
}

// Stats counts what the gateway did since Start, across restarts.
type Stats struct {
	Subscribers int    // subscriptions live now
	Accepted    uint64 // subscribes admitted
	Rejected    uint64 // subscribes rejected with a status
	Published   uint64 // envelopes published
	Skipped     uint64 // envelopes skipped by lagging subscriptions (ended ones included)
	Sequence    uint64 // the sequence number the next Publish gets
	Restarts    int
}

// Gateway is an in-process Agent Assembly gateway serving only
// OpControlStream, with the real gateway's semantics and controls for
// tests. Create it with Start; its methods are safe for concurrent use.
type Gateway struct {
	opts options
	addr string

	mu          sync.Mutex
	srv         *grpc.Server
	ring        *ring
	closed      bool
	tokens      map[string]controlstore.Agent
	subs        map[*subscription]struct{}
	subsChanged chan struct{} // closed and replaced when subs changes
	held        chan struct{} // non-nil while delivery is held; closed on release
	detached    bool
	rejectN     int
	rejectCode  codes.Code
	dropN       int
	dropCode    codes.Code
	stats       Stats

	serving sync.WaitGroup // Serve goroutines
}

// subscription is one admitted stream.
type subscription struct {
	agent controlstore.Agent
	since time.Time
	cur   *cursor
	sent  atomic.Uint64

	end    chan struct{} // closed by DropAll
	endErr error         // set before end is closed
	once   sync.Once

	// dropNow (from DropNext) ends the stream right after its headers,
	// with dropErr.
	dropNow bool
	dropErr error
}

func (s *subscription) drop(err error) {
	s.once.Do(func() {
		s.endErr = err
		close(s.end)
	})
}

// Start starts a gateway listening on the configured address (default a
// free loopback port). Close it when done.
func Start(opts ...Option) (*Gateway, error) {
	o := options{addr: defaultAddr, ringCap: DefaultRingCapacity, tokens: map[string]controlstore.Agent{}}
	for _, opt := range opts {
		opt(&o)
	}
	g := &Gateway{
		opts:        o,
		tokens:      o.tokens,
		subs:        make(map[*subscription]struct{}),
		subsChanged: make(chan struct{}),
		ring:        newRing(o.ringCap),
	}
	lis, err := listen(o.addr)
	if err != nil {
		return nil, fmt.Errorf("gatewaytest: listen: %w", err)
	}
	g.addr = lis.Addr().String()
	g.serve(lis)
	return g, nil
}

// listen binds addr. For the default address it picks a free loopback
// port below the ephemeral ranges of common systems (Linux from 32768,
// others from 49152): a port from that range, once freed by Stop, can be
// taken by any outgoing connection or ":0" listener, and Restart could not
// bind it again.
func listen(addr string) (net.Listener, error) {
	if addr != defaultAddr {
		return net.Listen("tcp", addr)
	}
	for range 64 {
		port := 20000 + rand.IntN(12000)
		if lis, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			return lis, nil
		}
	}
	return net.Listen("tcp", addr)
}

// listenAgain binds addr for Restart, retrying for a few seconds while the
// port is briefly held by another socket.
func listenAgain(addr string) (net.Listener, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		lis, err := net.Listen("tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return lis, err
		}
		t := time.NewTimer(20 * time.Millisecond)
		<-t.C
	}
}

// Addr returns the address the gateway listens on ("127.0.0.1:port"). It
// does not change across Restart.
func (g *Gateway) Addr() string { return g.addr }

// serviceDesc is a hand-written PolicyService with OpControlStream only.
func serviceDesc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName:    MethodName,
			Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(*Gateway).handle(ss) },
			ServerStreams: true,
		}},
	}
}

// serve starts a grpc.Server on lis. Under mu or before g is shared.
func (g *Gateway) serve(lis net.Listener) {
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(wirecodec.Codec{}),
		// The real gateway (hyper) does not police client pings; grpc-go's
		// default policy would answer 10 s keepalive pings with GOAWAY.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
		grpc.WaitForHandlers(true),
	}
	srv := grpc.NewServer(append(opts, g.opts.serverOpts...)...)
	srv.RegisterService(serviceDesc(), g)
	g.srv = srv
	g.serving.Add(1)
	go func() {
		defer g.serving.Done()
		_ = srv.Serve(lis)
	}()
}

// Stop takes the gateway down like a crashed process: the listener and
// every connection are closed at once, and clients see their streams fail
// with Unavailable. Publishing while stopped reaches nobody. Restart brings
// it back on the same address. Stop returns once every stream's handler has
// ended; it is a no-op when already stopped.
func (g *Gateway) Stop() {
	g.mu.Lock()
	srv := g.srv
	g.srv = nil
	g.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// Restart starts a stopped gateway again on the same address, as a new
// process: an empty ring and the sequence counter back at 0. Registered
// tokens and injected faults are kept. It fails if the gateway is running
// or closed, or if the address cannot be bound again.
func (g *Gateway) Restart() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("gatewaytest: Restart of a closed gateway")
	}
	if g.srv != nil {
		return errors.New("gatewaytest: Restart of a running gateway; Stop it first")
	}
	lis, err := listenAgain(g.addr)
	if err != nil {
		return fmt.Errorf("gatewaytest: listen again on %s: %w", g.addr, err)
	}
	g.ring = newRing(g.opts.ringCap)
	g.stats.Restarts++
	g.serve(lis)
	return nil
}

// Close stops the gateway for good and waits for its goroutines. It is
// safe to call more than once.
func (g *Gateway) Close() {
	g.mu.Lock()
	g.closed = true
	held := g.held
	g.held = nil
	g.mu.Unlock()
	if held != nil {
		close(held)
	}
	g.Stop()
	g.serving.Wait()
}

// RegisterToken makes token the credential of agent (replacing any earlier
// registration of token). Subscriptions presenting it must request exactly
// agent's triple.
func (g *Gateway) RegisterToken(token string, agent controlstore.Agent) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tokens[token] = agent
}

// RevokeToken forgets token. Streams already admitted with it stay up;
// later subscribes with it are Unauthenticated.
func (g *Gateway) RevokeToken(token string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.tokens, token)
}

// RejectNext makes the next n subscribes fail with code (a trailers-only
// response, before any other check), whatever they request. A huge n
// rejects every subscribe; n <= 0 clears the fault. code must not be OK.
func (g *Gateway) RejectNext(n int, code codes.Code) {
	if code == codes.OK && n > 0 {
		panic("gatewaytest: RejectNext needs an error code")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rejectN, g.rejectCode = max(n, 0), code
}

// DropNext admits the next n valid subscribes, sends their response
// headers (so the client sees a live stream), and ends them at once with
// code; codes.OK ends them cleanly, like a proxy closing idle streams. A
// huge n affects every subscribe; n <= 0 clears the fault.
func (g *Gateway) DropNext(n int, code codes.Code) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dropN, g.dropCode = max(n, 0), code
}

// DropAll ends every live stream with code (codes.OK: a clean end of
// stream) and returns how many it ended. A stream whose handler is blocked
// sending to a client that does not read ends only when its connection
// does.
func (g *Gateway) DropAll(code codes.Code) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	err := endErr(code, "gatewaytest: stream dropped")
	for s := range g.subs {
		s.drop(err)
	}
	return len(g.subs)
}

// SetPublisherAttached attaches (the default) or detaches the op-control
// publisher. While detached, subscribes that pass the checks fail with
// Unavailable, like a gateway wired without a publisher.
func (g *Gateway) SetPublisherAttached(attached bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.detached = !attached
}

// HoldDelivery stops every stream from sending (publishing continues into
// the ring), as if the network stalled; subscriptions that fall more than
// the ring's capacity behind skip envelopes. ReleaseDelivery resumes.
func (g *Gateway) HoldDelivery() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held == nil {
		g.held = make(chan struct{})
	}
}

// ReleaseDelivery undoes HoldDelivery.
func (g *Gateway) ReleaseDelivery() {
	g.mu.Lock()
	held := g.held
	g.held = nil
	g.mu.Unlock()
	if held != nil {
		close(held)
	}
}

// SubscriberCount returns the number of live subscriptions.
func (g *Gateway) SubscriberCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.subs)
}

// WaitForSubscribers waits until exactly n subscriptions are live, or ctx
// ends. A subscription counts from the moment it is subscribed to the
// ring, just before its response headers are sent.
func (g *Gateway) WaitForSubscribers(ctx context.Context, n int) error {
	for {
		g.mu.Lock()
		cur, ch := len(g.subs), g.subsChanged
		g.mu.Unlock()
		if cur == n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("gatewaytest: %d subscribers, waiting for %d: %w", cur, n, ctx.Err())
		}
	}
}

// Subscribers describes the live subscriptions.
func (g *Gateway) Subscribers() []SubscriberInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]SubscriberInfo, 0, len(g.subs))
	for s := range g.subs {
		out = append(out, SubscriberInfo{Agent: s.agent, Since: s.since, Sent: s.sent.Load(), Skipped: s.cur.skipped.Load()})
	}
	return out
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.stats
	st.Subscribers = len(g.subs)
	for s := range g.subs {
		st.Skipped += s.cur.skipped.Load()
	}
	st.Sequence = g.ring.sequence()
	return st
}

// Publish sends sig for opID to the subscriptions of agent's triple, with
// the next sequence number, which it returns. Like the real gateway, it
// succeeds with nobody listening (the message is lost) and never blocks.
func (g *Gateway) Publish(agent controlstore.Agent, opID string, sig controlstore.Signal) uint64 {
	return g.publish(ToAgent(agent), opID, sig)
}

// HaltAgent sends sig for "agent:{agent_id}" to the subscriptions of
// agent's triple (what the operator's halt-agent does) and returns its
// sequence number.
func (g *Gateway) HaltAgent(agent controlstore.Agent, sig controlstore.Signal) uint64 {
	return g.publish(ToAgent(agent), controlstore.AgentOpIDPrefix+agent.AgentID, sig)
}

// HaltAll sends sig for "*" to every subscription (the operator's global
// halt) and returns its sequence number.
func (g *Gateway) HaltAll(sig controlstore.Signal) uint64 {
	return g.publish(ToAll(), controlstore.GlobalOpID, sig)
}

// PublishMessage sends msg exactly as given, sequence included (the
// gateway's counter is left alone): any op id, any enum value. For
// malformed-input tests.
func (g *Gateway) PublishMessage(r Route, msg *wirev1.OpControlMessage) {
	frame, err := proto.Marshal(msg)
	if err != nil {
		panic("gatewaytest: PublishMessage: " + err.Error())
	}
	g.PublishRaw(r, frame)
}

// PublishRaw sends frame as one message's bytes, whatever they are: a
// client sees them as an OpControlMessage frame. For malformed-input tests.
func (g *Gateway) PublishRaw(r Route, frame []byte) {
	frame = append([]byte(nil), frame...)
	g.currentRing().publish(r, false, func(uint64) []byte { return frame })
	g.countPublish()
}

func (g *Gateway) publish(r Route, opID string, sig controlstore.Signal) uint64 {
	seq := g.currentRing().publish(r, true, func(seq uint64) []byte {
		b, err := proto.Marshal(&wirev1.OpControlMessage{OpId: opID, Signal: wirev1.OpControlSignal(sig), Sequence: seq})
		if err != nil {
			panic("gatewaytest: Publish: " + err.Error()) // only invalid UTF-8 in opID
		}
		return b
	})
	g.countPublish()
	return seq
}

func (g *Gateway) currentRing() *ring {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ring
}

func (g *Gateway) countPublish() {
	g.mu.Lock()
	g.stats.Published++
	g.mu.Unlock()
}

func endErr(code codes.Code, msg string) error {
	if code == codes.OK {
		return nil
	}
	return status.Error(code, msg)
}

// handle serves one OpControlStream call, in the real handler's order:
// agent_id present, credential valid, triple equal to the caller's
// identity, publisher attached; then subscribe to the ring, send the
// response headers (the client's "subscription is live" barrier), and
// forward matching envelopes until the client leaves or the gateway stops.
func (g *Gateway) handle(ss grpc.ServerStream) error {
	ctx := ss.Context()
	var req wirev1.OpControlSubscribeRequest
	if err := ss.RecvMsg(&req); err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	ev := SubscribeEvent{Time: time.Now(), HasAgent: req.GetAgentId() != nil, Token: credentialToken(md)}
	if a := req.GetAgentId(); a != nil {
		ev.Agent = controlstore.Agent{OrgID: a.GetOrgId(), TeamID: a.GetTeamId(), AgentID: a.GetAgentId()}
	}

	sub, err := g.admit(&ev)
	if g.opts.observer != nil {
		ev.Code = status.Code(err)
		g.opts.observer(ev)
	}
	if err != nil {
		return err
	}
	defer g.leave(sub)
	if err := ss.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	if sub.dropNow {
		sub.drop(sub.dropErr)
	}

	var raw wirecodec.Raw
	for {
		g.mu.Lock()
		held := g.held
		g.mu.Unlock()
		if held != nil {
			select {
			case <-held:
				continue
			case <-sub.end:
				return sub.endErr
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		select {
		case <-sub.end:
			return sub.endErr
		default:
		}
		env, ok, wake, _ := sub.cur.next()
		if !ok {
			select {
			case <-wake:
			case <-sub.end:
				return sub.endErr
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
			continue
		}
		if !env.route.Global && env.route.Agent != sub.agent {
			continue
		}
		raw = env.frame
		if err := ss.SendMsg(&raw); err != nil {
			return err
		}
		sub.sent.Add(1)
	}
}

// admit decides a subscribe. On success the subscription is on the ring
// and counted.
func (g *Gateway) admit(ev *SubscribeEvent) (sub *subscription, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.rejectN > 0:
		g.rejectN--
		err = status.Errorf(g.rejectCode, "gatewaytest: injected rejection")
	case !ev.HasAgent:
		err = status.Error(codes.InvalidArgument, "agent_id is required")
	case !g.opts.noAuth:
		id, ok := g.tokens[ev.Token]
		switch {
		case ev.Token == "" || !ok:
			err = status.Error(codes.Unauthenticated, "op_control_stream requires a valid credential token")
		case identity(id) != identity(ev.Agent):
			err = status.Error(codes.PermissionDenied, "op_control_stream agent_id must match the caller's own agent identity")
		}
	}
	if err == nil && g.detached {
		err = status.Error(codes.Unavailable, "op control channel not configured")
	}
	if err != nil {
		g.stats.Rejected++
		return nil, err
	}
	sub = &subscription{agent: ev.Agent, since: ev.Time, cur: g.ring.subscribe(), end: make(chan struct{})}
	if g.dropN > 0 {
		g.dropN--
		sub.dropNow, sub.dropErr = true, endErr(g.dropCode, "gatewaytest: injected drop")
	}
	g.subs[sub] = struct{}{}
	g.stats.Accepted++
	g.changedLocked()
	return sub, nil
}

func (g *Gateway) leave(sub *subscription) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.subs, sub)
	g.stats.Skipped += sub.cur.skipped.Load()
	g.changedLocked()
}

func (g *Gateway) changedLocked() {
	close(g.subsChanged)
	g.subsChanged = make(chan struct{})
}

// identity is what the real gateway hashes (SHA-256, first 16 bytes) to
// bind a subscription to its caller: "{org}/{team}/{agent}". Comparing the
// joined strings reproduces its behaviour, ambiguity on "/" included.
func identity(a controlstore.Agent) string {
	return a.OrgID + "/" + a.TeamID + "/" + a.AgentID
}
