package jetstream_test

import (
	"fmt"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
)

func TestMetrics(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	st := adminStream(t, srv)
	l := newLink(t, srv)
	reader := sdkmetric.NewManualReader()
	sub := newSubscriber(t, connect(t, l.url()), newStore(t),
		jetstream.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	r := start(t, sub)
	waitReady(t, sub)
	if up := testutil.SumBy(t, reader, "opcontrol.jetstream.up", "")[""]; up != 1 {
		t.Fatalf("up = %d while live", up)
	}
	ctx := ctxTimeout(t)
	for _, sig := range []controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume, controlstore.SignalTerminate} {
		if _, err := pub.HaltAgent(ctx, agent, sig); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pub.PublishRaw(ctx, jetstream.GlobalSubject, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitShort, func() bool { s := sub.Status(); return s.Applied == 3 && len(s.Dropped) == 1 }, "consumed")
	if got, want := fmt.Sprint(testutil.SumBy(t, reader, "opcontrol.jetstream.signals.applied", "signal")), "map[pause:1 resume:1 terminate:1]"; got != want {
		t.Errorf("applied %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(testutil.SumBy(t, reader, "opcontrol.jetstream.signals.dropped", "reason")), "map[malformed:1]"; got != want {
		t.Errorf("dropped %s, want %s", got, want)
	}

	l.cut()
	testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "not live")
	if up := testutil.SumBy(t, reader, "opcontrol.jetstream.up", "")[""]; up != 0 {
		t.Errorf("up = %d while down", up)
	}
	if _, err := pub.HaltAll(ctx, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	l.restore()
	waitState(t, sub, jetstream.Lost)
	if got := testutil.SumBy(t, reader, "opcontrol.jetstream.losses", "")[""]; got != 1 {
		t.Errorf("losses %d, want 1", got)
	}
	if got := testutil.SumBy(t, reader, "opcontrol.jetstream.resets", "reason")["disconnect"]; got != 1 {
		t.Errorf("resets by disconnect %d, want 1", got)
	}
	r.stop(t)
	if up := testutil.SumBy(t, reader, "opcontrol.jetstream.up", "")[""]; up != 0 {
		t.Errorf("up = %d after Run returned", up)
	}
}
