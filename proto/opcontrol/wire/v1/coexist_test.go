package wirev1_test

// This file links wirev1 together with upstreampb, a copy of the messages
// generated under upstream's own file paths and full names. If wirev1 ever
// registered an upstream name, this test binary would panic at init and every
// test here would fail before running.

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/opcontrol/opcontrol/proto/internal/upstreampb"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
)

func TestCoexistRegistry(t *testing.T) {
	// Both copies are registered globally: init did not panic and did not
	// drop either (the conflict policy "ignore" would silently drop one).
	for _, path := range []string{"opcontrol/wire/v1/wire.proto", "common.proto", "policy.proto"} {
		if _, err := protoregistry.GlobalFiles.FindFileByPath(path); err != nil {
			t.Errorf("global registry: %v", err)
		}
	}
	for _, name := range []protoreflect.FullName{
		"assembly.common.v1.AgentId", "assembly.policy.v1.OpControlMessage",
		"opcontrol.wire.v1.AgentId", "opcontrol.wire.v1.OpControlMessage",
	} {
		if _, err := protoregistry.GlobalTypes.FindMessageByName(name); err != nil {
			t.Errorf("global types: %v", err)
		}
	}

	// The global registry's reaction to a conflict depends on
	// GOLANG_PROTOBUF_REGISTRATION_CONFLICT; a private registry always
	// reports one, so this holds whatever the environment says.
	var files protoregistry.Files
	for _, fd := range []protoreflect.FileDescriptor{
		upstreampb.File_common_proto,
		upstreampb.File_policy_proto,
		wirev1.File_opcontrol_wire_v1_wire_proto,
	} {
		if err := files.RegisterFile(fd); err != nil {
			t.Errorf("register %s next to the others: %v", fd.Path(), err)
		}
	}

	// Control: the same schema under upstream's package is rejected, so the
	// check above is able to fail and the hazard it guards against is real.
	fdp := protodesc.ToFileDescriptorProto(wirev1.File_opcontrol_wire_v1_wire_proto)
	fdp.Name = proto.String("renamed.proto")
	fdp.Package = proto.String("assembly.policy.v1")
	for _, m := range fdp.GetMessageType() {
		for _, f := range m.GetField() {
			if f.TypeName != nil {
				f.TypeName = proto.String(strings.Replace(f.GetTypeName(), ".opcontrol.wire.v1.", ".assembly.policy.v1.", 1))
			}
		}
	}
	renamed, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := files.RegisterFile(renamed); err == nil {
		t.Error("a second assembly.policy.v1.OpControlMessage registered without conflict; the registry check proves nothing")
	}
}

func TestCoexistOurNamesArePrivate(t *testing.T) {
	fd := wirev1.File_opcontrol_wire_v1_wire_proto
	if fd.Package() != "opcontrol.wire.v1" {
		t.Errorf("package %q, want opcontrol.wire.v1", fd.Package())
	}
	if p := fd.Path(); p == "common.proto" || p == "policy.proto" {
		t.Errorf("file path %q collides with upstream", p)
	}
	check := func(name protoreflect.FullName) {
		if strings.HasPrefix(string(name), "assembly.") {
			t.Errorf("%s is an upstream name; it would collide at init", name)
		}
	}
	for i := range fd.Messages().Len() {
		check(fd.Messages().Get(i).FullName())
	}
	for i := range fd.Enums().Len() {
		e := fd.Enums().Get(i)
		check(e.FullName())
		for j := range e.Values().Len() {
			check(e.Values().Get(j).FullName())
		}
	}
	if n := fd.Services().Len(); n != 0 {
		t.Errorf("wire.proto declares %d services; the stream is called by its literal method path instead", n)
	}
	// The upstream copy, by contrast, carries the literal method path that
	// the stream must call.
	svc := upstreampb.File_policy_proto.Services().ByName("PolicyService")
	m := svc.Methods().ByName("OpControlStream")
	if got := "/" + string(svc.FullName()) + "/" + string(m.Name()); got != "/assembly.policy.v1.PolicyService/OpControlStream" {
		t.Errorf("upstream method path %q", got)
	}
	if !m.IsStreamingServer() || m.IsStreamingClient() {
		t.Error("OpControlStream must be server-streaming only")
	}
}

