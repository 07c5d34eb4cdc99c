package gatewaytest

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

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
