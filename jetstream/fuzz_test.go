package jetstream_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/opcontrol/opcontrol/jetstream"
)

// FuzzDecodeEnvelope checks the strict decoder against the rules, with
// encoding/json (lenient on exactly the points the rules are about) and a
// few independent checks as the oracle:
//
//   - accepted ⇒ encoding/json accepts it too, the six keys occur exactly
//     once each (compared after unescaping), with the types the rules say
//     and the same values; the payload is valid UTF-8, and re-encoding
//     decodes to the same envelope;
//   - rejected ⇒ some rule is broken: encoding/json rejects it, or it is
//     not valid UTF-8, or a key is missing, twice, or of the wrong type,
//     or signal is not an int32 integer, or a \u escape leaves a lone
//     surrogate, or it nests deeper than 127.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		valid,
		`{"org_id":"","team_id":"","agent_id":"","op_id":"*","signal":3,"global":true}`,
		`{"x":[{"y":null}],"org_id":"a\u00e9","team_id":"t","agent_id":"a","op_id":"o","signal":-0,"global":true}`,
		strings.Replace(valid, `}`, `,"signal":3}`, 1),
		strings.Replace(valid, `"acme"`, `"\ud800"`, 1),
		strings.Replace(valid, `"signal":1`, `"signal":1.5`, 1),
		strings.Replace(valid, `"org_id"`, `"ORG_ID"`, 1),
		"{\"org_id\":\"\xff\"}",
		`[]`, ``, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := jetstream.DecodeEnvelope(data)
		why := brokenRule(data)
		if err == nil {
			if why != "" {
				t.Fatalf("accepted %q, but %s", data, why)
			}
			if got := lenient(data); got != env {
				t.Fatalf("decoded %q as %+v, encoding/json reads %+v", data, env, got)
			}
			back, err := jetstream.DecodeEnvelope(env.Encode())
			if err != nil || back != env {
				t.Fatalf("re-encoding %+v decodes to %+v, %v", env, back, err)
			}
			return
		}
		if why == "" {
			t.Fatalf("rejected %q (%v), but it breaks no rule", data, err)
		}
	})
}

var loneSurrogate = regexp.MustCompile(`\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|\\u[dD][c-fC-F][0-9a-fA-F]{2}`)

// brokenRule says which rule data breaks, or "".
func brokenRule(data []byte) string {
	if !utf8.Valid(data) {
		return "it is not valid UTF-8"
	}
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&top); err != nil || top == nil {
		return "encoding/json rejects it"
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "encoding/json finds trailing data"
	}
	if depth(data) > 127 {
		return "it nests deeper than 127"
	}
	// Lone surrogates: a high one not followed by a low one, or a low one
	// alone. The regexp matches pairs whole, so a match of length 6 is a
	// lone one. Backslashes escaping a backslash are taken out first.
	for _, m := range loneSurrogate.FindAll(bytes.ReplaceAll(data, []byte(`\\`), nil), -1) {
		if len(m) == 6 {
			return "a \\u escape leaves a lone surrogate"
		}
	}
	counts := topLevelKeys(data)
	for _, k := range []string{"org_id", "team_id", "agent_id", "op_id", "signal", "global"} {
		switch counts[k] {
		case 0:
			return "key " + k + " is missing"
		case 1:
		default:
			return "key " + k + " occurs twice"
		}
		raw := top[k]
		switch k {
		case "signal":
			s := string(raw)
			if strings.ContainsAny(s, ".eE") || s == "-0" {
				return "signal is not an integer"
			}
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < math.MinInt32 || n > math.MaxInt32 {
				return "signal is out of range"
			}
		case "global":
			if s := string(raw); s != "true" && s != "false" {
				return "global is not a boolean"
			}
		default:
			if len(raw) == 0 || raw[0] != '"' {
				return k + " is not a string"
			}
		}
	}
	return ""
}

// lenient decodes data with encoding/json, key by exact key.
func lenient(data []byte) jetstream.Envelope {
	var top map[string]json.RawMessage
	_ = json.Unmarshal(data, &top)
	var e jetstream.Envelope
	_ = json.Unmarshal(top["org_id"], &e.OrgID)
	_ = json.Unmarshal(top["team_id"], &e.TeamID)
	_ = json.Unmarshal(top["agent_id"], &e.AgentID)
	_ = json.Unmarshal(top["op_id"], &e.OpID)
	_ = json.Unmarshal(top["signal"], &e.Signal)
	_ = json.Unmarshal(top["global"], &e.Global)
	return e
}

// topLevelKeys counts the keys of the top-level object, unescaped.
func topLevelKeys(data []byte) map[string]int {
	dec := json.NewDecoder(bytes.NewReader(data))
	counts := map[string]int{}
	if _, err := dec.Token(); err != nil { // {
		return counts
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return counts
		}
		if k, ok := tok.(string); ok {
			counts[k]++
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return counts
		}
	}
	return counts
}

// depth returns the deepest nesting of objects and arrays.
func depth(data []byte) int {
	d, deepest, inString, escaped := 0, 0, false, false
	for _, c := range data {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			d++
			deepest = max(deepest, d)
		case c == '}' || c == ']':
			d--
		}
	}
	return deepest
}
