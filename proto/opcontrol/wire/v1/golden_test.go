package wirev1_test

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
)

// update rewrites testdata/wire from the vector table below. The table is the
// single source; the files exist for readers and for other implementations.
var update = flag.Bool("update", false, "rewrite testdata/wire/*.bin and *.txtpb from the vectors in golden_test.go")

// goldenDir is the repository's testdata/wire, relative to this package.
var goldenDir = filepath.Join("..", "..", "..", "..", "testdata", "wire")

// ascii marks a wire() part as literal text to be hex-encoded, so that long
// strings stay readable in the hand-derived encodings.
type ascii string

// wire assembles a hand-derived encoding from hex parts (spaces ignored) and
// ascii parts. It deliberately knows nothing about protobuf, so a generator or
// runtime bug cannot change both the expected and the actual bytes.
func wire(t testing.TB, parts ...any) []byte {
	t.Helper()
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case string:
			h, err := hex.DecodeString(strings.ReplaceAll(p, " ", ""))
			if err != nil {
				t.Fatalf("bad hex %q: %v", p, err)
			}
			b = append(b, h...)
		case ascii:
			b = append(b, p...)
		default:
			t.Fatalf("wire: unsupported part %T", p)
		}
	}
	return b
}

const (
	// Upstream's conformance identity (AA conformance/vectors/proto/agent_id_full.bin).
	didKey = "did:key:z6Mkm5rByiqq5UNbvPFPfXtGJwdg2kD1T"
	// An OpenTelemetry op id: 32 lowercase hex trace id, ':', 16 hex span id
	// (the W3C trace-context example ids).
	otelOpID = "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"
)

type vector struct {
	name string        // file stem in testdata/wire
	doc  string        // one line; copied into the .txtpb header
	msg  proto.Message // the value; the encoding must equal hand
	hand []any         // hand-derived wire bytes, see wire()
}

// vectors is the golden table. Every .bin in testdata/wire must appear here.
// The hand encodings follow the field table of gateway-facts §1.2: tag byte =
// field<<3 | wire type (0a = field 1 bytes, 10 = field 2 varint, 12 = field 2
// bytes, 18 = field 3 varint, 1a = field 3 bytes), then a varint length.
var vectors = []vector{
	{
		name: "subscribe_full",
		doc:  "subscribe with upstream's conformance triple acme-corp/platform/did:key; the inner AgentId is 64 bytes like upstream agent_id_full.bin",
		msg: &wirev1.OpControlSubscribeRequest{AgentId: &wirev1.AgentId{
			OrgId: "acme-corp", TeamId: "platform", AgentId: didKey,
		}},
		hand: []any{"0a 40", "0a 09", ascii("acme-corp"), "12 08", ascii("platform"), "1a 29", ascii(didKey)},
	},
	{
		name: "subscribe_empty_org_team",
		doc:  "subscribe with empty org and team: fields 1 and 2 of AgentId are absent, the gateway still compares them byte for byte",
		msg:  &wirev1.OpControlSubscribeRequest{AgentId: &wirev1.AgentId{AgentId: didKey}},
		hand: []any{"0a 2b", "1a 29", ascii(didKey)},
	},
	{
		name: "subscribe_org_team_a",
		doc:  "gateway-facts §1.3 hand-derived subscribe example org/team/a",
		msg: &wirev1.OpControlSubscribeRequest{AgentId: &wirev1.AgentId{
			OrgId: "org", TeamId: "team", AgentId: "a",
		}},
		hand: []any{"0a 0e 0a 03 6f 72 67 12 04 74 65 61 6d 1a 01 61"},
	},
	{
		name: "message_pause",
		doc:  "PAUSE for an OpenTelemetry op id (trace_id:span_id, lowercase hex), sequence 1",
		msg:  &wirev1.OpControlMessage{OpId: otelOpID, Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE, Sequence: 1},
		hand: []any{"0a 31", ascii(otelOpID), "10 01", "18 01"},
	},
	{
		name: "message_resume",
		doc:  "RESUME for an OpenTelemetry op id, sequence 2",
		msg:  &wirev1.OpControlMessage{OpId: otelOpID, Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_RESUME, Sequence: 2},
		hand: []any{"0a 31", ascii(otelOpID), "10 02", "18 02"},
	},
	{
		name: "message_terminate",
		doc:  "TERMINATE for an OpenTelemetry op id, sequence 3",
		msg:  &wirev1.OpControlMessage{OpId: otelOpID, Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_TERMINATE, Sequence: 3},
		hand: []any{"0a 31", ascii(otelOpID), "10 03", "18 03"},
	},
	{
		name: "message_sequence_zero",
		doc:  "gateway-facts §1.3: PAUSE trace-1:span-1 with sequence 0, so field 3 is absent (the first message a gateway ever sends)",
		msg:  &wirev1.OpControlMessage{OpId: "trace-1:span-1", Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE},
		hand: []any{"0a 0e", ascii("trace-1:span-1"), "10 01"},
	},
	{
		name: "message_sequence_max",
		doc:  "PAUSE with sequence 2^64-1: a ten-byte varint",
		msg:  &wirev1.OpControlMessage{OpId: "trace-1:span-1", Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE, Sequence: math.MaxUint64},
		hand: []any{"0a 0e", ascii("trace-1:span-1"), "10 01", "18 ff ff ff ff ff ff ff ff ff 01"},
	},
	{
		name: "message_global_halt",
		doc:  "TERMINATE for the reserved fleet-wide id \"*\"",
		msg:  &wirev1.OpControlMessage{OpId: "*", Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_TERMINATE, Sequence: 7},
		hand: []any{"0a 01", ascii("*"), "10 03", "18 07"},
	},
	{
		name: "message_agent_halt",
		doc:  "TERMINATE for the reserved agent halt id agent:{agent_id}; a did:key agent id makes the id contain colons",
		msg:  &wirev1.OpControlMessage{OpId: "agent:" + didKey, Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_TERMINATE, Sequence: 8},
		hand: []any{"0a 2f", ascii("agent:" + didKey), "10 03", "18 08"},
	},
	{
		name: "message_unknown_signal",
		doc:  "signal value 7, unknown to this schema: open enum, must decode and be treated as malformed by consumers",
		msg:  &wirev1.OpControlMessage{OpId: "trace-1:span-1", Signal: 7, Sequence: 9},
		hand: []any{"0a 0e", ascii("trace-1:span-1"), "10 07", "18 09"},
	},
	{
		name: "message_unspecified_signal",
		doc:  "signal UNSPECIFIED (0), so field 2 is absent; never published by the gateway, consumers treat it as malformed",
		msg:  &wirev1.OpControlMessage{OpId: "trace-1:span-1", Sequence: 10},
		hand: []any{"0a 0e", ascii("trace-1:span-1"), "18 0a"},
	},
}

