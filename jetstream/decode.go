package jetstream

import (
	"fmt"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// maxDepth is serde_json's recursion limit: a value nested deeper than this
// (the envelope object itself counts) fails to decode, as in the gateway.
const maxDepth = 127

// The six keys, in the order the operator API writes them.
var envelopeKeys = [...]string{"org_id", "team_id", "agent_id", "op_id", "signal", "global"}

// DecodeEnvelope decodes a payload exactly as the gateway's decoder does,
// which encoding/json does not:
//
//   - the payload is one JSON object, with only whitespace around it;
//   - all six keys are required, matched exactly (case-sensitive, after
//     unescaping): org_id, team_id, agent_id, op_id (strings), signal (an
//     integer in int32 range: no fraction, no exponent), global (true or
//     false); null is not a string, 1.0 is not an integer;
//   - a key given twice is an error; unknown keys are ignored, whatever
//     valid JSON value they hold (nested at most 127 deep);
//   - the payload must be valid UTF-8 throughout, strings must not hold raw
//     control characters, and \u escapes must not leave a lone surrogate.
//
// The error names the offset and what is wrong; the payload is not quoted
// in it.
func DecodeEnvelope(data []byte) (Envelope, error) {
	if !utf8.Valid(data) {
		return Envelope{}, fmt.Errorf("%w: invalid UTF-8", errDecode)
	}
	d := decoder{data: data}
	env, err := d.envelope()
	if err != nil {
		return Envelope{}, err
	}
	return env, nil
}

type decoder struct {
	data []byte
	pos  int
}

func (d *decoder) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: offset %d: %s", errDecode, d.pos, fmt.Sprintf(format, args...))
}

func (d *decoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (d *decoder) peek() byte {
	d.skipSpace()
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

func (d *decoder) expect(c byte) error {
	if d.peek() != c {
		if d.pos >= len(d.data) {
			return d.errorf("unexpected end, want %q", c)
		}
		return d.errorf("want %q", c)
	}
	d.pos++
	return nil
}

func (d *decoder) envelope() (Envelope, error) {
	var env Envelope
	var seen uint8 // bit i: envelopeKeys[i] was read
	if err := d.expect('{'); err != nil {
		return env, err
	}
	if d.peek() == '}' {
		d.pos++
	} else {
		for {
			if d.peek() != '"' {
				return env, d.errorf("want a key")
			}
			key, err := d.str()
			if err != nil {
				return env, err
			}
			if err := d.expect(':'); err != nil {
				return env, err
			}
			k := -1
			for i, name := range envelopeKeys {
				if key == name {
					k = i
					break
				}
			}
			if k >= 0 && seen&(1<<k) != 0 {
				return env, d.errorf("duplicate key %q", key)
			}
			switch k {
			case 0, 1, 2, 3:
				if d.peek() != '"' {
					return env, d.errorf("%s: want a string", key)
				}
				s, err := d.str()
				if err != nil {
					return env, err
				}
				switch k {
				case 0:
					env.OrgID = s
				case 1:
					env.TeamID = s
				case 2:
					env.AgentID = s
				case 3:
					env.OpID = s
				}
			case 4:
				n, err := d.int32()
				if err != nil {
					return env, err
				}
				env.Signal = n
			case 5:
				b, err := d.boolean()
				if err != nil {
					return env, err
				}
				env.Global = b
			default:
				if err := d.skipValue(1); err != nil {
					return env, err
				}
			}
			if k >= 0 {
				seen |= 1 << k
			}
			if d.peek() == ',' {
				d.pos++
				continue
			}
			if err := d.expect('}'); err != nil {
				return env, err
			}
			break
		}
	}
	d.skipSpace()
	if d.pos != len(d.data) {
		return env, d.errorf("trailing characters")
	}
	for i, name := range envelopeKeys {
		if seen&(1<<i) == 0 {
			return env, fmt.Errorf("%w: missing key %q", errDecode, name)
		}
	}
	return env, nil
}

// str reads a JSON string at d.pos (which holds '"').
func (d *decoder) str() (string, error) {
	d.pos++ // opening quote
	start := d.pos
	// Fast path: no escapes.
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		if c == '"' {
			s := string(d.data[start:d.pos])
			d.pos++
			return s, nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", d.errorf("control character in a string")
		}
		d.pos++
	}
	buf := append([]byte(nil), d.data[start:d.pos]...)
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			d.pos++
			return string(buf), nil
		case c < 0x20:
			return "", d.errorf("control character in a string")
		case c != '\\':
			buf = append(buf, c)
			d.pos++
			continue
		}
		d.pos++ // backslash
		if d.pos >= len(d.data) {
			break
		}
		e := d.data[d.pos]
		d.pos++
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, err := d.hex4()
			if err != nil {
				return "", err
			}
			if utf16.IsSurrogate(r) {
				if r >= 0xdc00 {
					return "", d.errorf("lone trailing surrogate in a \\u escape")
				}
				if d.pos+1 >= len(d.data) || d.data[d.pos] != '\\' || d.data[d.pos+1] != 'u' {
					return "", d.errorf("lone leading surrogate in a \\u escape")
				}
				d.pos += 2
				r2, err := d.hex4()
				if err != nil {
					return "", err
				}
				if r2 < 0xdc00 || r2 > 0xdfff {
					return "", d.errorf("lone leading surrogate in a \\u escape")
				}
				r = utf16.DecodeRune(r, r2)
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return "", d.errorf("invalid escape")
		}
	}
	return "", d.errorf("unterminated string")
}

