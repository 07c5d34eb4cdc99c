package gatewaytest_test

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// A test gateway with one registered agent, a subscriber for it, and an
// operator halting every agent.
func Example() {
	agent := controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkExample"}
	gw, err := gatewaytest.Start(gatewaytest.WithToken("agent-token", agent))
	if err != nil {
		panic(err)
	}
	defer gw.Close()

	cc, err := grpc.NewClient(gw.Addr(), append(stream.GatewayDialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		panic(err)
	}
	defer cc.Close()
	store, err := controlstore.New(agent)
	if err != nil {
		panic(err)
	}
	sub := stream.NewSubscriber(cc, store, stream.WithCredentialToken("agent-token"), stream.WithLogger(nil))
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx) }()
	<-sub.Ready()
	fmt.Println("subscribers:", gw.SubscriberCount())

	// A global terminate cancels every in-flight call of every agent.
	callCtx, cancelCall := context.WithCancelCause(context.Background())
	call := store.Track(controlstore.OpFromID("trace-9:span-9"), cancelCall)
	defer call.Release()
	fmt.Println("sequence:", gw.HaltAll(controlstore.SignalTerminate))
	<-callCtx.Done()
	fmt.Println(context.Cause(callCtx))

	stop()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	// Output:
	// subscribers: 1
	// sequence: 0
	// opcontrol: every op of every agent ("*") terminated
}
