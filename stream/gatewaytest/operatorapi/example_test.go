package operatorapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

// A local gateway with its operator API, an agent subscribed to it, and an
// operator pausing and then terminating one of the agent's ops over REST,
// as curl would.
func Example() {
	agent := controlstore.Agent{OrgID: "acme", TeamID: "platform", AgentID: "did:key:z6MkExample"}
	gw, err := gatewaytest.Start(gatewaytest.WithToken("agent-token", agent))
	if err != nil {
		panic(err)
	}
	defer gw.Close()
	api, err := operatorapi.New(gw, operatorapi.WithLogger(nil))
	if err != nil {
		panic(err)
	}
	srv := httptest.NewServer(api)
	defer srv.Close()

	// The agent's side: a store kept fresh by a subscriber.
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

	// The operator's side.
	const op = "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"
	post := func(path, body string) {
		resp, err := srv.Client().Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		// Fields of OpRecord, ActionAccepted and ErrorBody.
		var v struct{ State, Action, Code string }
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			panic(err)
		}
		fmt.Println(resp.StatusCode, v.State+v.Action+v.Code)
	}
	waitFor := func(want controlstore.State) {
		for deadline := time.Now().Add(10 * time.Second); store.State(op) != want && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		fmt.Println("agent sees", store.State(op))
	}
	post(operatorapi.OpsPath, `{"op_id":"`+op+`","org_id":"acme","team_id":"platform","agent_id":"did:key:z6MkExample"}`)
	post(operatorapi.OpsPath+"/"+op+"/pause", "")
	waitFor(controlstore.Paused)
	post(operatorapi.OpsPath+"/"+op+"/pause", "")
	post(operatorapi.OpsPath+"/"+op+"/terminate", "")
	waitFor(controlstore.Terminated)

	stop()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	// Output:
	// 201 running
	// 200 pause
	// agent sees paused
	// 409 invalid_transition
	// 200 terminate
	// agent sees terminated
}
