package wirecodec_test

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
	"github.com/opcontrol/opcontrol/stream/internal/wirecodec"
)

// Golden bytes from the gateway facts (§1.3), derived from the upstream
// field table: our private package must encode exactly like upstream.
func TestGoldenBytes(t *testing.T) {
	cases := []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"subscribe request",
			&wirev1.OpControlSubscribeRequest{AgentId: &wirev1.AgentId{OrgId: "org", TeamId: "team", AgentId: "a"}},
			[]byte{0x0a, 0x0e, 0x0a, 0x03, 'o', 'r', 'g', 0x12, 0x04, 't', 'e', 'a', 'm', 0x1a, 0x01, 'a'}},
		{"pause, sequence 0",
			&wirev1.OpControlMessage{OpId: "trace-1:span-1", Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE},
			append(append([]byte{0x0a, 0x0e}, "trace-1:span-1"...), 0x10, 0x01)},
		{"terminate, sequence 5",
			&wirev1.OpControlMessage{OpId: "trace-1:span-1", Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_TERMINATE, Sequence: 5},
			append(append([]byte{0x0a, 0x0e}, "trace-1:span-1"...), 0x10, 0x03, 0x18, 0x05)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := wirecodec.Codec{}.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if b := got.Materialize(); !bytes.Equal(b, tc.want) {
				t.Fatalf("% x, want % x", b, tc.want)
			}
		})
	}
	// Upstream conformance vector agent_id_full.bin is 64 bytes.
	full, _ := proto.Marshal(&wirev1.AgentId{OrgId: "acme-corp", TeamId: "platform", AgentId: "did:key:z6Mkm5rByiqq5UNbvPFPfXtGJwdg2kD1T"})
	if len(full) != 64 {
		t.Fatalf("agent_id_full is %d bytes, want 64", len(full))
	}
}

func TestMessageNeverFails(t *testing.T) {
	c := wirecodec.Codec{}
	good := append(append([]byte{0x0a, 0x03}, "a:b"...), 0x10, 0x02, 0x18, 0x07)
	cases := []struct {
		name string
		data mem.BufferSlice
		ok   bool
	}{
		{"one buffer", mem.BufferSlice{mem.SliceBuffer(good)}, true},
		{"split across buffers", mem.BufferSlice{mem.SliceBuffer(good[:3]), mem.SliceBuffer(good[3:])}, true},
		{"empty frame", mem.BufferSlice{}, true},
		{"garbage", mem.BufferSlice{mem.SliceBuffer(bytes.Repeat([]byte{0xff}, 40))}, false},
		{"invalid UTF-8", mem.BufferSlice{mem.SliceBuffer([]byte{0x0a, 0x02, 0xff, 0xfe})}, false},
		{"unknown field kept out", mem.BufferSlice{mem.SliceBuffer([]byte{0x20, 0x01, 0x10, 0x01})}, true},
	}
	var m wirecodec.Message
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.Unmarshal(tc.data, &m); err != nil {
				t.Fatalf("Unmarshal returned %v: it must never fail a stream", err)
			}
			if (m.Err == nil) != tc.ok {
				t.Fatalf("Err = %v, want ok=%v", m.Err, tc.ok)
			}
			if m.Len != tc.data.Len() {
				t.Fatalf("Len %d", m.Len)
			}
			if !tc.ok && (len(m.Prefix) == 0 || len(m.Prefix) > 16) {
				t.Fatalf("Prefix % x", m.Prefix)
			}
		})
	}
	_ = c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(good[:3]), mem.SliceBuffer(good[3:])}, &m)
	if m.Msg.GetOpId() != "a:b" || m.Msg.GetSequence() != 7 {
		t.Fatalf("decoded %v", &m.Msg)
	}
}

func TestRawPassesThrough(t *testing.T) {
	c := wirecodec.Codec{}
	in := wirecodec.Raw{1, 2, 3}
	out, err := c.Marshal(&in)
	if err != nil || !bytes.Equal(out.Materialize(), in) {
		t.Fatalf("Marshal: % x, %v", out.Materialize(), err)
	}
	var got wirecodec.Raw
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{9}), mem.SliceBuffer([]byte{8, 7})}, &got); err != nil || !bytes.Equal(got, []byte{9, 8, 7}) {
		t.Fatalf("Unmarshal: % x, %v", got, err)
	}
	if _, err := c.Marshal(42); err == nil {
		t.Fatal("Marshal of a non-message succeeded")
	}
	if c.Name() != "proto" {
		t.Fatal("the codec must be named proto: the content type stays application/grpc+proto")
	}
}
