package robustness

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

func heapNow() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestFloodOfUniqueTerminates: the gateway sends terminates of distinct,
// never-seen ops, 50,000 of them (1,000,000 in long mode), through the real
// gateway, proxy and subscriber, paced so that the ring never overflows
// and every one is applied. Memory stays bounded by the store's entry cap
// while the flood runs, returns to the baseline afterwards, the agent
// terminate survives it, and the stream stays up. Not parallel: it
// measures the process's heap.
func TestFloodOfUniqueTerminates(t *testing.T) {
	total := 50_000
	switch {
	case longMode():
		total = 1_000_000
	case testing.Short():
		total = 20_000 // still past the store's cap of 16,384
	}
	const batch = 250 // below the ring's 256: never lag
	h := NewHistory()
	base := resources(h, "baseline")

	func() {
		c := newCluster(t, options{noCheck: true, history: h})
		defer c.close()
		c.waitLive(waitLong)
		agent := controlstore.AgentOpIDPrefix + c.agent.AgentID
		c.terminate(agent)
		legit := c.newOp()
		c.terminate(legit.id)
		c.mustSettle()
		sinceBefore := c.sub.Status().Since

		var heapQuarter uint64
		start := time.Now()
		for sent := 0; sent < total; {
			n := min(batch, total-sent)
			received := c.sub.Status().Received
			at := h.Now()
			for i := range n {
				c.gw.Publish(c.agent, fmt.Sprintf("flood-%07d", sent+i), controlstore.SignalTerminate)
			}
			h.Add(Event{Kind: KindPublish, At: at, End: h.Now(), Signal: controlstore.SignalTerminate, Applies: true, Bulk: n})
			sent += n
			waitUntil(t, waitLong, "the subscriber to catch up", func() bool {
				return c.sub.Status().Received >= received+uint64(n)
			})
			if sent == total/4 {
				heapQuarter = heapNow()
			}
		}
		rate := float64(total) / time.Since(start).Seconds()
		heapEnd := heapNow()
		st := c.store.Stats()
		t.Logf("%d unique terminates in %v (%.0f/s); store: %d entries, %d terminated evicted; heap %.1f MiB at baseline, %.1f at 1/4, %.1f at the end",
			total, time.Since(start).Round(time.Millisecond), rate, st.Entries, st.EvictedTerminated,
			float64(base.Heap)/(1<<20), float64(heapQuarter)/(1<<20), float64(heapEnd)/(1<<20))

		if st.Entries != controlstore.DefaultMaxEntries {
			t.Errorf("store holds %d entries, want its cap %d", st.Entries, controlstore.DefaultMaxEntries)
		}
		// Past a quarter, only fingerprints of compacted terminates may
		// still grow, within their documented 16 MiB.
		if heapEnd > heapQuarter+(8+16)<<20 {
			t.Errorf("heap grew from %.1f MiB to %.1f MiB between a quarter of the flood and its end: not bounded",
				float64(heapQuarter)/(1<<20), float64(heapEnd)/(1<<20))
		}
		if heapEnd > base.Heap+48<<20 {
			t.Errorf("heap %.1f MiB during the flood, baseline %.1f MiB", float64(heapEnd)/(1<<20), float64(base.Heap)/(1<<20))
		}
		if c.sub.Status().Since != sinceBefore || c.sub.Status().Dropped != 0 {
			t.Errorf("the stream was replaced or dropped frames during the flood: %+v", c.sub.Status())
		}
		if c.store.State(agent) != controlstore.Terminated {
			t.Error("the agent terminate did not survive the flood")
		}
		expect(t, c.call(c.newOp(), 0, waitShort), OutcomeTerminated, false)
		// The op terminated before the flood was compacted with the
		// oldest entries and stays terminated: fewer than the entry cap
		// plus the terminated history of newer terminates arrived.
		if got := c.store.State(legit.id); got != controlstore.Terminated || st.ForgottenTerminated != 0 {
			t.Errorf("op terminated before the flood is now %v (forgotten %d): a terminate was lost", got, st.ForgottenTerminated)
		}
		c.mustSettle()
	}()
	final := settleResources(h, base, 0)
	t.Logf("after teardown: goroutines %d -> %d, heap %.1f -> %.1f MiB", base.Goroutines, final.Goroutines,
		float64(base.Heap)/(1<<20), float64(final.Heap)/(1<<20))
	for _, v := range Check(Config{AgentID: testAgent(t.Name()).AgentID}, h.Events()) {
		t.Error(v)
	}
}