// TestCoexistSchema compares the two copies field by field: same names,
// numbers, kinds and cardinality, and the same enum values.
func TestCoexistSchema(t *testing.T) {
	pairs := []struct {
		ours, theirs protoreflect.MessageDescriptor
	}{
		{(&wirev1.AgentId{}).ProtoReflect().Descriptor(), (&upstreampb.AgentId{}).ProtoReflect().Descriptor()},
		{(&wirev1.OpControlSubscribeRequest{}).ProtoReflect().Descriptor(), (&upstreampb.OpControlSubscribeRequest{}).ProtoReflect().Descriptor()},
		{(&wirev1.OpControlMessage{}).ProtoReflect().Descriptor(), (&upstreampb.OpControlMessage{}).ProtoReflect().Descriptor()},
	}
	for _, p := range pairs {
		if p.ours.Name() != p.theirs.Name() {
			t.Errorf("message %s vs %s", p.ours.FullName(), p.theirs.FullName())
		}
		of, tf := p.ours.Fields(), p.theirs.Fields()
		if of.Len() != tf.Len() {
			t.Errorf("%s has %d fields, upstream %d", p.ours.Name(), of.Len(), tf.Len())
			continue
		}
		for i := range of.Len() {
			o, u := of.Get(i), tf.ByNumber(of.Get(i).Number())
			if u == nil {
				t.Errorf("%s field %d missing upstream", p.ours.Name(), o.Number())
				continue
			}
			if o.Name() != u.Name() || o.Kind() != u.Kind() || o.Cardinality() != u.Cardinality() || o.HasPresence() != u.HasPresence() {
				t.Errorf("%s field %d: ours %s %v %v, upstream %s %v %v",
					p.ours.Name(), o.Number(), o.Name(), o.Cardinality(), o.Kind(), u.Name(), u.Cardinality(), u.Kind())
			}
			if o.Message() != nil && o.Message().Name() != u.Message().Name() {
				t.Errorf("%s.%s: message %s vs %s", p.ours.Name(), o.Name(), o.Message().Name(), u.Message().Name())
			}
		}
	}
	oe, ue := wirev1.OpControlSignal(0).Descriptor(), upstreampb.OpControlSignal(0).Descriptor()
	if oe.Values().Len() != ue.Values().Len() {
		t.Fatalf("enum has %d values, upstream %d", oe.Values().Len(), ue.Values().Len())
	}
	for i := range oe.Values().Len() {
		o := oe.Values().Get(i)
		if u := ue.Values().ByNumber(o.Number()); u == nil || u.Name() != o.Name() {
			t.Errorf("enum value %d %s has no upstream twin", o.Number(), o.Name())
		}
	}
	if oe.IsClosed() || ue.IsClosed() {
		t.Error("OpControlSignal must be an open enum so unknown values survive decoding")
	}
}

