package controlstore_test

import (
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/opcontrol/opcontrol/controlstore"
)

// FuzzOpFromID checks op-id parsing against the gateway's rule: ids match
// as exact strings. Two ids give the same Op exactly when they are the same
// string, an id round-trips through Op.String, and an id in OpenTelemetry
// form gives the same Op as the span it came from.
func FuzzOpFromID(f *testing.F) {
	for _, id := range []string{
		"4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7",
		"4BF92F3577B34DA6A3CE929D0E0E4736:00F067AA0BA902B7",
		"4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b",
		"4bf92f3577b34da6a3ce929d0e0e4736;00f067aa0ba902b7",
		"00000000000000000000000000000000:0000000000000000",
		"trace-001:span-001", "abc:", "*", "agent:did:key:z6Mk", "", "\xff\xfe",
	} {
		f.Add(id, id)
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		s := newStore(t)
		oa, ob := controlstore.OpFromID(a), controlstore.OpFromID(b)
		if (oa == ob) != (a == b) {
			t.Fatalf("OpFromID(%q) == OpFromID(%q) is %v", a, b, oa == ob)
		}
		if oa.String() != a || oa.IsZero() != (a == "") {
			t.Fatalf("OpFromID(%q).String() = %q, IsZero = %v", a, oa.String(), oa.IsZero())
		}
		if len(a) == 49 && a[32] == ':' {
			tid, err1 := trace.TraceIDFromHex(a[:32])
			sid, err2 := trace.SpanIDFromHex(a[33:])
			if err1 == nil && err2 == nil && tid.IsValid() && sid.IsValid() && a == strings.ToLower(a) {
				if controlstore.OpFromIDs(tid, sid) != oa {
					t.Fatalf("OpFromID(%q) differs from the span's Op", a)
				}
			}
		}
		// Signalling one id affects the other only if they are equal.
		if err := s.Apply(a, controlstore.SignalTerminate); err != nil || a == controlstore.GlobalOpID || strings.HasPrefix(a, controlstore.AgentOpIDPrefix) || ob.IsZero() {
			return
		}
		if terminated := s.Check(ob) != nil; terminated != (a == b) {
			t.Fatalf("terminate %q: Check(%q) terminated = %v", a, b, terminated)
		}
	})
}