// marshal is the encoding the vectors pin: deterministic, as a Go producer
// would emit it. (proto3 scalars have one canonical encoding anyway; the
// option keeps that true if a map field is ever added.)
func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatalf("marshal %T: %v", m, err)
	}
	return b
}

// extraSpace matches the random extra space that protobuf-go's text encoder
// puts after "name:" to discourage byte comparisons of its output.
var extraSpace = regexp.MustCompile(`(?m)^(\s*[A-Za-z0-9_]+:) +`)

// renderText returns the .txtpb twin of v: a comment header and the value in
// protobuf text format, normalised so that it is stable across builds.
func renderText(t testing.TB, v vector, enc []byte) []byte {
	t.Helper()
	body, err := prototext.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(v.msg)
	if err != nil {
		t.Fatalf("%s: text marshal: %v", v.name, err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# proto-file: proto/opcontrol/wire/v1/wire.proto\n")
	fmt.Fprintf(&b, "# proto-message: %s\n", v.msg.ProtoReflect().Descriptor().FullName())
	fmt.Fprintf(&b, "#\n# %s\n#\n", v.doc)
	fmt.Fprintf(&b, "# %s.bin, %d bytes: % x\n", v.name, len(enc), enc)
	fmt.Fprintf(&b, "# Generated by `make generate` from proto/opcontrol/wire/v1/golden_test.go; do not edit.\n")
	b.Write(extraSpace.ReplaceAll(body, []byte("$1 ")))
	return b.Bytes()
}

// TestGoldenEncode checks value → bytes: the encoding equals both the
// hand-derived bytes and the committed .bin, and the .txtpb twin is current.
func TestGoldenEncode(t *testing.T) {
	if *update {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		removeOrphans(t)
	}
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			got := marshal(t, v.msg)
			if want := wire(t, v.hand...); !bytes.Equal(got, want) {
				t.Fatalf("encoding differs from the hand-derived bytes\n got % x\nwant % x", got, want)
			}
			text := renderText(t, v, got)
			bin, txt := goldenPath(v.name, ".bin"), goldenPath(v.name, ".txtpb")
			if *update {
				writeFile(t, bin, got)
				writeFile(t, txt, text)
				return
			}
			if file := readFile(t, bin); !bytes.Equal(got, file) {
				t.Errorf("%s differs from the encoding (run make generate)\n got % x\nfile % x", bin, got, file)
			}
			if file := readFile(t, txt); !bytes.Equal(text, file) {
				t.Errorf("%s is stale (run make generate)\nwant:\n%s\nfile:\n%s", txt, text, file)
			}
		})
	}
}

