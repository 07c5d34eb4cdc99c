package gatewaytest

import (
	"errors"
	"strconv"

	"google.golang.org/grpc"

	"github.com/opcontrol/opcontrol/controlstore"
)

// DefaultRingCapacity is the size of the broadcast ring, as in the real
// gateway.
const DefaultRingCapacity = 256

// Option configures a Gateway. A nil Option is ignored.
type Option func(*options)

type options struct {
	addr       string
	ringCap    int
	noAuth     bool
	tokens     map[string]controlstore.Agent
	serverOpts []grpc.ServerOption
	observer   func(SubscribeEvent)
	err        error // the first option out of range, returned by Start
}

// defaultAddr asks for a free loopback port (see listen).
const defaultAddr = "127.0.0.1:0"

// WithAddress sets the TCP address to listen on. By default the gateway
// takes a free loopback port below the systems' ephemeral port ranges, so
// that no outgoing connection takes it while the gateway is stopped.
// Restart listens on the address first bound.
func WithAddress(addr string) Option {
	return func(o *options) { o.addr = addr }
}

// WithToken registers token as the credential of agent, as the gateway's
// agent registry would after AgentLifecycleService.Register. See
// Gateway.RegisterToken.
func WithToken(token string, agent controlstore.Agent) Option {
	return func(o *options) { o.tokens[token] = agent }
}

// WithoutAuth runs the gateway with no agent registry attached: every
// subscription is admitted whatever its credential and triple (the real
// handler's behaviour when no registry is attached; the shipped gateway
// always has one).
func WithoutAuth() Option {
	return func(o *options) { o.noAuth = true }
}

// WithRingCapacity sets the capacity of the broadcast ring (default
// DefaultRingCapacity). Start fails when n < 1.
func WithRingCapacity(n int) Option {
	return func(o *options) {
		if n < 1 && o.err == nil {
			o.err = errors.New("gatewaytest: WithRingCapacity needs n >= 1, got " + strconv.Itoa(n))
		}
		o.ringCap = n
	}
}

// WithServerOptions adds options to the gateway's grpc.Server, after its
// own (a permissive keepalive enforcement policy, like the real gateway's
// HTTP/2 server, and the frame codec). Overriding the codec breaks the
// gateway.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, opts...) }
}

// WithSubscribeObserver calls fn for every subscribe the gateway decides,
// admitted or rejected, from the stream's handler goroutine before any
// response is sent. fn must not block.
func WithSubscribeObserver(fn func(SubscribeEvent)) Option {
	return func(o *options) { o.observer = fn }
}
