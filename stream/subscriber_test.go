package stream_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

func TestSubscribeSendsTripleAndToken(t *testing.T) {
	events := make(chan gatewaytest.SubscribeEvent, 4)
	gw := startGateway(t, gatewaytest.WithSubscribeObserver(func(ev gatewaytest.SubscribeEvent) { events <- ev }))
	store := testutil.NewStore(t, agent)
	sub := stream.NewSubscriber(dial(t, gw.Addr()), store, stream.WithCredentialToken(" "+token+" "), stream.WithLogger(nil))
	start(t, sub)
	waitReady(t, sub)

	ev := <-events
	if !ev.HasAgent || ev.Agent != agent || ev.Token != token || ev.Code != codes.OK {
		t.Fatalf("gateway saw %+v, want agent %+v with token %q admitted", ev, agent, token)
	}
	if !sub.Connected() || sub.Status().State != stream.Live || !store.SyncStatus().Live {
		t.Fatalf("after Ready: connected %v, status %+v, store %+v", sub.Connected(), sub.Status(), store.SyncStatus())
	}
}

// bearer sends the token as "authorization: Bearer <token>".
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func TestBearerTokenThroughCallOptions(t *testing.T) {
	gw := startGateway(t)
	sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent),
		stream.WithCallOptions(grpc.PerRPCCredentials(bearer(token))), stream.WithLogger(nil))
	start(t, sub)
	waitReady(t, sub)
}

func TestRunTwiceIsRefused(t *testing.T) {
	gw := startGateway(t)
	sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(nil))
	start(t, sub)
	waitReady(t, sub)
	if err := sub.Run(context.Background()); !errors.Is(err, stream.ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
	if !sub.Connected() {
		t.Fatal("the refused Run disturbed the running one")
	}
}

// TestConstructorsPanicOnMisuse: programmer errors panic, with a message
// (values that arrive at run time do not: see config_test.go).
func TestConstructorsPanicOnMisuse(t *testing.T) {
	store := testutil.NewStore(t, agent)
	cc := dial(t, "127.0.0.1:1")
	for name, f := range map[string]func(){
		"nil cc":                func() { stream.NewSubscriber(nil, store) },
		"nil store":             func() { stream.NewSubscriber(cc, nil) },
		"nil backoff":           func() { stream.WithBackoff(nil) },
		"nil backoff, old name": func() { stream.WithBackOff(nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil {
					t.Fatal("no panic")
				} else if msg, ok := r.(string); !ok || !strings.HasPrefix(msg, "stream: ") {
					t.Fatalf("panic %v, want a message from package stream", r)
				}
			}()
			f()
		})
	}
}