// TestGoldenDecode checks bytes → value: every .bin on disk belongs to a
// vector and decodes, with no unknown fields, to the vector's value and to the
// value its .txtpb twin spells out.
func TestGoldenDecode(t *testing.T) {
	byName := make(map[string]vector, len(vectors))
	for _, v := range vectors {
		byName[v.name] = v
	}
	bins, err := filepath.Glob(filepath.Join(goldenDir, "*.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if len(bins) != len(vectors) {
		t.Errorf("%d .bin files in %s, %d vectors (run make generate)", len(bins), goldenDir, len(vectors))
	}
	for _, bin := range bins {
		name := strings.TrimSuffix(filepath.Base(bin), ".bin")
		t.Run(name, func(t *testing.T) {
			v, ok := byName[name]
			if !ok {
				t.Fatalf("%s has no vector in golden_test.go; vectors are generated, not hand-written", bin)
			}
			decoded := v.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(readFile(t, bin), decoded); err != nil {
				t.Fatalf("unmarshal %s: %v", bin, err)
			}
			if u := unknownFields(decoded); len(u) > 0 {
				t.Errorf("%s decoded with unknown fields % x: a field number or wire type drifted", bin, u)
			}
			if !proto.Equal(decoded, v.msg) {
				t.Errorf("%s decodes to %v, want %v", bin, decoded, v.msg)
			}
			fromText := v.msg.ProtoReflect().New().Interface()
			if err := prototext.Unmarshal(readFile(t, goldenPath(name, ".txtpb")), fromText); err != nil {
				t.Fatalf("parse %s.txtpb: %v", name, err)
			}
			if !proto.Equal(decoded, fromText) {
				t.Errorf("%s.bin decodes to %v but %s.txtpb says %v", name, decoded, name, fromText)
			}
		})
	}
}

// TestGoldenHandDerived pins the remaining examples of gateway-facts §1.3
// that are not files: they change one field of the sequence-zero vector.
func TestGoldenHandDerived(t *testing.T) {
	const op = ascii("trace-1:span-1")
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want []any
	}{
		{"pause seq 5", &wirev1.OpControlMessage{OpId: string(op), Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_PAUSE, Sequence: 5}, []any{"0a 0e", op, "10 01 18 05"}},
		{"terminate seq 0", &wirev1.OpControlMessage{OpId: string(op), Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_TERMINATE}, []any{"0a 0e", op, "10 03"}},
		{"resume seq 0", &wirev1.OpControlMessage{OpId: string(op), Signal: wirev1.OpControlSignal_OP_CONTROL_SIGNAL_RESUME}, []any{"0a 0e", op, "10 02"}},
		// An empty AgentId is still present on the wire: the gateway sees
		// agent_id set (no InvalidArgument) holding three empty strings.
		{"subscribe empty AgentId", &wirev1.OpControlSubscribeRequest{AgentId: &wirev1.AgentId{}}, []any{"0a 00"}},
		// No AgentId at all is zero bytes, which the gateway rejects with
		// InvalidArgument before it looks at credentials.
		{"subscribe absent AgentId", &wirev1.OpControlSubscribeRequest{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := marshal(t, tc.msg), wire(t, tc.want...); !bytes.Equal(got, want) {
				t.Errorf("got % x, want % x", got, want)
			}
		})
	}
}

// TestGoldenAgentIDSize ties subscribe_full to upstream's own conformance
// vector: AA conformance/vectors/proto/agent_id_full.bin is the same triple
// and is 64 bytes long.
func TestGoldenAgentIDSize(t *testing.T) {
	id := &wirev1.AgentId{OrgId: "acme-corp", TeamId: "platform", AgentId: didKey}
	if n := len(marshal(t, id)); n != 64 {
		t.Errorf("AgentId encodes to %d bytes, upstream agent_id_full.bin has 64", n)
	}
}

func goldenPath(name, ext string) string { return filepath.Join(goldenDir, name+ext) }

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run make generate)", err)
	}
	return b
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// removeOrphans deletes generated files whose vector is gone, so that a
// renamed vector does not leave a stale twin behind after -update.
func removeOrphans(t testing.TB) {
	t.Helper()
	names := make([]string, 0, len(vectors))
	for _, v := range vectors {
		names = append(names, v.name)
	}
	for _, ext := range []string{".bin", ".txtpb"} {
		files, err := filepath.Glob(filepath.Join(goldenDir, "*"+ext))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if !slices.Contains(names, strings.TrimSuffix(filepath.Base(f), ext)) {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// unknownFields returns the unknown bytes of m and of every message it
// holds: a field whose number or wire type drifted between encoder and
// decoder ends up there instead of failing the decode.
func unknownFields(m proto.Message) []byte {
	r := m.ProtoReflect()
	u := slices.Clone(r.GetUnknown())
	r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() != nil {
			u = append(u, unknownFields(v.Message().Interface())...)
		}
		return true
	})
	return u
}
