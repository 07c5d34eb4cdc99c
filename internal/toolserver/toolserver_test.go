package toolserver_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/opcontrol/opcontrol/internal/toolserver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start serves a tool server and returns it with a client; both end with
// the test.
func start(t *testing.T) (*toolserver.Server, *toolserver.Client) {
	t.Helper()
	srv, err := toolserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cc, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return srv, toolserver.NewClient(cc)
}

func TestToolServer(t *testing.T) {
	srv, c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if got, err := c.Echo(ctx, "hi"); err != nil || got != "hi" {
		t.Fatalf("Echo = %q, %v", got, err)
	}
	if err := c.Work(ctx, time.Millisecond); err != nil {
		t.Fatalf("Work = %v", err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Work(wctx, time.Hour) }()
	ps, err := c.Progress(ctx, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(1); i <= 3; i++ {
		if n, err := ps.Recv(); err != nil || n != i {
			t.Fatalf("Recv = %d, %v; want %d", n, err, i)
		}
	}
	wcancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled Work = %v", err)
	}
	cancel()
	ev, err := srv.WaitEvents(context.Background(), 4)
	if err != nil {
		t.Fatal(err)
	}
	var cancelledWork bool
	for _, e := range ev {
		if e.Method == toolserver.WorkMethod && errors.Is(e.Err, context.Canceled) {
			cancelledWork = true
		}
	}
	if !cancelledWork {
		t.Fatalf("events %+v: the server did not see Work cancelled", ev)
	}
}

func TestToolServerAdditions(t *testing.T) {
	srv, c := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Flaky: odd calls fail, even ones echo.
	for i, wantOK := range []bool{false, true, false, true} {
		got, err := c.Flaky(ctx, "f")
		if ok := err == nil && got == "f"; ok != wantOK || (!ok && status.Code(err) != codes.Unavailable) {
			t.Fatalf("Flaky call %d = %q, %v; want ok=%v", i+1, got, err, wantOK)
		}
	}
	// Chat echoes until the client closes.
	cs, err := c.Chat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"a", "b"} {
		if err := cs.Send(m); err != nil {
			t.Fatal(err)
		}
		if got, err := cs.Recv(); err != nil || got != m {
			t.Fatalf("Chat Recv = %q, %v; want %q", got, err, m)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Recv(); err == nil {
		t.Fatal("Chat did not end after CloseSend")
	}
	// Burst sends n at once, then waits to be cancelled.
	bctx, bcancel := context.WithCancel(ctx)
	ps, err := c.Burst(bctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(1); i <= 3; i++ {
		if n, err := ps.Recv(); err != nil || n != i {
			t.Fatalf("Burst Recv = %d, %v; want %d", n, err, i)
		}
	}
	if err := srv.Wait(ctx, func() bool { return srv.Sent(toolserver.BurstMethod) == 3 }); err != nil {
		t.Fatalf("Sent(Burst) = %d, want 3", srv.Sent(toolserver.BurstMethod))
	}
	bcancel()
	if _, err := ps.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("Burst after cancel: %v", err)
	}
	ev, err := srv.WaitEvents(ctx, 4+1+1)
	if err != nil {
		t.Fatal(err)
	}
	last := ev[len(ev)-1]
	if last.Method != toolserver.BurstMethod || last.Ticks != 3 || !errors.Is(last.Err, context.Canceled) {
		t.Fatalf("Burst event = %+v", last)
	}
	if n := len(srv.Headers(toolserver.ChatMethod)); n != 1 {
		t.Fatalf("Headers(Chat) has %d entries, want 1", n)
	}
	srv.Reset()
	if len(srv.Events()) != 0 || len(srv.Ended()) != 0 || srv.Entered(toolserver.FlakyMethod) != 0 || len(srv.Headers(toolserver.ChatMethod)) != 0 {
		t.Fatal("Reset left records behind")
	}
}
