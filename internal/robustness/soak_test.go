package robustness

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// soakBackOff reconnects within tens of milliseconds, jittered: the soak
// is about what faults do to the kill switch, not about the default
// schedule (TestRejectStorm and the scenarios use the default).
func soakBackOff() backoff.BackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(10*time.Millisecond),
		backoff.WithMultiplier(2),
		backoff.WithMaxInterval(100*time.Millisecond),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0),
	)
}

// TestSoak is the long mode: OPCONTROL_SOAK_CYCLES disconnect cycles
// (default 1,000) carrying about OPCONTROL_SOAK_SIGNALS signals (default
// 10,000), each cycle one fault from a rotation (proxy reset, stream
// dropped with an error or cleanly, gateway crash and restart with its
// sequence reset, mid-frame cut, ring overflow, and now and then a
// half-open link), then pauses, resumes and terminates of fresh ops with
// calls held, in flight and refused, all checked by the history checker.
// It prints the counts and latencies RELIABILITY.md records.
func TestSoak(t *testing.T) {
	if !longMode() {
		t.Skip("long mode only: scripts/soak.sh, or go test ./robustness -run TestSoak -args -robustness.long")
	}
	cycles := envInt("OPCONTROL_SOAK_CYCLES", 1000)
	signals := envInt("OPCONTROL_SOAK_SIGNALS", 10000)
	perCycle := max(signals/cycles, 8)
	dial := append(stream.GatewayDialOptions(), grpc.WithKeepaliveParams(keepalive.ClientParameters{
		Time: halfOpenTime, Timeout: halfOpenTimeout, PermitWithoutStream: true,
	}))
	h := NewHistory()
	base := resources(h, "baseline")
	c := newCluster(t, options{dial: dial, sub: []stream.Option{stream.WithBackoff(soakBackOff), stream.WithReconnectSpread(0)}, history: h})
	c.waitLive(waitLong)
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	agent := controlstore.AgentOpIDPrefix + c.agent.AgentID
	faults := map[string]int{}
	start := time.Now()
	halfOpenEvery := max(cycles/3, 1)

	for i := range cycles {
		var kind string
		switch {
		case i%halfOpenEvery == halfOpenEvery/2:
			kind = "half-open"
		case i%50 == 25:
			kind = "ring overflow"
		default:
			kind = []string{"proxy reset", "drop unavailable", "drop clean", "gateway restart", "mid-frame cut"}[i%5]
		}
		faults[kind]++
		c.fault("cycle %d: %s", i, kind)
		down := true
		switch kind {
		case "proxy reset":
			c.proxy.Reset()
		case "drop unavailable":
			c.gw.DropAll(codes.Unavailable)
		case "drop clean":
			c.gw.DropAll(codes.OK)
		case "gateway restart":
			c.gw.Stop()
			c.waitDown(waitShort)
			c.publish(fmt.Sprintf("lost-%d", i), controlstore.SignalPause) // nobody listening
			if err := c.gw.Restart(); err != nil {
				t.Fatal(err)
			}
		case "mid-frame cut":
			c.proxy.CutAfter(1 + rng.Int64N(500))
			for j := range 3 {
				c.publish(fmt.Sprintf("cut-%d-%d-%s", i, j, strings.Repeat("c", 200)), controlstore.SignalPause)
			}
			c.waitDown(waitShort)
			c.proxy.CutAfter(0)
		case "half-open":
			c.proxy.Blackhole(true)
			c.publish(fmt.Sprintf("hole-%d", i), controlstore.SignalPause)
			c.waitDown(halfOpenTime + halfOpenTimeout + 10*time.Second)
			c.proxy.Blackhole(false)
		case "ring overflow":
			down = false
			c.gw.HoldDelivery()
			for j := range 300 {
				c.publish(fmt.Sprintf("lag-%d-%d", i, j), controlstore.SignalPause)
			}
			c.gw.ReleaseDelivery()
		}
		if down {
			c.waitDown(waitShort)
			c.publish(fmt.Sprintf("down-%d", i), controlstore.SignalPause) // lost, or delivered after the reconnect
		}
		c.waitLive(waitLong)
		c.mustSettle()
		soakWork(t, c, i, perCycle, agent)
	}
	c.mustSettle()
	st := c.sub.Status()
	elapsed := time.Since(start)
	cfg := c.cfg
	c.close()
	events := h.Events()
	vs := Check(cfg, events)
	s := Summarize(events)
	cv := Cover(cfg, events)
	nEvents := len(events)
	// Bounded is measured with the history itself freed: the run's own
	// record (tens of MiB) is not what the guarantee is about.
	c.h = nil // the test's cleanup keeps c; events and h are dead from here
	bh := NewHistory()
	bh.Add(base)
	final := settleResources(bh, base, 0)
	vs = append(vs, Check(cfg, bh.Events())...)
	for _, v := range vs {
		t.Error(v)
	}
	keys := make([]string, 0, len(faults))
	for k := range faults {
		keys = append(keys, fmt.Sprintf("%s=%d", k, faults[k]))
	}
	sort.Strings(keys)
	report := fmt.Sprintf("SOAK cycles=%d signals=%d terminates=%d terminates_enforced=%d calls=%d denied=%d cancelled_in_flight=%d released_after_resume=%d abandoned=%d violations=%d\n"+
		"SOAK terminate_latency p50=%v p99=%v max=%v (n=%d); resume_latency p50=%v p99=%v max=%v (n=%d)\n"+
		"SOAK faults: %s; subscriber received=%d dropped=%d; events=%d; wall=%v\n"+
		"SOAK resources: goroutines %d -> %d, heap %.1f -> %.1f MiB\n"+
		"SOAK checked: %d of %d applicable signals certainly delivered, %d store reads, %d calls (%d released by a resume)",
		cycles, s.Signals, s.Terminates, s.TerminatesApplied, s.Calls, s.Denied, s.Cancelled, s.Released, s.Abandoned, len(vs),
		Percentile(s.TerminateLatency, 50), Percentile(s.TerminateLatency, 99), Percentile(s.TerminateLatency, 100), len(s.TerminateLatency),
		Percentile(s.ResumeLatency, 50), Percentile(s.ResumeLatency, 99), Percentile(s.ResumeLatency, 100), len(s.ResumeLatency),
		strings.Join(keys, " "), st.Received, st.Dropped, nEvents, elapsed.Round(time.Second),
		base.Goroutines, final.Goroutines, float64(base.Heap)/(1<<20), float64(final.Heap)/(1<<20),
		cv.Certain, cv.Applicable, cv.Observations, cv.Calls, cv.Released)
	t.Log("\n" + report)
	fmt.Println(report)
}