func (d *decoder) hex4() (rune, error) {
	if d.pos+4 > len(d.data) {
		d.pos = len(d.data)
		return 0, d.errorf("unterminated \\u escape")
	}
	var r rune
	for _, c := range d.data[d.pos : d.pos+4] {
		r <<= 4
		switch {
		case '0' <= c && c <= '9':
			r |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			r |= rune(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, d.errorf("invalid \\u escape")
		}
	}
	d.pos += 4
	return r, nil
}

// number scans a JSON number and reports whether it is an integer (no
// fraction, no exponent).
func (d *decoder) number() (text []byte, integer bool, err error) {
	d.skipSpace()
	start := d.pos
	if d.pos < len(d.data) && d.data[d.pos] == '-' {
		d.pos++
	}
	switch {
	case d.pos < len(d.data) && d.data[d.pos] == '0':
		d.pos++
	case d.pos < len(d.data) && '1' <= d.data[d.pos] && d.data[d.pos] <= '9':
		for d.pos < len(d.data) && '0' <= d.data[d.pos] && d.data[d.pos] <= '9' {
			d.pos++
		}
	default:
		return nil, false, d.errorf("want a number")
	}
	integer = true
	if d.pos < len(d.data) && d.data[d.pos] == '.' {
		integer = false
		d.pos++
		if d.digits() == 0 {
			return nil, false, d.errorf("want a digit after '.'")
		}
	}
	if d.pos < len(d.data) && (d.data[d.pos] == 'e' || d.data[d.pos] == 'E') {
		integer = false
		d.pos++
		if d.pos < len(d.data) && (d.data[d.pos] == '+' || d.data[d.pos] == '-') {
			d.pos++
		}
		if d.digits() == 0 {
			return nil, false, d.errorf("want a digit in the exponent")
		}
	}
	return d.data[start:d.pos], integer, nil
}

func (d *decoder) digits() int {
	n := 0
	for d.pos < len(d.data) && '0' <= d.data[d.pos] && d.data[d.pos] <= '9' {
		d.pos++
		n++
	}
	return n
}

func (d *decoder) int32() (int32, error) {
	text, integer, err := d.number()
	if err != nil {
		return 0, err
	}
	// serde_json reads "-0" as the float -0.0, which an integer field
	// refuses.
	if !integer || string(text) == "-0" {
		return 0, d.errorf("signal: want an integer")
	}
	n, err := strconv.ParseInt(string(text), 10, 64)
	if err != nil || n < math.MinInt32 || n > math.MaxInt32 {
		return 0, d.errorf("signal: out of range")
	}
	return int32(n), nil
}

func (d *decoder) boolean() (bool, error) {
	switch d.peek() {
	case 't':
		if err := d.literal("true"); err != nil {
			return false, err
		}
		return true, nil
	case 'f':
		if err := d.literal("false"); err != nil {
			return false, err
		}
		return false, nil
	}
	return false, d.errorf("global: want true or false")
}

func (d *decoder) literal(lit string) error {
	if len(d.data)-d.pos < len(lit) || string(d.data[d.pos:d.pos+len(lit)]) != lit {
		return d.errorf("invalid literal")
	}
	d.pos += len(lit)
	return nil
}

// skipValue checks and skips one JSON value of an unknown key; depth is the
// nesting of the object holding it.
func (d *decoder) skipValue(depth int) error {
	switch c := d.peek(); c {
	case '"':
		_, err := d.str()
		return err
	case 't':
		return d.literal("true")
	case 'f':
		return d.literal("false")
	case 'n':
		return d.literal("null")
	case '{', '[':
		if depth+1 > maxDepth {
			return d.errorf("nested too deep")
		}
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		d.pos++
		if d.peek() == end {
			d.pos++
			return nil
		}
		for {
			if c == '{' {
				if d.peek() != '"' {
					return d.errorf("want a key")
				}
				if _, err := d.str(); err != nil {
					return err
				}
				if err := d.expect(':'); err != nil {
					return err
				}
			}
			if err := d.skipValue(depth + 1); err != nil {
				return err
			}
			if d.peek() == ',' {
				d.pos++
				continue
			}
			return d.expect(end)
		}
	default:
		_, _, err := d.number()
		return err
	}
}
