package jetstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
)

// A subscriber keeps the store in step with the bus; here the bus is an
// embedded server, and the operator API is jetstreamtest's publisher.
func Example() {
	srv, err := jetstreamtest.StartServer()
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	agent := controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkExample"}
	store, err := controlstore.New(agent)
	if err != nil {
		panic(err)
	}
	nc, err := jetstream.Connect(jetstream.Config{URL: srv.URL(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	sub, err := jetstream.NewSubscriber(nc, store, jetstream.WithLogger(nil))
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx) }()
	<-sub.Ready()

	admin, err := srv.Connect()
	if err != nil {
		panic(err)
	}
	defer admin.Close()
	pub, err := jetstreamtest.NewPublisher(admin)
	if err != nil {
		panic(err)
	}
	if _, err := pub.HaltAgent(ctx, agent, controlstore.SignalTerminate); err != nil {
		panic(err)
	}
	// A real caller just lets the store gate its calls; the example polls.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for store.State("agent:"+agent.AgentID) != controlstore.Terminated {
		<-tick.C
	}
	fmt.Println(sub.Status().State, store.State("agent:"+agent.AgentID))
	stop()
	fmt.Println(<-done)
	// Output:
	// live terminated
	// <nil>
}
