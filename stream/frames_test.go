package stream_test

import (
	"fmt"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// frame returns a frame of exactly size bytes holding an op id and, if
// valid, a PAUSE. Its op id (NUL bytes: valid UTF-8) is what makes it
// large: the store refuses a valid frame (op_id_too_long); an invalid one's
// op id ends in a byte that is not UTF-8, so that the frame fails to decode
// only at its very end (malformed_frame). Built in place, without copies,
// to keep a test of 64 MiB frames cheap under -race.
func frame(t *testing.T, size int, valid bool) []byte {
	t.Helper()
	b := make([]byte, size)
	n := size - 1 - 4 // op_id tag, 4-byte length
	if valid {
		n -= 2 // signal field
	}
	head := protowire.AppendVarint(protowire.AppendTag(b[:0], 1, protowire.BytesType), uint64(n))
	if len(head) != 5 {
		t.Fatalf("op id length %d does not take 4 bytes", n)
	}
	if valid {
		tail := protowire.AppendTag(b[size-2:size-2], 2, protowire.VarintType)
		protowire.AppendVarint(tail, uint64(wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE))
	} else {
		b[size-1] = 0xff
	}
	return b
}

// TestOversizedFrames: frames far over grpc's default 4 MiB receive limit,
// up to the subscriber's own limit, are dropped and counted like any bad
// frame, and the stream stays up, so that the terminate published right
// behind each one is applied. A frame over the limit ends the stream; it is
// counted on its own, and the stream is re-established.
func TestOversizedFrames(t *testing.T) {
	if testing.Short() {
		t.Skip("moves a few hundred MiB through loopback")
	}
	gw := startGateway(t)
	store := testutil.NewStore(t, agent)
	reader := sdkmetric.NewManualReader()
	sub := stream.NewSubscriber(dial(t, gw.Addr()), store, stream.WithCredentialToken(token), stream.WithLogger(nil),
		stream.WithBackoff(fastBackoff), noSpread, stream.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	start(t, sub)
	waitReady(t, sub)
	to := gatewaytest.ToAgent(agent)

	const mib = 1 << 20
	want := map[string]int64{}
	for i, tc := range []struct {
		name   string
		size   int
		valid  bool
		reason string
	}{
		{"5 MiB op id", 5 * mib, true, string(controlstore.ReasonOpIDTooLong)},
		{"5 MiB undecodable", 5 * mib, false, "malformed_frame"},
		{"op id at the limit", stream.MaxFrameSize, true, string(controlstore.ReasonOpIDTooLong)},
	} {
		gw.PublishRaw(to, frame(t, tc.size, tc.valid))
		id := fmt.Sprintf("t:%d", i)
		gw.Publish(agent, id, controlstore.SignalTerminate)
		testutil.Eventually(t, waitLong, func() bool { return store.State(id) == controlstore.Terminated },
			"%s: the terminate right behind it was not applied", tc.name)
		want[tc.reason]++
	}
	st := sub.Status()
	if st.Received != 6 || st.Dropped != 3 || st.TooLarge != 0 {
		t.Fatalf("received %d, dropped %d, too large %d; want 6, 3, 0", st.Received, st.Dropped, st.TooLarge)
	}
	if n := gw.Stats().Accepted; n != 1 || st.State != stream.Live {
		t.Fatalf("the stream did not stay up: %d subscribes, status %+v", n, st)
	}
	if got := testutil.SumBy(t, reader, "opcontrol.stream.signals.rejected", "reason"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rejected by reason %v, want %v", got, want)
	}

	// One byte over the limit: grpc ends the stream before reading it.
	gw.PublishRaw(to, make([]byte, stream.MaxFrameSize+1))
	testutil.Eventually(t, waitLong, func() bool { return gw.Stats().Accepted == 2 && sub.Connected() },
		"not live again after a frame over the limit")
	st = sub.Status()
	if st.TooLarge != 1 || st.Dropped != 4 || st.Received != 7 || st.LastCode != codes.ResourceExhausted {
		t.Fatalf("after a frame over the limit: status %+v, want it counted once, with ResourceExhausted", st)
	}
	want["frame_too_large"]++
	if got := testutil.SumBy(t, reader, "opcontrol.stream.signals.rejected", "reason"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rejected by reason %v, want %v", got, want)
	}
	gw.Publish(agent, "t:after", controlstore.SignalTerminate)
	testutil.Eventually(t, waitShort, func() bool { return store.State("t:after") == controlstore.Terminated }, "terminate on the new stream not applied")
}
