package gatewaytest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

var (
	alice = controlstore.Agent{OrgID: "org", TeamID: "team", AgentID: "a"}
	// bob differs from alice in the team only.
	bob = controlstore.Agent{OrgID: "org", TeamID: "team2", AgentID: "a"}
)

const (
	aliceToken = "alice-token"
	bobToken   = "bob-token"
	wait       = 10 * time.Second
)

func start(t *testing.T, opts ...gatewaytest.Option) (*gatewaytest.Gateway, *grpc.ClientConn) {
	t.Helper()
	gw, err := gatewaytest.Start(append([]gatewaytest.Option{
		gatewaytest.WithToken(aliceToken, alice), gatewaytest.WithToken(bobToken, bob),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	cc, err := grpc.NewClient(gw.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return gw, cc
}

func request(a controlstore.Agent) *wirev1.OpControlSubscribeRequest {
	return &wirev1.OpControlSubscribeRequest{AgentId: &wirev1.AgentId{OrgId: a.OrgID, TeamId: a.TeamID, AgentId: a.AgentID}}
}

// open subscribes with req and metadata key/value pairs kv.
func open(t *testing.T, cc *grpc.ClientConn, req *wirev1.OpControlSubscribeRequest, kv ...string) grpc.ClientStream {
	t.Helper()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), kv...))
	t.Cleanup(cancel)
	cs, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, gatewaytest.FullMethod, grpc.ForceCodecV2(wirecodec.Codec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(req); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	return cs
}

// live opens a stream and waits for its headers.
func live(t *testing.T, cc *grpc.ClientConn, a controlstore.Agent, tok string) grpc.ClientStream {
	t.Helper()
	cs := open(t, cc, request(a), gatewaytest.CredentialTokenKey, tok)
	if md, err := cs.Header(); md == nil || err != nil {
		_, err := recv(cs)
		t.Fatalf("not admitted: %v", err)
	}
	return cs
}

func recv(cs grpc.ClientStream) ([]byte, error) {
	var raw wirecodec.Raw
	err := cs.RecvMsg(&raw)
	return raw, err
}

func recvMsg(t *testing.T, cs grpc.ClientStream) *wirev1.OpControlMessage {
	t.Helper()
	raw, err := recv(cs)
	if err != nil {
		t.Fatal(err)
	}
	var m wirev1.OpControlMessage
	if err := proto.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

func TestAdmission(t *testing.T) {
	cases := []struct {
		name string
		req  *wirev1.OpControlSubscribeRequest
		md   []string
		opts []gatewaytest.Option
		code codes.Code
	}{
		{"no credential", request(alice), nil, nil, codes.Unauthenticated},
		{"x-aa-credential-token", request(alice), []string{"x-aa-credential-token", aliceToken}, nil, codes.OK},
		{"token is trimmed", request(alice), []string{"x-aa-credential-token", "  " + aliceToken + " "}, nil, codes.OK},
		{"bearer", request(alice), []string{"authorization", "Bearer " + aliceToken}, nil, codes.OK},
		{"lowercase bearer", request(alice), []string{"authorization", "bearer  " + aliceToken}, nil, codes.OK},
		{"bearer after spaces: the value is trimmed first", request(alice), []string{"authorization", "  Bearer " + aliceToken + "  "}, nil, codes.OK},
		{"bearer and nothing else", request(alice), []string{"authorization", "  Bearer   "}, nil, codes.Unauthenticated},
		{"uppercase bearer", request(alice), []string{"authorization", "BEARER " + aliceToken}, nil, codes.Unauthenticated},
		{"basic", request(alice), []string{"authorization", "Basic " + aliceToken}, nil, codes.Unauthenticated},
		{"empty token counts as absent", request(alice), []string{"x-aa-credential-token", " ", "authorization", "Bearer " + aliceToken}, nil, codes.OK},
		{"unknown token, no fallback", request(alice), []string{"x-aa-credential-token", "nope", "authorization", "Bearer " + aliceToken}, nil, codes.Unauthenticated},
		{"another agent's triple", request(bob), []string{"x-aa-credential-token", aliceToken}, nil, codes.PermissionDenied},
		{"empty org is part of the identity", request(controlstore.Agent{TeamID: "team", AgentID: "a"}), []string{"x-aa-credential-token", aliceToken}, nil, codes.PermissionDenied},
		{"case is part of the identity", request(controlstore.Agent{OrgID: "Org", TeamID: "team", AgentID: "a"}), []string{"x-aa-credential-token", aliceToken}, nil, codes.PermissionDenied},
		// The identity is the joined "{org}/{team}/{agent}", as upstream:
		// "a/b"+"c" is "a"+"b/c". Faithful, not a fix.
		{"a slash moves between fields unnoticed", request(controlstore.Agent{OrgID: "a", TeamID: "b/c", AgentID: "d"}), []string{"x-aa-credential-token", "slash"},
			[]gatewaytest.Option{gatewaytest.WithToken("slash", controlstore.Agent{OrgID: "a/b", TeamID: "c", AgentID: "d"})}, codes.OK},
		{"no agent_id, checked before auth", &wirev1.OpControlSubscribeRequest{}, nil, nil, codes.InvalidArgument},
		{"no registry", request(bob), nil, []gatewaytest.Option{gatewaytest.WithoutAuth()}, codes.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			gw, cc := start(t, tc.opts...)
			cs := open(t, cc, tc.req, tc.md...)
			md, err := cs.Header()
			if err != nil {
				t.Fatal(err)
			}
			if tc.code == codes.OK {
				if md == nil {
					_, err := recv(cs)
					t.Fatalf("rejected: %v", err)
				}
				if n := gw.SubscriberCount(); n != 1 {
					t.Fatalf("%d subscribers after headers, want 1", n)
				}
				return
			}
			if md != nil {
				t.Fatal("headers sent before a rejection; want trailers-only")
			}
			if _, err := recv(cs); status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if s := gw.Stats(); s.Rejected != 1 || s.Accepted != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

func TestNoPublisherIsUnavailableAfterAuth(t *testing.T) {
	gw, cc := start(t)
	gw.SetPublisherAttached(false)
	if _, err := recv(open(t, cc, request(alice))); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v, want Unauthenticated first", err)
	}
	if _, err := recv(open(t, cc, request(alice), gatewaytest.CredentialTokenKey, aliceToken)); status.Code(err) != codes.Unavailable {
		t.Fatalf("valid token: %v, want Unavailable", err)
	}
	gw.SetPublisherAttached(true)
	live(t, cc, alice, aliceToken)
}

func TestFilteringAndGlobalHalts(t *testing.T) {
	gw, cc := start(t)
	a := live(t, cc, alice, aliceToken)
	b := live(t, cc, bob, bobToken)
	gw.Publish(alice, "t:1", controlstore.SignalPause)                            // 0: alice only
	gw.HaltAgent(bob, controlstore.SignalTerminate)                               // 1: bob only
	gw.HaltAll(controlstore.SignalPause)                                          // 2: both
	gw.Publish(controlstore.Agent{AgentID: "a"}, "t:2", controlstore.SignalPause) // 3: nobody (same agent id, no org/team)
	gw.Publish(alice, "t:3", controlstore.SignalResume)                           // 4: alice
	gw.HaltAll(controlstore.SignalResume)                                         // 5: both

	check := func(cs grpc.ClientStream, want ...string) {
		t.Helper()
		for _, w := range want {
			m := recvMsg(t, cs)
			if got := m.OpId + "/" + m.Signal.String() + "/" + string(rune('0'+m.Sequence)); got != w {
				t.Fatalf("got %s, want %s", got, w)
			}
		}
	}
	check(a, "t:1/OP_CONTROL_SIGNAL_PAUSE/0", "*/OP_CONTROL_SIGNAL_PAUSE/2", "t:3/OP_CONTROL_SIGNAL_RESUME/4", "*/OP_CONTROL_SIGNAL_RESUME/5")
	check(b, "agent:a/OP_CONTROL_SIGNAL_TERMINATE/1", "*/OP_CONTROL_SIGNAL_PAUSE/2", "*/OP_CONTROL_SIGNAL_RESUME/5")
}

func TestSequenceAndGoldenBytes(t *testing.T) {
	gw, cc := start(t)
	cs := live(t, cc, alice, aliceToken)
	gw.Publish(alice, "trace-1:span-1", controlstore.SignalPause)
	gw.Publish(alice, "trace-1:span-1", controlstore.SignalTerminate)
	first, err := recv(cs)
	if err != nil {
		t.Fatal(err)
	}
	// The first message a gateway sends has sequence 0: no field 3.
	want := append(append([]byte{0x0a, 0x0e}, "trace-1:span-1"...), 0x10, 0x01)
	if !bytes.Equal(first, want) {
		t.Fatalf("first frame % x, want % x", first, want)
	}
	second, _ := recv(cs)
	want = append(append([]byte{0x0a, 0x0e}, "trace-1:span-1"...), 0x10, 0x03, 0x18, 0x01)
	if !bytes.Equal(second, want) {
		t.Fatalf("second frame % x, want % x", second, want)
	}

	gw.Stop()
	if _, err := recv(cs); status.Code(err) != codes.Unavailable {
		t.Fatalf("after Stop: %v, want Unavailable", err)
	}
	if err := gw.Restart(); err != nil {
		t.Fatal(err)
	}
	if s := gw.Stats(); s.Sequence != 0 || s.Restarts != 1 {
		t.Fatalf("after Restart: %+v, want sequence 0", s)
	}
	cs = live(t, cc, alice, aliceToken)
	if seq := gw.Publish(alice, "x:y", controlstore.SignalPause); seq != 0 {
		t.Fatalf("first sequence after restart %d", seq)
	}
	if m := recvMsg(t, cs); m.Sequence != 0 || m.OpId != "x:y" {
		t.Fatalf("got %v", m)
	}
}

func TestLaggingSubscriberSkips(t *testing.T) {
	gw, cc := start(t, gatewaytest.WithRingCapacity(4))
	cs := live(t, cc, alice, aliceToken)
	gw.HoldDelivery()
	for i := range 10 {
		if i%2 == 0 {
			gw.Publish(bob, "other", controlstore.SignalPause) // other agents' traffic fills the ring too
		} else {
			gw.Publish(alice, "t:"+string(rune('0'+i)), controlstore.SignalPause)
		}
	}
	gw.ReleaseDelivery()
	// The ring keeps sequences 6..9; alice's are 7 and 9.
	for _, want := range []uint64{7, 9} {
		if m := recvMsg(t, cs); m.Sequence != want {
			t.Fatalf("got sequence %d, want %d", m.Sequence, want)
		}
	}
	subs := gw.Subscribers()
	if len(subs) != 1 || subs[0].Skipped != 6 || subs[0].Sent != 2 || subs[0].Agent != alice {
		t.Fatalf("subscribers %+v, want alice with 6 skipped and 2 sent", subs)
	}
	if s := gw.Stats(); s.Skipped != 6 || s.Published != 10 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFaults(t *testing.T) {
	gw, cc := start(t)
	gw.RejectNext(2, codes.ResourceExhausted)
	for range 2 {
		if _, err := recv(open(t, cc, request(alice), gatewaytest.CredentialTokenKey, aliceToken)); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("got %v, want the injected rejection", err)
		}
	}
	gw.DropNext(1, codes.OK)
	if _, err := recv(live(t, cc, alice, aliceToken)); !errors.Is(err, io.EOF) {
		t.Fatalf("DropNext(OK): %v, want a clean end", err)
	}
	gw.DropNext(1, codes.Aborted)
	if _, err := recv(live(t, cc, alice, aliceToken)); status.Code(err) != codes.Aborted {
		t.Fatalf("DropNext(Aborted): %v", err)
	}
	a, b := live(t, cc, alice, aliceToken), live(t, cc, bob, bobToken)
	if n := gw.DropAll(codes.Unavailable); n != 2 {
		t.Fatalf("DropAll ended %d, want 2", n)
	}
	for _, cs := range []grpc.ClientStream{a, b} {
		if _, err := recv(cs); status.Code(err) != codes.Unavailable {
			t.Fatalf("after DropAll: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := gw.WaitForSubscribers(ctx, 0); err != nil {
		t.Fatal(err)
	}
	gw.RevokeToken(aliceToken)
	if _, err := recv(open(t, cc, request(alice), gatewaytest.CredentialTokenKey, aliceToken)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("revoked token: %v", err)
	}
	gw.RegisterToken("new", alice)
	live(t, cc, alice, "new")
}

func TestWaitForSubscribersAndObserver(t *testing.T) {
	var mu sync.Mutex
	var events []gatewaytest.SubscribeEvent
	gw, cc := start(t, gatewaytest.WithSubscribeObserver(func(ev gatewaytest.SubscribeEvent) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, ev)
	}))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	open(t, cc, request(alice), gatewaytest.CredentialTokenKey, aliceToken)
	denied := open(t, cc, request(bob), gatewaytest.CredentialTokenKey, aliceToken)
	open(t, cc, request(bob), gatewaytest.CredentialTokenKey, bobToken)
	if _, err := recv(denied); status.Code(err) != codes.PermissionDenied { // observed before the answer
		t.Fatalf("got %v", err)
	}
	if err := gw.WaitForSubscribers(ctx, 2); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if err := gw.WaitForSubscribers(short, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting for 3 of 2: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	codesSeen := map[codes.Code]int{}
	for _, ev := range events {
		codesSeen[ev.Code]++
		if !ev.HasAgent || ev.Token == "" || ev.Time.IsZero() {
			t.Fatalf("event %+v", ev)
		}
	}
	if codesSeen[codes.OK] != 2 || codesSeen[codes.PermissionDenied] != 1 {
		t.Fatalf("events by code %v", codesSeen)
	}
}

func TestPublishRawAndMessage(t *testing.T) {
	gw, cc := start(t)
	cs := live(t, cc, alice, aliceToken)
	gw.PublishRaw(gatewaytest.ToAgent(alice), []byte{0xff, 0x00})
	gw.PublishMessage(gatewaytest.ToAll(), &wirev1.OpControlMessage{OpId: "", Signal: 77, Sequence: 1 << 40})
	if raw, _ := recv(cs); !bytes.Equal(raw, []byte{0xff, 0x00}) {
		t.Fatalf("raw frame % x", raw)
	}
	if m := recvMsg(t, cs); m.Signal != 77 || m.Sequence != 1<<40 || m.OpId != "" {
		t.Fatalf("message %v", m)
	}
	if s := gw.Stats(); s.Sequence != 0 || s.Published != 2 {
		t.Fatalf("verbatim publishes touched the counter: %+v", s)
	}
}

func TestLifecycleErrors(t *testing.T) {
	gw, _ := start(t)
	if err := gw.Restart(); err == nil {
		t.Fatal("Restart of a running gateway succeeded")
	}
	gw.Stop()
	gw.Stop()
	gw.Close()
	if err := gw.Restart(); err == nil {
		t.Fatal("Restart of a closed gateway succeeded")
	}
	gw.Close()
}

// TestOptions: a nil Option is ignored; an option out of range makes Start
// fail instead of panicking.
func TestOptions(t *testing.T) {
	gw, err := gatewaytest.Start(nil, gatewaytest.WithRingCapacity(2), nil)
	if err != nil {
		t.Fatalf("Start with nil options: %v", err)
	}
	gw.Close()
	for _, n := range []int{0, -1} {
		if gw, err := gatewaytest.Start(gatewaytest.WithRingCapacity(n)); err == nil || !strings.Contains(err.Error(), "WithRingCapacity") {
			if gw != nil {
				gw.Close()
			}
			t.Fatalf("WithRingCapacity(%d): Start = %v, want an error naming the option", n, err)
		}
	}
}
