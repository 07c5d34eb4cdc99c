package quickstart_test

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// An agent puts its tool calls under the operator's control. The gateway
// and tool server here are in-process stand-ins; the lines between the
// markers are what an agent adds.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent := controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkExample"}
	token := "0f3c1f8e-7b0e-4c55-9d8e-2f1d7a0c9b11" // issued by the gateway's Register
	gateway, _ := gatewaytest.Start(gatewaytest.WithToken(token, agent))
	defer gateway.Close()
	tools, _ := toolserver.Start()
	defer tools.Close()
	gatewayAddr, toolAddr := gateway.Addr(), tools.Addr()

	// README:begin
	// The store records what the operator decided; the subscriber keeps it
	// in step with the gateway, reconnecting for ever.
	store, _ := controlstore.New(agent)
	gwConn, _ := grpc.NewClient(gatewayAddr, append(stream.GatewayDialOptions(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	sub := stream.NewSubscriber(gwConn, store, stream.WithCredentialToken(token))
	go func() { _ = sub.Run(ctx) }() // returns when ctx ends

	// Every call on this connection is now gated by its OpenTelemetry span.
	toolConn, _ := grpc.NewClient(toolAddr, append(interceptor.DialOptions(store),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	// README:end
	defer gwConn.Close()
	defer toolConn.Close()
	<-sub.Ready()

	client := toolserver.NewClient(toolConn)
	spanCtx, span := trace.NewTracerProvider().Tracer("agent").Start(ctx, "summarise-report")
	defer span.End()
	_, err := client.Echo(spanCtx, "step 1")
	fmt.Println("before the operator acts:", status.Code(err))

	// The operator terminates this op from the gateway's dashboard.
	opID := span.SpanContext().TraceID().String() + ":" + span.SpanContext().SpanID().String()
	gateway.Publish(agent, opID, controlstore.SignalTerminate)
	for store.State(opID) != controlstore.Terminated {
		time.Sleep(time.Millisecond) // the signal is on its way over loopback
	}
	_, err = client.Echo(spanCtx, "step 2")
	fmt.Println("after the terminate:", status.Code(err))
	// Output:
	// before the operator acts: OK
	// after the terminate: FailedPrecondition
}
