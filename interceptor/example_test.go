package interceptor_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
)

// The two-line set-up: every RPC on the tool client connection obeys the
// operator. Here the store is driven by hand; in an agent, the stream
// subscriber keeps it up to date.
func Example() {
	// A tool server (the standard health service stands in for a tool).
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	store, err := controlstore.New(controlstore.Agent{AgentID: "did:key:z6MkExample"})
	if err != nil {
		panic(err)
	}

	conn, err := grpc.NewClient(lis.Addr().String(),
		append(interceptor.DialOptions(store), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	tool := healthpb.NewHealthClient(conn)

	resp, err := tool.Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println(resp.GetStatus(), err)

	// The operator halts every op of this agent.
	_ = store.Apply("agent:did:key:z6MkExample", controlstore.SignalTerminate)

	_, err = tool.Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println(status.Code(err), errors.Is(err, controlstore.ErrTerminated))
	// Output:
	// SERVING <nil>
	// FailedPrecondition true
}

// An explicit op id, for calls whose op is not the current span.
func ExampleContextWithOpID() {
	store, err := controlstore.New(controlstore.Agent{AgentID: "did:key:z6MkExample"})
	if err != nil {
		panic(err)
	}
	_ = store.Apply("trace-001:span-001", controlstore.SignalTerminate)

	unary := interceptor.UnaryClientInterceptor(store)
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }

	ctx := interceptor.ContextWithOpID(context.Background(), "trace-001:span-001")
	err = unary(ctx, "/tools.v1.Search/Query", nil, nil, nil, invoker)
	fmt.Println(err)
	// Output:
	// rpc error: code = FailedPrecondition desc = opcontrol: op "trace-001:span-001" terminated
}
