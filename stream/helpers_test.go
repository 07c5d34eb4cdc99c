package stream_test

import (
	"context"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

var (
	agent = controlstore.Agent{OrgID: "acme-corp", TeamID: "platform", AgentID: "did:key:z6Mkm5rByiqq5UNbvPFPfXtGJwdg2kD1T"}
	other = controlstore.Agent{OrgID: "acme-corp", TeamID: "platform", AgentID: "did:key:z6MkOther"}
)

const token = "0f3c1f8e-7b0e-4c55-9d8e-2f1d7a0c9b11"

// Generous deadlines: the machine is small and shared, and tests run under
// -race.
const (
	waitLong  = 20 * time.Second
	waitShort = 5 * time.Second
)

func startGateway(t testing.TB, opts ...gatewaytest.Option) *gatewaytest.Gateway {
	t.Helper()
	gw, err := gatewaytest.Start(append([]gatewaytest.Option{gatewaytest.WithToken(token, agent)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	return gw
}

// dial connects with the recommended GatewayDialOptions.
func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	return dialWith(t, addr, stream.GatewayDialOptions()...)
}

// dialWith connects with opts only (and insecure credentials).
func dialWith(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// fastBackoff waits 10 ms between attempts, and noSpread re-subscribes as
// soon as the connection is ready: tests about reconnecting are not about
// the default schedule.
func fastBackoff() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }

var noSpread = stream.WithReconnectSpread(0)

type running struct {
	cancel context.CancelFunc
	done   chan error
}

// start runs sub.Run in a goroutine until the test ends (or stop is
// called).
func start(t testing.TB, sub *stream.Subscriber) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- sub.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run and returns how long it took to return.
func (r *running) stop(t testing.TB) time.Duration {
	t.Helper()
	if r.cancel == nil {
		return 0
	}
	began := time.Now()
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(waitShort):
		t.Fatal("Run did not return after its context ended")
	}
	return time.Since(began)
}

func waitReady(t testing.TB, sub *stream.Subscriber) {
	t.Helper()
	select {
	case <-sub.Ready():
	case <-time.After(waitLong):
		t.Fatalf("subscriber not ready; status %+v", sub.Status())
	}
}

func waitSubscribers(t testing.TB, gw *gatewaytest.Gateway, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := gw.WaitForSubscribers(ctx, n); err != nil {
		t.Fatal(err)
	}
}

func newLogs() (*testutil.Logs, stream.Option) {
	l := &testutil.Logs{}
	return l, stream.WithLogger(l.Logger())
}
