package stream_test

import (
	"runtime"
	"strconv"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// BenchmarkSignalThroughput measures signals from the test gateway's
// publish to the store's apply over loopback TCP, keeping at most half
// the ring in flight so that nothing is skipped.
func BenchmarkSignalThroughput(b *testing.B) {
	gw := startGateway(b)
	store := testutil.NewStore(b, agent, controlstore.WithMaxEntries(1<<16))
	sub := stream.NewSubscriber(dial(b, gw.Addr()), store, stream.WithCredentialToken(token), stream.WithLogger(nil))
	start(b, sub)
	waitReady(b, sub)
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = "4bf92f3577b34da6a3ce929d0e0e" + strconv.FormatInt(int64(4096+i), 16) + ":00f067aa0ba902b7"
	}
	const inFlight = gatewaytest.DefaultRingCapacity / 2
	base := sub.Status().Received
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for uint64(i)-(sub.Status().Received-base) >= inFlight {
			runtime.Gosched()
		}
		sig := controlstore.SignalPause
		if i%2 == 1 {
			sig = controlstore.SignalResume
		}
		gw.Publish(agent, ids[(i/2)%len(ids)], sig)
	}
	for sub.Status().Received-base < uint64(b.N) {
		runtime.Gosched()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signals/s")
	if st := gw.Stats(); st.Skipped != 0 {
		b.Fatalf("%d skipped", st.Skipped)
	}
}