// TestCoexistBytes encodes each case with one copy and decodes it with the
// other, in both directions, and requires equal bytes, equal values and no
// unknown fields (a mismatched number or wire type would land there).
func TestCoexistBytes(t *testing.T) {
	t.Run("OpControlMessage", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			opID   string
			signal int32
			seq    uint64
		}{
			{"unspecified", "trace-1:span-1", 0, 1},
			{"pause", otelOpID, 1, 2},
			{"resume", otelOpID, 2, 3},
			{"terminate", otelOpID, 3, 4},
			{"unknown signal 7", otelOpID, 7, 5},
			{"negative signal", otelOpID, -1, 6},
			{"sequence 0", "trace-1:span-1", 1, 0},
			{"sequence max", "trace-1:span-1", 1, math.MaxUint64},
			{"global halt", "*", 3, 7},
			{"agent halt", "agent:" + didKey, 3, 8},
			{"trailing colon", "abc:", 1, 9},
			{"empty op id", "", 1, 10},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ours := &wirev1.OpControlMessage{OpId: tc.opID, Signal: wirev1.OpControlSignal(tc.signal), Sequence: tc.seq}
				theirs := &upstreampb.OpControlMessage{OpId: tc.opID, Signal: upstreampb.OpControlSignal(tc.signal), Sequence: tc.seq}
				ob, ub := marshal(t, ours), marshal(t, theirs)
				if !bytes.Equal(ob, ub) {
					t.Fatalf("encodings differ\n ours % x\nupstr % x", ob, ub)
				}
				gotTheirs := &upstreampb.OpControlMessage{}
				mustUnmarshal(t, ob, gotTheirs)
				if gotTheirs.GetOpId() != tc.opID || int32(gotTheirs.GetSignal()) != tc.signal || gotTheirs.GetSequence() != tc.seq {
					t.Errorf("upstream decoded ours as %v", gotTheirs)
				}
				gotOurs := &wirev1.OpControlMessage{}
				mustUnmarshal(t, ub, gotOurs)
				if !proto.Equal(gotOurs, ours) {
					t.Errorf("ours decoded upstream as %v, want %v", gotOurs, ours)
				}
			})
		}
	})
	t.Run("OpControlSubscribeRequest", func(t *testing.T) {
		for _, tc := range []struct {
			name             string
			absent           bool
			org, team, agent string
		}{
			{"full triple", false, "acme-corp", "platform", didKey},
			{"empty org and team", false, "", "", didKey},
			{"empty triple", false, "", "", ""},
			{"absent agent id", true, "", "", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ours, theirs := &wirev1.OpControlSubscribeRequest{}, &upstreampb.OpControlSubscribeRequest{}
				if !tc.absent {
					ours.AgentId = &wirev1.AgentId{OrgId: tc.org, TeamId: tc.team, AgentId: tc.agent}
					theirs.AgentId = &upstreampb.AgentId{OrgId: tc.org, TeamId: tc.team, AgentId: tc.agent}
				}
				ob, ub := marshal(t, ours), marshal(t, theirs)
				if !bytes.Equal(ob, ub) {
					t.Fatalf("encodings differ\n ours % x\nupstr % x", ob, ub)
				}
				gotTheirs := &upstreampb.OpControlSubscribeRequest{}
				mustUnmarshal(t, ob, gotTheirs)
				a := gotTheirs.GetAgentId()
				if (a == nil) != tc.absent || a.GetOrgId() != tc.org || a.GetTeamId() != tc.team || a.GetAgentId() != tc.agent {
					t.Errorf("upstream decoded ours as %v", gotTheirs)
				}
				gotOurs := &wirev1.OpControlSubscribeRequest{}
				mustUnmarshal(t, ub, gotOurs)
				if !proto.Equal(gotOurs, ours) {
					t.Errorf("ours decoded upstream as %v, want %v", gotOurs, ours)
				}
			})
		}
	})
	t.Run("golden vectors", func(t *testing.T) {
		// The committed vectors, decoded and re-encoded by the upstream copy,
		// come back unchanged.
		for _, v := range vectors {
			var theirs proto.Message = &upstreampb.OpControlMessage{}
			if _, ok := v.msg.(*wirev1.OpControlSubscribeRequest); ok {
				theirs = &upstreampb.OpControlSubscribeRequest{}
			}
			want := wire(t, v.hand...)
			mustUnmarshal(t, want, theirs)
			if got := marshal(t, theirs); !bytes.Equal(got, want) {
				t.Errorf("%s: upstream round trip gives % x, want % x", v.name, got, want)
			}
		}
	})
}

func mustUnmarshal(t *testing.T, b []byte, m proto.Message) {
	t.Helper()
	if err := proto.Unmarshal(b, m); err != nil {
		t.Fatalf("unmarshal into %T: %v", m, err)
	}
	if u := unknownFields(m); len(u) > 0 {
		t.Errorf("%T decoded with unknown fields % x", m, u)
	}
}

// FuzzCoexistDecode feeds arbitrary bytes to both copies: they must agree on
// whether the bytes are a valid OpControlMessage and, if so, re-encode them
// identically (unknown fields included).
func FuzzCoexistDecode(f *testing.F) {
	for _, v := range vectors {
		f.Add(wire(f, v.hand...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ours, theirs := &wirev1.OpControlMessage{}, &upstreampb.OpControlMessage{}
		oerr, terr := proto.Unmarshal(b, ours), proto.Unmarshal(b, theirs)
		if (oerr == nil) != (terr == nil) {
			t.Fatalf("ours: %v, upstream: %v", oerr, terr)
		}
		if oerr != nil {
			return
		}
		if ob, ub := marshal(t, ours), marshal(t, theirs); !bytes.Equal(ob, ub) {
			t.Fatalf("re-encodings differ\n ours % x\nupstr % x", ob, ub)
		}
	})
}
