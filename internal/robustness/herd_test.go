package robustness

import (
	"context"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

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

// herdFalseFailure is the chance that n points drawn independently and
// uniformly over a span of spread put k or more of themselves into some
// window of length w (the scan statistic), by the approximation of
// Wallenstein and Neff (1987), accurate for small probabilities:
//
//	P(S ≥ k) ≈ (k/p − n − 1)·b(k; n, p) + 2·Σ_{i≥k} b(i; n, p),  p = w/spread
//
// where b is the binomial probability.
func herdFalseFailure(n, k int, w, spread time.Duration) float64 {
	p := w.Seconds() / spread.Seconds()
	b := func(i int) float64 {
		lg, _ := math.Lgamma(float64(n + 1))
		li, _ := math.Lgamma(float64(i + 1))
		lni, _ := math.Lgamma(float64(n - i + 1))
		return math.Exp(lg - li - lni + float64(i)*math.Log(p) + float64(n-i)*math.Log1p(-p))
	}
	tail := 0.0
	for i := k; i <= n; i++ {
		tail += b(i)
	}
	return (float64(k)/p-float64(n)-1)*b(k) + 2*tail
}

// TestHerdFalseFailure pins the false-failure probability of
// TestHerdReconnect's spread assertion, so that narrowing the default
// spread cannot make that test flaky unnoticed. Simulations agree with the
// approximation (9.1·10⁻⁵): of 4·10⁶ herds of 100 uniform draws over 5 s,
// 8.7·10⁻⁵ had a 1-s window holding 41 or more; 8.9·10⁻⁵ when each
// draw was also shifted by when its connection became ready, uniform over
// 0.25 s (the difference is noise: ±0.5·10⁻⁵).
func TestHerdFalseFailure(t *testing.T) {
	// Two points fall within w of each other with probability exactly
	// 2p − p², which the approximation reproduces.
	if got, want := herdFalseFailure(2, 2, time.Second, 4*time.Second), 2*0.25-0.25*0.25; math.Abs(got-want) > 1e-12 {
		t.Errorf("n = 2: approximation %v, exact %v", got, want)
	}
	// Herds of 100: against simulations of 10⁶, 2·10⁶ and 4·10⁶ herds.
	for _, c := range []struct {
		spread time.Duration
		k      int
		sim    float64 // simulated P(S ≥ k)
	}{
		{4 * time.Second, 41, 0.0119},
		{5 * time.Second, 36, 0.00717},
		{5 * time.Second, 41, 8.7e-5},
	} {
		got := herdFalseFailure(100, c.k, time.Second, c.spread)
		if math.Abs(got-c.sim) > 0.1*c.sim {
			t.Errorf("spread %v, k %d: approximation %.3g, simulation %.3g", c.spread, c.k, got, c.sim)
		}
	}
	p := herdFalseFailure(herdN, herdN*40/100+1, time.Second, stream.DefaultReconnectSpread)
	t.Logf("TestHerdReconnect's spread assertion fails by chance with probability %.2g", p)
	if p > 1e-4 {
		t.Errorf("TestHerdReconnect would fail by chance once in %.0f runs: widen the spread or relax the target", 1/p)
	}
}

// herdN is the size of TestHerdReconnect's fleet.
const herdN = 100

// herdConn is one subscriber's connection in TestHerdReconnect. It
// records, once armed, when the dial that succeeded started, when the
// connection became ready, and when the subscriber first opened a stream:
// the moments that split a subscriber's way back into its own schedule and
// the machine's work. Embedding *grpc.ClientConn keeps the connectivity
// methods the subscriber uses.
type herdConn struct {
	*grpc.ClientConn
	armed                       *atomic.Bool
	dialStart, ready, newStream atomic.Int64 // UnixNano; 0 until it happened
}

func (c *herdConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if c.armed.Load() {
		c.newStream.CompareAndSwap(0, time.Now().UnixNano())
	}
	return c.ClientConn.NewStream(ctx, desc, method, opts...)
}

// watchReady records when the connection is next ready.
func (c *herdConn) watchReady(ctx context.Context) {
	for {
		st := c.GetState()
		if st == connectivity.Ready {
			c.ready.Store(time.Now().UnixNano())
			return
		}
		if !c.WaitForStateChange(ctx, st) {
			return
		}
	}
}

func at(ns *atomic.Int64) time.Time { return time.Unix(0, ns.Load()) }

// stallMeter measures how long the process could not run timers: the
// lateness of a 10 ms ticker beyond 10 ms of jitter, tick after tick. A
// subscriber's own timers (its redial poll, its spread) are late by no
// more than the total. Long stalls (100 ms or more) also gather the
// subscribes due meanwhile into the instant after them; they are summed
// apart.
type stallMeter struct {
	total, long time.Duration
	stop, done  chan struct{}
}

func startStallMeter() *stallMeter {
	m := &stallMeter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		const every, jitter, longStall = 10 * time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond
		tick := time.NewTicker(every)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-m.stop:
				return
			case <-tick.C:
				now := time.Now()
				late := max(now.Sub(last)-every-jitter, 0)
				m.total += late
				if late >= longStall {
					m.long += late
				}
				last = now
			}
		}
	}()
	return m
}

