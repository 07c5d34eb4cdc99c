package stream_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

func TestMalformedInputKeepsStreamUp(t *testing.T) {
	gw := startGateway(t)
	store := testutil.NewStore(t, agent)
	reader := sdkmetric.NewManualReader()
	logs, logOpt := newLogs()
	sub := stream.NewSubscriber(dial(t, gw.Addr()), store, stream.WithCredentialToken(token), logOpt,
		stream.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	start(t, sub)
	waitReady(t, sub)

	to := gatewaytest.ToAgent(agent)
	msg := func(opID string, sig wirev1.OpControlSignal) *wirev1.OpControlMessage {
		return &wirev1.OpControlMessage{OpId: opID, Signal: sig, Sequence: 7}
	}
	const pause = wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE
	bad := []struct {
		name    string
		publish func()
		reason  string
	}{
		{"unknown enum", func() { gw.PublishMessage(to, msg("t:1", 99)) }, "unknown_signal"},
		{"negative enum", func() { gw.PublishMessage(to, msg("t:1", -1)) }, "unknown_signal"},
		{"unspecified", func() { gw.PublishMessage(to, msg("t:1", 0)) }, "unspecified_signal"},
		{"empty op id", func() { gw.PublishMessage(to, msg("", pause)) }, "empty_op_id"},
		{"oversized op id", func() { gw.PublishMessage(to, msg(strings.Repeat("a", controlstore.MaxOpIDLen+1), pause)) }, "op_id_too_long"},
		{"1 MiB op id", func() { gw.PublishMessage(to, msg(strings.Repeat("b", 1<<20), pause)) }, "op_id_too_long"},
		{"another agent's halt", func() { gw.PublishMessage(to, msg("agent:"+other.AgentID, pause)) }, "foreign_agent"},
		{"garbage", func() { gw.PublishRaw(to, []byte{0xff, 0xff, 0xff, 0xff}) }, "malformed_frame"},
		{"truncated", func() { gw.PublishRaw(to, []byte{0x0a, 0x10, 't', ':'}) }, "malformed_frame"},
		{"invalid UTF-8", func() { gw.PublishRaw(to, []byte{0x0a, 0x02, 0xff, 0xfe, 0x10, 0x01}) }, "malformed_frame"},
		{"global garbage", func() { gw.PublishRaw(gatewaytest.ToAll(), []byte{0x10}) }, "malformed_frame"},
	}
	want := map[string]int64{}
	for _, b := range bad {
		b.publish()
		want[b.reason]++
	}
	gw.Publish(agent, "t:ok", controlstore.SignalPause)
	testutil.Eventually(t, waitLong, func() bool { return store.State("t:ok") == controlstore.Paused }, "the valid signal after bad input was not applied; status %+v", sub.Status())

	st := sub.Status()
	if st.Received != uint64(len(bad)+1) || st.Dropped != uint64(len(bad)) {
		t.Fatalf("received %d, dropped %d; want %d and %d", st.Received, st.Dropped, len(bad)+1, len(bad))
	}
	if n := gw.Stats().Accepted; n != 1 || !sub.Connected() || st.State != stream.Live {
		t.Fatalf("the stream did not stay up: %d subscribes, status %+v", n, st)
	}
	if store.Len() != 1 || store.State("*") != controlstore.Running || store.State("agent:"+agent.AgentID) != controlstore.Running {
		t.Fatalf("bad input changed the store: %d entries", store.Len())
	}
	if got := testutil.SumBy(t, reader, "opcontrol.stream.signals.rejected", "reason"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rejected by reason %v, want %v", got, want)
	}
	// Logged at a bounded rate: the first of each reason only.
	if n := logs.Count(slog.LevelWarn, "does not decode"); n != 1 {
		t.Fatalf("%d log lines for 4 undecodable frames, want 1", n)
	}
	if n := logs.Count(slog.LevelWarn, "store refused"); n != len(want)-1 {
		t.Fatalf("%d log lines for refused signals, want %d (one per reason)", n, len(want)-1)
	}
}

func TestThousandSignalsRightAfterReadyNoneMissed(t *testing.T) {
	// The ring holds the whole burst: a lagging subscriber skipping
	// envelopes is the gateway's documented behaviour, not what this
	// tests. What it tests is the barrier: Ready means subscribed.
	gw := startGateway(t, gatewaytest.WithRingCapacity(1024))
	store := testutil.NewStore(t, agent)
	sub := stream.NewSubscriber(dial(t, gw.Addr()), store, stream.WithCredentialToken(token), stream.WithLogger(nil))
	start(t, sub)
	<-sub.Ready()
	const n = 1000
	for i := range n {
		gw.Publish(agent, fmt.Sprintf("trace-%d:span", i), controlstore.SignalPause)
	}
	testutil.Eventually(t, waitLong, func() bool { return sub.Status().Received == n }, "received %d of %d", sub.Status().Received, n)
	if st := store.Stats(); st.Paused != n || st.Applied != n {
		t.Fatalf("store %+v, want %d paused", st, n)
	}
	if s := gw.Stats(); s.Skipped != 0 || s.Accepted != 1 {
		t.Fatalf("gateway %+v: skipped or reconnected", s)
	}
	if seq := sub.Status().LastSequence; seq != n-1 {
		t.Fatalf("LastSequence %d, want %d", seq, n-1)
	}
}

func TestMetrics(t *testing.T) {
	gw := startGateway(t)
	reader := sdkmetric.NewManualReader()
	sub := stream.NewSubscriber(dial(t, gw.Addr()), testutil.NewStore(t, agent), stream.WithCredentialToken(token), stream.WithLogger(nil),
		stream.WithBackoff(fastBackoff), noSpread, stream.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	r := start(t, sub)
	waitReady(t, sub)
	if up := testutil.SumBy(t, reader, "opcontrol.stream.up", "")[""]; up != 1 {
		t.Fatalf("up = %d while live", up)
	}
	gw.Publish(agent, "t:1", controlstore.SignalPause)
	gw.Publish(agent, "t:1", controlstore.SignalResume)
	gw.HaltAgent(agent, controlstore.SignalTerminate)
	gw.PublishMessage(gatewaytest.ToAgent(agent), &wirev1.OpControlMessage{OpId: "t:2", Signal: 42})
	testutil.Eventually(t, waitShort, func() bool { return sub.Status().Received == 4 }, "signals not received")
	if got, want := testutil.SumBy(t, reader, "opcontrol.stream.signals.received", "signal"), "map[pause:1 resume:1 terminate:1 unknown:1]"; fmt.Sprint(got) != want {
		t.Fatalf("received by signal %v, want %v", got, want)
	}

	gw.DropAll(13) // Internal
	testutil.Eventually(t, waitLong, func() bool { return gw.Stats().Accepted == 2 && sub.Connected() }, "not live again")
	if got, want := testutil.SumBy(t, reader, "opcontrol.stream.reconnects", "code"), "map[Internal:1]"; fmt.Sprint(got) != want {
		t.Fatalf("reconnects %v, want %v", got, want)
	}
	r.stop(t)
	if up := testutil.SumBy(t, reader, "opcontrol.stream.up", "")[""]; up != 0 {
		t.Fatalf("up = %d after Run returned", up)
	}
}
