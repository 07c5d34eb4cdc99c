package stream_test

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// A subscriber keeps the store in step with the gateway; here the gateway
// is the in-process test gateway.
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
	<-sub.Ready() // subscribed: nothing published from now on is missed

	// An in-flight call of op trace-1:span-1 is cancelled by its terminate.
	callCtx, cancelCall := context.WithCancelCause(context.Background())
	call := store.Track(controlstore.OpFromID("trace-1:span-1"), cancelCall)
	defer call.Release()
	gw.Publish(agent, "trace-1:span-1", controlstore.SignalTerminate)
	<-callCtx.Done()
	fmt.Println(context.Cause(callCtx))
	fmt.Println(sub.Status().State, store.State("trace-1:span-1"))

	stop()
	fmt.Println(<-done, sub.Status().State)
	// Output:
	// opcontrol: op "trace-1:span-1" terminated
	// live terminated
	// <nil> idle
}

// The recommended way to dial the gateway: keepalive pings to notice a
// half-open connection, and a short connection backoff. The gateway speaks
// plaintext.
func ExampleGatewayDialOptions() {
	cc, err := grpc.NewClient("127.0.0.1:50051", append(stream.GatewayDialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		panic(err)
	}
	defer cc.Close()
	store, err := controlstore.New(controlstore.Agent{AgentID: "did:key:z6MkExample"})
	if err != nil {
		panic(err)
	}
	_ = stream.NewSubscriber(cc, store,
		stream.WithCredentialToken("agent-token"),
		stream.WithFailClosedAfter(30*time.Second), // fail closed after 30 s blind
	)
}
