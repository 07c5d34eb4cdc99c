package controlstore

import (
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"

	"go.opentelemetry.io/otel/trace"
)

// Reserved op ids and limits of the gateway's op_id field.
const (
	// GlobalOpID addresses every op of every agent connected to the gateway.
	GlobalOpID = "*"
	// AgentOpIDPrefix followed by an agent id (not org or team) addresses
	// every op of that agent. Real agent ids are did:key:z… strings, so the
	// reserved id itself contains colons.
	AgentOpIDPrefix = "agent:"
	// MaxOpIDLen is the longest op id Apply accepts, in bytes. An OpenTelemetry
	// op id is 49 bytes and a did:key agent halt about 60; anything near this
	// cap is garbage, and refusing it keeps memory bounded per entry.
	MaxOpIDLen = 512
)

// otelOpIDLen is len(hex trace id) + len(":") + len(hex span id).
const otelOpIDLen = 32 + 1 + 16

// Op names the operation a call belongs to. The zero Op means "no op": such
// a call is still subject to its agent's and the global scope.
//
// An Op built from OpenTelemetry ids (OpFromSpanContext, OpFromIDs) costs
// nothing to build or look up: the store keys such ops by the raw id arrays,
// and parses gateway op ids of the same form once, when the signal arrives.
type Op struct {
	key opKey
}

// opKey is the map key of a per-op entry. Ids in OpenTelemetry form
// (32 lowercase hex, ':', 16 lowercase hex) are held as arrays with id == "";
// every other id is held verbatim in id, so it matches only the exact same
// string, as the gateway matches it.
type opKey struct {
	trace trace.TraceID
	span  trace.SpanID
	id    string
}

// OpFromSpanContext returns the op of a span: its trace id and span id, the
// pair the gateway joins into "{trace_id}:{span_id}". An invalid span
// context gives the zero Op.
func OpFromSpanContext(sc trace.SpanContext) Op {
	if !sc.IsValid() {
		return Op{}
	}
	return Op{key: opKey{trace: sc.TraceID(), span: sc.SpanID()}}
}

// OpFromIDs returns the op with the given OpenTelemetry ids, or the zero Op
// when either id is invalid (all zeros).
func OpFromIDs(traceID trace.TraceID, spanID trace.SpanID) Op {
	if !traceID.IsValid() || !spanID.IsValid() {
		return Op{}
	}
	return Op{key: opKey{trace: traceID, span: spanID}}
}

// OpFromID returns the op with an explicit gateway op id, for callers whose
// op id does not come from an OpenTelemetry span. An id in OpenTelemetry form
// is parsed so that it matches the same op built by OpFromSpanContext; any
// other id matches only itself, byte for byte. The empty id gives the zero Op.
func OpFromID(id string) Op {
	if id == "" {
		return Op{}
	}
	return Op{key: parseKey(id)}
}

// IsZero reports whether op is "no op".
func (op Op) IsZero() bool { return op.key == opKey{} }

// String returns the gateway op id of op ("{trace_id}:{span_id}" in
// lowercase hex for OpenTelemetry ops), or "" for the zero Op.
func (op Op) String() string { return op.key.String() }

func (k opKey) String() string {
	if k.id != "" || k == (opKey{}) {
		return k.id
	}
	var b [otelOpIDLen]byte
	hex.Encode(b[:32], k.trace[:])
	b[32] = ':'
	hex.Encode(b[33:], k.span[:])
	return string(b[:])
}

// parseKey turns a gateway op id into a key. Only the exact lowercase form
// that OpenTelemetry's String methods produce, with valid (non-zero) ids, is
// parsed: an uppercase id is a different string to the gateway, so it must
// stay a different key here.
func parseKey(id string) opKey {
	if len(id) == otelOpIDLen && id[32] == ':' && isLowerHex(id[:32]) && isLowerHex(id[33:]) {
		var k opKey
		_, _ = hex.Decode(k.trace[:], []byte(id[:32]))
		_, _ = hex.Decode(k.span[:], []byte(id[33:]))
		// All-zero ids are invalid in OpenTelemetry, so no span can carry
		// them; kept as a string, such an id cannot collide with "no op".
		if k.trace.IsValid() && k.span.IsValid() {
			return k
		}
	}
	return opKey{id: id}
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// hash spreads a key over the table. OpenTelemetry ids are random, but they
// come from the network, so they are still mixed with a per-store seed: a
// gateway cannot line up ids that collide.
func (k *opKey) hash(seed *hashSeed) uint64 {
	if k.id != "" {
		return maphash.String(seed.strings, k.id)
	}
	a := binary.LittleEndian.Uint64(k.trace[0:8])
	b := binary.LittleEndian.Uint64(k.trace[8:16])
	c := binary.LittleEndian.Uint64(k.span[:])
	h := (a ^ seed.ids) * 0x9e3779b97f4a7c15
	h = (h ^ b ^ h>>29) * 0xbf58476d1ce4e5b9
	h = (h ^ c ^ h>>31) * 0x94d049bb133111eb
	return h ^ h>>32
}

type hashSeed struct {
	strings maphash.Seed
	ids     uint64
}

func newHashSeed() hashSeed {
	s := maphash.MakeSeed()
	return hashSeed{strings: s, ids: maphash.String(s, "opcontrol")}
}
