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

func TestToolServer(t *testing.T) {
	srv, err := toolserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cc, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := toolserver.NewClient(cc)
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
