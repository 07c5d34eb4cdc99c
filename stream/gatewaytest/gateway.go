package gatewaytest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/contract"
)

// Names of the service and method the gateway serves.
const (
	ServiceName = contract.ServiceName
	MethodName  = contract.OpControlStreamName
	// FullMethod is the path a client calls.
	FullMethod = contract.OpControlStreamMethod
)

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
// free loopback port). Close it when done. Nil options are ignored; an
// option out of range is an error.
func Start(opts ...Option) (*Gateway, error) {
	o := options{addr: defaultAddr, ringCap: DefaultRingCapacity, tokens: map[string]controlstore.Agent{}}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.err != nil {
		return nil, o.err
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

// Addr returns the address the gateway listens on ("127.0.0.1:port"). It
// does not change across Restart.
func (g *Gateway) Addr() string { return g.addr }
