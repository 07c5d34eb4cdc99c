package jetstream_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/jetstream"
)

// The gateway's worked examples.
func TestSubject(t *testing.T) {
	for _, tc := range []struct {
		org, team, agent, want string
	}{
		{"acme", "payments", "bot-7", "assembly.opcontrol.acme.bot-7"},
		{"", "payments", "bot-7", "assembly.opcontrol.payments.bot-7"},
		{"", "", "bot-7", "assembly.opcontrol.default.bot-7"},
		{"acme corp.eu", "any", "bot.7", "assembly.opcontrol.acme_20corp_2Eeu.bot_2E7"},
		{"acme", "any", "", "assembly.opcontrol.acme.unknown"},
		{"acme", "any", "did:key:z6Mk", "assembly.opcontrol.acme.did_3Akey_3Az6Mk"},
		{"é", "any", "a", "assembly.opcontrol._C3_A9.a"},
		{"a_b", "", "x", "assembly.opcontrol.a_5Fb.x"},
	} {
		got := jetstream.Subject(controlstore.Agent{OrgID: tc.org, TeamID: tc.team, AgentID: tc.agent})
		if got != tc.want {
			t.Errorf("Subject(%q, %q, %q) = %q, want %q", tc.org, tc.team, tc.agent, got, tc.want)
		}
	}
	// Four different tenant tokens.
	seen := map[string]string{}
	for _, org := range []string{"acme.corp", "acme corp", "acme_corp", "acmecorp"} {
		tok := jetstream.EscapeToken(org)
		if prev, ok := seen[tok]; ok {
			t.Errorf("%q and %q escape alike: %q", prev, org, tok)
		}
		seen[tok] = org
	}
}

// EscapeToken is injective, and its output is one valid subject token.
func TestEscapeTokenInjective(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("aZ09-_.%* >é\x00\xff")
	seen := map[string]string{}
	for range 20000 {
		b := make([]byte, r.IntN(5))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		s := string(b)
		tok := jetstream.EscapeToken(s)
		if prev, ok := seen[tok]; ok && prev != s {
			t.Fatalf("%q and %q both escape to %q", prev, s, tok)
		}
		seen[tok] = s
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				t.Fatalf("EscapeToken(%q) = %q holds %q", s, tok, c)
			}
		}
	}
}

// Encode writes what the operator API writes, byte for byte.
func TestEncode(t *testing.T) {
	for _, tc := range []struct {
		env  jetstream.Envelope
		want string
	}{
		{jetstream.AgentHalt(controlstore.Agent{OrgID: "acme", TeamID: "payments", AgentID: "bot-7"}, controlstore.SignalPause),
			`{"org_id":"acme","team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","signal":1,"global":false}`},
		{jetstream.GlobalHalt(controlstore.SignalTerminate),
			`{"org_id":"","team_id":"","agent_id":"","op_id":"*","signal":3,"global":true}`},
		{jetstream.Envelope{OrgID: "a\"b\\c\n\x01/é<", OpID: "x", Signal: -7},
			`{"org_id":"a\"b\\c\n\u0001/é<","team_id":"","agent_id":"","op_id":"x","signal":-7,"global":false}`},
	} {
		if got := string(tc.env.Encode()); got != tc.want {
			t.Errorf("Encode(%+v)\n got %s\nwant %s", tc.env, got, tc.want)
		}
		back, err := jetstream.DecodeEnvelope(tc.env.Encode())
		if err != nil || back != tc.env {
			t.Errorf("DecodeEnvelope(Encode(%+v)) = %+v, %v", tc.env, back, err)
		}
	}
}

const valid = `{"org_id":"acme","team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","signal":1,"global":false}`