// soakWork is one cycle's traffic once the stream is back: an op paused
// with a call held and then resumed, a call in flight cancelled by its
// op's terminate, a terminated op's call refused, an agent-wide pause now
// and then, and pause/resume noise up to perCycle signals.
func soakWork(t *testing.T, c *cluster, i, perCycle int, agent string) {
	held, busy, dead := c.newOp(), c.newOp(), c.newOp()
	n := 0
	pub := func(id string, sig controlstore.Signal) {
		c.publish(id, sig)
		n++
	}
	pub(held.id, pause)
	w := c.call(busy, time.Minute, waitLong)
	c.mustSettle()
	h := c.call(held, 0, waitLong)
	waitUntil(t, waitShort, "a held call and one in flight", func() bool { return c.held() >= 1 && w.reached() })
	c.probe(busy.id)
	pub(busy.id, terminate)
	c.probe(dead.id)
	pub(dead.id, terminate)
	expect(t, w, OutcomeTerminated, true)
	pub(held.id, resume)
	expect(t, h, OutcomeOK, true)
	c.mustSettle()
	expect(t, c.call(dead, 0, waitShort), OutcomeTerminated, false)
	if i%10 == 0 {
		x := c.newOp()
		pub(agent, pause)
		c.mustSettle()
		hx := c.call(x, 0, waitLong)
		waitUntil(t, waitShort, "a call held by the agent pause", func() bool { return c.held() >= 1 })
		pub(agent, resume)
		expect(t, hx, OutcomeOK, true)
	}
	for n < perCycle {
		id := fmt.Sprintf("noise-%d-%d", i, n)
		pub(id, pause)
		pub(id, resume)
	}
	expect(t, c.call(c.newOp(), 0, waitShort), OutcomeOK, true)
	c.mustSettle()
}
