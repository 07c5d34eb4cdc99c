package stream_test

import (
	"errors"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
)

// Two subscribers on one store (two gateway replicas): the outage of one
// must not make the store fail closed while the other is live; the outage
// of both must.
func TestTwoSubscribersOneStore(t *testing.T) {
	gw1, gw2 := startGateway(t), startGateway(t)
	store := testutil.NewStore(t, agent)
	opts := []stream.Option{stream.WithCredentialToken(token), stream.WithBackoff(fastBackoff), stream.WithReconnectSpread(0),
		stream.WithFailClosedAfter(0), stream.WithLogger(nil)}
	sub1 := stream.NewSubscriber(dial(t, gw1.Addr()), store, opts...)
	sub2 := stream.NewSubscriber(dial(t, gw2.Addr()), store, opts...)
	start(t, sub1)
	start(t, sub2)
	<-sub1.Ready()
	<-sub2.Ready()
	testutil.Eventually(t, waitShort, func() bool { return store.SyncStatus().Live && !store.SyncStatus().FailClosed },
		"both live: want the store live, not failing closed")

	gw2.Stop()
	testutil.Eventually(t, waitLong, func() bool { return sub2.Status().State != stream.Live }, "sub2 still live after its gateway stopped")
	if st := store.SyncStatus(); st.FailClosed {
		t.Fatalf("one of two subscribers down: store %+v fails closed, want it to run on the live one", st)
	}
	gw1.Publish(agent, "trace-1:span-1", controlstore.SignalTerminate)
	testutil.Eventually(t, waitShort, func() bool { return store.State("trace-1:span-1") == controlstore.Terminated },
		"a terminate through the live subscriber was not applied")

	gw1.Stop()
	testutil.Eventually(t, waitShort, func() bool { return store.SyncStatus().FailClosed }, "both down: not failing closed")
	if err := store.Check(unknownOp); !errors.Is(err, controlstore.ErrUnavailable) {
		t.Fatalf("Check = %v with both down, want ErrUnavailable", err)
	}
}
