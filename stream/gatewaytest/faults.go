package gatewaytest

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

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

func endErr(code codes.Code, msg string) error {
	if code == codes.OK {
		return nil
	}
	return status.Error(code, msg)
}
