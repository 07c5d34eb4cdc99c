package robustness

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// misconfiguredWait is the shortest wait after a rejection that means
// misconfiguration, as package stream documents it ("Rejections").
const misconfiguredWait = 5 * time.Second

// maxAttempts is the most attempts the default schedule allows in w: the
// first at once, then waits no shorter than 1 − RandomizationFactor of
// DefaultBackoff's intervals (250 ms, 500 ms, 1 s, 2 s, 3 s, 3 s, ...; ±50 %
// jitter), or, for slow codes, no shorter than misconfiguredWait. (The
// reconnect spread only lengthens the waits.)
func maxAttempts(w time.Duration, slow bool) int {
	b := stream.DefaultBackoff().(*backoff.ExponentialBackOff)
	n, t := 1, time.Duration(0)
	interval := b.InitialInterval
	for {
		wait := time.Duration(float64(interval) * (1 - b.RandomizationFactor))
		if slow {
			wait = misconfiguredWait
		}
		if t += wait; t > w {
			return n
		}
		n++
		interval = min(time.Duration(float64(interval)*b.Multiplier), b.MaxInterval)
	}
}

// TestRejectStorm runs subscribers against gateways that refuse every
// subscribe at once (or admit and end it at once), for a window of 12 s
// (60 s in long mode), all together, and measures how often they try and
// how much CPU the whole process burns meanwhile. Not parallel: the CPU
// figure is the process's.
func TestRejectStorm(t *testing.T) {
	skipIfShort(t, "watches attempts for 12 s")
	window := 12 * time.Second
	if longMode() {
		window = time.Minute
	}
	cases := []struct {
		name string
		code codes.Code
		drop bool // admit, send headers, end at once
		slow bool
	}{
		{"Unavailable", codes.Unavailable, false, false},
		{"Internal", codes.Internal, false, false},
		{"ResourceExhausted", codes.ResourceExhausted, false, false},
		{"Unauthenticated", codes.Unauthenticated, false, true},
		{"PermissionDenied", codes.PermissionDenied, false, true},
		{"InvalidArgument", codes.InvalidArgument, false, true},
		{"Unimplemented", codes.Unimplemented, false, true},
		{"CleanEndAfterHeaders", codes.OK, true, false},
		{"UnavailableAfterHeaders", codes.Unavailable, true, false},
	}
	type run struct {
		mu    sync.Mutex
		times []time.Time
		sub   *stream.Subscriber
	}
	runs := make([]*run, len(cases))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	goroutines := runtime.NumGoroutine()
	for i, tc := range cases {
		r := &run{}
		runs[i] = r
		agent := testAgent("Storm" + tc.name)
		gw, err := gatewaytest.Start(gatewaytest.WithToken(token, agent),
			gatewaytest.WithSubscribeObserver(func(gatewaytest.SubscribeEvent) {
				r.mu.Lock()
				r.times = append(r.times, time.Now())
				r.mu.Unlock()
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(gw.Close)
		if tc.drop {
			gw.DropNext(1<<30, tc.code)
		} else {
			gw.RejectNext(1<<30, tc.code)
		}
		cc, err := grpc.NewClient(gw.Addr(), append(stream.GatewayDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		r.sub = stream.NewSubscriber(cc, testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(logger()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.sub.Run(ctx)
		}()
	}
	cpu0, haveCPU := cpuTime()
	start := time.Now()
	<-time.After(window) // the measurement window itself
	elapsed := time.Since(start)
	cpu1, _ := cpuTime()
	peak := runtime.NumGoroutine()
	statuses := make([]stream.Status, len(runs))
	for i, r := range runs {
		statuses[i] = r.sub.Status()
	}
	cancel()
	wg.Wait()

	for i, tc := range cases {
		r := runs[i]
		r.mu.Lock()
		times := append([]time.Time(nil), r.times...)
		r.mu.Unlock()
		n := len(times)
		limit := maxAttempts(elapsed, tc.slow)
		perMin := 0.0
		if n > 1 {
			perMin = float64(n-1) / times[n-1].Sub(times[0]).Minutes()
		}
		var gaps []time.Duration
		for j := 1; j < n; j++ {
			gaps = append(gaps, times[j].Sub(times[j-1]).Round(time.Millisecond))
		}
		st := statuses[i]
		t.Logf("%-24s %2d attempts in %v (limit %d), %.1f/min, state %v, gaps %v", tc.name, n, elapsed.Round(time.Second), limit, perMin, st.State, gaps)
		if n < 2 {
			t.Errorf("%s: %d attempts in %v: the subscriber stopped retrying", tc.name, n, elapsed)
		}
		if n > limit {
			t.Errorf("%s: %d attempts in %v, the schedule allows %d", tc.name, n, elapsed, limit)
		}
		if st.LastCode != tc.code {
			t.Errorf("%s: last code %v, want %v", tc.name, st.LastCode, tc.code)
		}
		switch tc.code {
		case codes.Unauthenticated, codes.PermissionDenied:
			if st.State != stream.Unauthorized {
				t.Errorf("%s: state %v, want unauthorized", tc.name, st.State)
			}
		case codes.InvalidArgument, codes.Unimplemented:
			if st.State != stream.Misconfigured {
				t.Errorf("%s: state %v, want misconfigured", tc.name, st.State)
			}
		}
	}
	if haveCPU {
		used := cpu1 - cpu0
		share := used.Seconds() / elapsed.Seconds()
		t.Logf("process CPU %v over %v: %.1f%% of one core, for %d subscribers (goroutines %d before, %d during)",
			used.Round(time.Millisecond), elapsed.Round(time.Millisecond), 100*share, len(cases), goroutines, peak)
		if share > 0.10 {
			t.Errorf("rejected subscribers burned %.1f%% of a core (limit 10%%)", 100*share)
		}
	}
}
