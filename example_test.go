package opcontrol_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/toolserver"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// An agent puts its tool calls under the operator's control. The gateway
// and the tool server are in-process stand-ins, and the environment is set
// here as the platform would set it; the lines between the markers are
// what an agent adds.
func Example() {
	agent := controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkExample"}
	token := "0f3c1f8e-7b0e-4c55-9d8e-2f1d7a0c9b11" // issued by the gateway's Register
	gateway, err := gatewaytest.Start(gatewaytest.WithToken(token, agent))
	if err != nil {
		log.Fatal(err)
	}
	defer gateway.Close()
	tools, err := toolserver.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer tools.Close()
	toolAddr := tools.Addr()
	for k, v := range map[string]string{
		"AA_AGENT_ID": agent.AgentID, "AA_AGENT_ORG_ID": agent.OrgID, "AA_AGENT_TEAM_ID": agent.TeamID,
		"AA_GATEWAY_URL": gateway.Addr(), "AA_AGENT_CREDENTIAL_TOKEN": token,
	} {
		_ = os.Setenv(k, v)
	}
	ctx := context.Background()

	// README:begin
	// The kill switch: configured from the environment, kept in step with
	// the gateway until Shutdown.
	k, err := opcontrol.FromEnv(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = k.Shutdown(ctx) }()

	// Every call on this connection is now gated by its OpenTelemetry span.
	conn, err := grpc.NewClient(toolAddr, k.DialOptions(grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	// README:end
	<-k.Ready()

	client := toolserver.NewClient(conn)
	tp := trace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(ctx) }()
	spanCtx, span := tp.Tracer("agent").Start(ctx, "plan-step")
	defer span.End()
	opID := span.SpanContext().TraceID().String() + ":" + span.SpanContext().SpanID().String()

	_, err = client.Echo(spanCtx, "search the web")
	fmt.Println("before:", status.Code(err))

	// The operator terminates the op in the gateway's dashboard. (Here we
	// wait for the store to apply it: it cancels what it tracks of the op.)
	applied, done := context.WithCancelCause(ctx)
	defer k.Store().Track(controlstore.OpFromSpanContext(span.SpanContext()), done).Release()
	gateway.Publish(agent, opID, controlstore.SignalTerminate)
	<-applied.Done()
	_, err = client.Echo(spanCtx, "search the web")
	fmt.Println("after:", status.Code(err))
	// Output:
	// before: OK
	// after: FailedPrecondition
}
