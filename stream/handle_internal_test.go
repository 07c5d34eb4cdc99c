package stream

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

// BenchmarkHandle measures the receive path after the transport: decoding
// one frame and applying it to the store (a pause/resume pair of an
// OpenTelemetry op id, so the store stays small).
func BenchmarkHandle(b *testing.B) {
	cc, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	store := testutil.NewStore(b, controlstore.Agent{AgentID: "a"})
	s := NewSubscriber(cc, store, WithLogger(nil))
	var frames [2]mem.BufferSlice
	for i, sig := range []wirev1.OpControlSignal{wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE, wirev1.OpControlSignal_OP_CONTROL_SIGNAL_RESUME} {
		raw, _ := proto.Marshal(&wirev1.OpControlMessage{OpId: "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7", Signal: sig, Sequence: 12345})
		frames[i] = mem.BufferSlice{mem.SliceBuffer(raw)}
	}
	codec := wirecodec.Codec{}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := codec.Unmarshal(frames[i&1], &s.msg); err != nil {
			b.Fatal(err)
		}
		s.handle(&s.msg)
	}
	if st := s.Status(); st.Dropped != 0 {
		b.Fatalf("%d dropped", st.Dropped)
	}
}