// Stop ends the measurement and returns the total and the long stalls.
func (m *stallMeter) Stop() (total, long time.Duration) {
	close(m.stop)
	<-m.done
	return m.total, m.long
}

// TestHerdReconnect: 100 subscribers on one gateway, which crashes and
// comes back 3 s later. Their re-subscribes must be spread: no 1-second
// window may hold more than 40 % of them (the gateway's subscribe observer
// timestamps them). And each must be live again within 6 s of the
// gateway's return. Not parallel: 100 connections under -race load the
// machine.
//
// Both parts are made stable on a loaded machine. The spread: each
// subscriber, once its connection is ready again, waits a uniform random
// time in [0, 5 s) before it subscribes, independently of the others, so
// the busiest second holds 41 or more with probability 9·10⁻⁵
// (TestHerdFalseFailure). A machine slow to run timers delays subscribes,
// which spreads them further, except when the whole process stands still:
// the subscribes due during a stall then all happen in the instant after
// it, 20 a second of stall on average (n/spread). That is an artefact of
// running the fleet in one process (real agents do not stall together),
// and it happened: a 1 s stall once put 44 into one second while the whole
// repository's tests ran beside this one. So the limit of 40 is raised by
// 20 for each second of long stalls (100 ms or more) measured during the
// recovery (rounded up); with none, it is exactly 40 %. The false-failure
// probability stays below the stall-free one: simulated with one stall of
// 0.1, 0.2, 0.5, 1 or 2 s at a random moment, 10⁶ herds each, at most
// 2·10⁻⁵.
//
// The live bound: a subscriber's way back is its own schedule (it has the
// connection dialled within 250 ms of the gateway's return, and subscribes
// less than 5 s after the connection is ready) plus the machine's work: the
// dial and HTTP/2 handshake (from the start of the dial that succeeded to
// the connection being ready), the subscribe round trip (from NewStream to
// the gateway's admission), and the time the process could not run timers
// at all (stallMeter), which makes the subscriber's own timers late. The
// machine's part takes a few milliseconds on an idle loopback, but the
// first subscriber came back only after 1.4 s once, when the whole
// repository's tests ran beside this one. So the test measures it and
// asserts the schedule: the time back minus the machine's part, plus an
// idle machine's 100 ms, must be within 6 s. A subscriber that dialled late
// or waited too long still fails it; a busy machine does not.
func TestHerdReconnect(t *testing.T) {
	skipIfShort(t, "100 subscribers spread over 5 s")
	const (
		n    = herdN
		down = 3 * time.Second
		// idleMachine bounds the dial, handshake and subscribe round trip
		// on an idle loopback, generously (they take a few ms).
		idleMachine = 100 * time.Millisecond
	)
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
	var armed atomic.Bool
	conns := make([]*herdConn, n)
	agents := make([]controlstore.Agent, n)
	for i := range n {
		hc := &herdConn{armed: &armed}
		dialer := func(ctx context.Context, addr string) (net.Conn, error) {
			start := time.Now()
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err == nil && armed.Load() {
				hc.dialStart.CompareAndSwap(0, start.UnixNano())
			}
			return c, err
		}
		cc, err := grpc.NewClient(gw.Addr(), append(stream.GatewayDialOptions(),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dialer))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		hc.ClientConn, conns[i] = cc, hc
		agents[i] = testAgent(fmt.Sprintf("Herd%03d", i))
		sub := stream.NewSubscriber(hc, testutil.NewStore(t, agents[i]), stream.WithLogger(logger()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = sub.Run(ctx)
		}()
	}
	wctx, wcancel := context.WithTimeout(ctx, waitLong)
	defer wcancel()
	allObserved := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(admitted) == n
	}
	// The observer runs just after a subscription is counted: wait for it
	// too, so that no admission from before the outage lands after clear.
	if err := gw.WaitForSubscribers(wctx, n); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, waitLong, "every admission observed", allObserved)
	gw.Stop()
	mu.Lock()
	clear(admitted)
	mu.Unlock()
	<-time.After(down) // the outage itself
	var watch sync.WaitGroup
	for _, hc := range conns {
		watch.Go(func() { hc.watchReady(wctx) })
	}
	armed.Store(true)
	if err := gw.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	stalls := startStallMeter()
	if err := gw.WaitForSubscribers(wctx, n); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, waitLong, "every admission observed", allObserved)
	stalled, longStalls := stalls.Stop()
	watch.Wait()

	mu.Lock()
	times := make([]time.Time, 0, n)
	for _, at := range admitted {
		times = append(times, at)
	}
	mu.Unlock()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	worst := maxInWindow(times, time.Second)
	first, last := times[0].Sub(back), times[n-1].Sub(back)
	limit := n*40/100 + int(math.Ceil(float64(n)*longStalls.Seconds()/stream.DefaultReconnectSpread.Seconds()))
	t.Logf("%d subscribers back between %v and %v after the restart (spread %v); busiest 1 s window: %d (%d%%; limit %d, stalls %v of which long %v)",
		n, first.Round(time.Millisecond), last.Round(time.Millisecond), (last - first).Round(time.Millisecond), worst, 100*worst/n,
		limit, stalled.Round(time.Millisecond), longStalls.Round(time.Millisecond))
	if worst > limit {
		t.Errorf("%d of %d subscribers re-subscribed within one second, want at most %d (40 %%, plus %v of long stalls' worth)", worst, n, limit, longStalls.Round(time.Millisecond))
	}

	var slowest, busiest time.Duration // the longest schedule, the largest machine part
	for i, hc := range conns {
		mu.Lock()
		admit := admitted[agents[i]]
		mu.Unlock()
		if hc.dialStart.Load() == 0 || hc.ready.Load() == 0 || hc.newStream.Load() == 0 {
			t.Fatalf("subscriber %d: dial, ready or NewStream not seen after the restart", i)
		}
		machine := at(&hc.ready).Sub(at(&hc.dialStart)) + admit.Sub(at(&hc.newStream)) + stalled
		own := admit.Sub(back) - machine
		slowest, busiest = max(slowest, own), max(busiest, machine)
		if own+idleMachine > 6*time.Second {
			t.Errorf("subscriber %d back %v after the gateway's return, of which the machine took %v: its own schedule took %v, want it within 6 s less %v",
				i, admit.Sub(back).Round(time.Millisecond), machine.Round(time.Millisecond), own.Round(time.Millisecond), idleMachine)
		}
	}
	t.Logf("slowest own schedule %v (limit %v); largest machine part %v, of which stalls %v",
		slowest.Round(time.Millisecond), 6*time.Second-idleMachine, busiest.Round(time.Millisecond), stalled.Round(time.Millisecond))
}