func TestDecodeEnvelope(t *testing.T) {
	want := jetstream.Envelope{OrgID: "acme", TeamID: "payments", AgentID: "bot-7", OpID: "agent:bot-7", Signal: 1}
	accept := []struct {
		name, in string
		want     jetstream.Envelope
	}{
		{"compact", valid, want},
		{"spaces", " \t\r\n{ \"org_id\" : \"acme\" ,\n\"team_id\":\"payments\",\"agent_id\":\"bot-7\",\"op_id\":\"agent:bot-7\",\"signal\" : 1 ,\"global\":false } \n", want},
		{"any order", `{"global":false,"signal":1,"op_id":"agent:bot-7","agent_id":"bot-7","team_id":"payments","org_id":"acme"}`, want},
		{"unknown keys ignored", `{"extra":{"a":[1,2.5e3,null,true,"x"]},"org_id":"acme","team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","signal":1,"global":false,"zz":null}`, want},
		{"unknown key twice", `{"x":1,"x":2,"org_id":"acme","team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","signal":1,"global":false}`, want},
		{"escaped key", `{"org\u005fid":"acme","team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","signal":1,"global":false}`, want},
		{"escapes", `{"org_id":"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","team_id":"","agent_id":"","op_id":"*","signal":3,"global":true}`,
			jetstream.Envelope{OrgID: "a\"\\/\b\f\n\r\té😀", OpID: "*", Signal: 3, Global: true}},
		{"signal 0 decodes", strings.Replace(valid, `"signal":1`, `"signal":0`, 1), withSignal(want, 0)},
		{"signal negative", strings.Replace(valid, `"signal":1`, `"signal":-2147483648`, 1), withSignal(want, -2147483648)},
		{"signal max", strings.Replace(valid, `"signal":1`, `"signal":2147483647`, 1), withSignal(want, 2147483647)},
	}
	for _, tc := range accept {
		got, err := jetstream.DecodeEnvelope([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("%s: DecodeEnvelope = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	reject := []struct{ name, in string }{
		{"empty", ``},
		{"not an object", `[1]`},
		{"null", `null`},
		{"missing signal", `{"org_id":"acme","team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","global":false}`},
		{"missing global", `{"org_id":"acme","team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","signal":1}`},
		{"missing org", `{"team_id":"payments","agent_id":"bot-7","op_id":"agent:bot-7","signal":1,"global":false}`},
		{"case differs", strings.Replace(valid, `"org_id"`, `"Org_id"`, 1)},
		{"duplicate key", strings.Replace(valid, `}`, `,"signal":3}`, 1)},
		{"duplicate via escape", strings.Replace(valid, `}`, `,"sign\u0061l":3}`, 1)},
		{"string null", strings.Replace(valid, `"acme"`, `null`, 1)},
		{"string number", strings.Replace(valid, `"acme"`, `7`, 1)},
		{"signal string", strings.Replace(valid, `"signal":1`, `"signal":"1"`, 1)},
		{"signal float", strings.Replace(valid, `"signal":1`, `"signal":1.0`, 1)},
		{"signal exponent", strings.Replace(valid, `"signal":1`, `"signal":1e0`, 1)},
		{"signal minus zero", strings.Replace(valid, `"signal":1`, `"signal":-0`, 1)},
		{"signal leading zero", strings.Replace(valid, `"signal":1`, `"signal":01`, 1)},
		{"signal too big", strings.Replace(valid, `"signal":1`, `"signal":2147483648`, 1)},
		{"signal true", strings.Replace(valid, `"signal":1`, `"signal":true`, 1)},
		{"global number", strings.Replace(valid, `"global":false`, `"global":0`, 1)},
		{"global string", strings.Replace(valid, `"global":false`, `"global":"false"`, 1)},
		{"global null", strings.Replace(valid, `"global":false`, `"global":null`, 1)},
		{"trailing", valid + `x`},
		{"two objects", valid + valid},
		{"trailing comma", strings.Replace(valid, `}`, `,}`, 1)},
		{"invalid UTF-8 in a value", strings.Replace(valid, `acme`, "ac\xffme", 1)},
		{"invalid UTF-8 in an unknown key", strings.Replace(valid, `}`, ",\"k\xc3\":1}", 1)},
		{"invalid UTF-8 outside strings", valid + "\xff"},
		{"lone leading surrogate", strings.Replace(valid, `acme`, `\ud83d`, 1)},
		{"lone trailing surrogate", strings.Replace(valid, `acme`, `\ude00`, 1)},
		{"surrogate then non-surrogate", strings.Replace(valid, `acme`, `\ud83d\u0041`, 1)},
		{"control character", strings.Replace(valid, `acme`, "ac\tme", 1)},
		{"bad escape", strings.Replace(valid, `acme`, `ac\qme`, 1)},
		{"short \\u", strings.Replace(valid, `acme`, `\u00`, 1)},
		{"unterminated", `{"org_id":"acme`},
		{"bad literal in unknown", strings.Replace(valid, `}`, `,"x":nul}`, 1)},
		{"too deep", `{"x":` + strings.Repeat("[", 127) + strings.Repeat("]", 127) + `,` + valid[1:]},
	}
	for _, tc := range reject {
		got, err := jetstream.DecodeEnvelope([]byte(tc.in))
		if err == nil {
			t.Errorf("%s: DecodeEnvelope(%q) = %+v, want an error", tc.name, tc.in, got)
		}
		if got != (jetstream.Envelope{}) {
			t.Errorf("%s: DecodeEnvelope returned %+v with its error, want the zero value", tc.name, got)
		}
	}
	// One level less deep than the limit is fine.
	if _, err := jetstream.DecodeEnvelope([]byte(`{"x":` + strings.Repeat("[", 126) + strings.Repeat("]", 126) + `,` + valid[1:])); err != nil {
		t.Errorf("nesting 127 deep: %v", err)
	}
}

func withSignal(e jetstream.Envelope, sig int32) jetstream.Envelope {
	e.Signal = sig
	return e
}

// Mirrors the gateway's own integration test, then the other checks in
// their order.
func TestValidate(t *testing.T) {
	victim := controlstore.Agent{OrgID: "victim-org", TeamID: "victim-team", AgentID: "bot"}
	attackerSubject := "assembly.opcontrol.attacker.attacker"
	pause := jetstream.AgentHalt(victim, controlstore.SignalPause)
	forgedGlobal := jetstream.GlobalHalt(controlstore.SignalTerminate)
	sameSubjectOtherTeam := jetstream.AgentHalt(controlstore.Agent{OrgID: victim.OrgID, TeamID: "other", AgentID: victim.AgentID}, controlstore.SignalPause)
	badSignalAndTeam := sameSubjectOtherTeam
	badSignalAndTeam.Signal = 9
	unknown := pause
	unknown.Signal = 4
	unspecified := pause
	unspecified.Signal = 0
	globalOddOp := jetstream.GlobalHalt(controlstore.SignalPause)
	globalOddOp.OpID, globalOddOp.OrgID = "agent:whoever", "x"
	perOp := pause
	perOp.OpID = "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7"

	for _, tc := range []struct {
		name    string
		subject string
		env     jetstream.Envelope
		agent   *controlstore.Agent
		reason  jetstream.DropReason
		opID    string
	}{
		{"victim's payload on the attacker's subject", attackerSubject, pause, nil, jetstream.DropSubjectMismatch, ""},
		{"global payload on an agent subject", "assembly.opcontrol.attacker.bot", forgedGlobal, nil, jetstream.DropSubjectMismatch, ""},
		{"legitimate pause on the victim's subject", jetstream.Subject(victim), pause, nil, "", "agent:bot"},
		{"legitimate pause, the victim's own check", jetstream.Subject(victim), pause, &victim, "", "agent:bot"},
		{"agent payload on the global subject", jetstream.GlobalSubject, pause, &victim, jetstream.DropSubjectMismatch, ""},
		{"same subject, another team", jetstream.Subject(victim), sameSubjectOtherTeam, &victim, jetstream.DropTripleMismatch, ""},
		{"same subject, another team, bridge", jetstream.Subject(victim), sameSubjectOtherTeam, nil, "", "agent:bot"},
		{"triple is checked before the signal", jetstream.Subject(victim), badSignalAndTeam, &victim, jetstream.DropTripleMismatch, ""},
		{"unknown signal", jetstream.Subject(victim), unknown, &victim, jetstream.DropUnknownSignal, ""},
		{"unspecified signal", jetstream.Subject(victim), unspecified, &victim, jetstream.DropUnspecifiedSignal, ""},
		{"global applies to * whatever its op_id and triple", jetstream.GlobalSubject, globalOddOp, &victim, "", "*"},
		{"agent op_id passed verbatim", jetstream.Subject(victim), perOp, &victim, "", perOp.OpID},
	} {
		h, err := jetstream.Validate(tc.subject, tc.env.Encode(), tc.agent)
		if tc.reason == "" {
			if err != nil || h.OpID != tc.opID || h.Signal != controlstore.Signal(tc.env.Signal) || h.Envelope != tc.env {
				t.Errorf("%s: Validate = %+v, %v; want op %q", tc.name, h, err, tc.opID)
			}
			continue
		}
		var de *jetstream.DropError
		if !errors.As(err, &de) || de.Reason != tc.reason {
			t.Errorf("%s: Validate error %v, want reason %s", tc.name, err, tc.reason)
		}
	}
	_, err := jetstream.Validate(jetstream.GlobalSubject, []byte(`{"signal":1}`), nil)
	var de *jetstream.DropError
	if !errors.As(err, &de) || de.Reason != jetstream.DropMalformed || de.Unwrap() == nil {
		t.Errorf("malformed: Validate error %v, want reason malformed with the decoding error", err)
	}
}

func TestDecodeNeverEchoesPayload(t *testing.T) {
	secret := "s3cr3t-value"
	_, err := jetstream.DecodeEnvelope([]byte(`{"org_id":"` + secret + `","x":nul}`))
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("error %v: want one that does not quote the payload", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte("offset")) {
		t.Errorf("error %v: want the offset", err)
	}
}
