package gatewaytest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

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
	g.mu.Unlock()
	g.ReleaseDelivery() // a held handler would keep Stop waiting
	g.Stop()
	g.serving.Wait()
}
