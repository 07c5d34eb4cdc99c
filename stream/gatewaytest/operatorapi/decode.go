package operatorapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"unicode/utf8"
)

// requestError is a request the handler refuses before acting on it.
type requestError struct {
	status int
	code   string
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badBody(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, code: CodeInvalidBody, msg: fmt.Sprintf(format, args...)}
}

// readObject reads r's body as one JSON object whose members are all
// strings, named exactly (case included) as one of allowed, each at most
// once, with nothing after the object. Go's encoding/json alone would accept
// names in any case, duplicates (the last wins), null for a string and
// invalid UTF-8 (replaced); a request that says something else than it
// seems to must fail, not half-apply.
func readObject(w http.ResponseWriter, r *http.Request, allowed ...string) (map[string]string, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return nil, &requestError{status: http.StatusUnsupportedMediaType, code: CodeUnsupportedMediaType,
			msg: "expected Content-Type: application/json"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, &requestError{status: http.StatusRequestEntityTooLarge, code: CodeBodyTooLarge,
				msg: fmt.Sprintf("request body over %d bytes", MaxBodyBytes)}
		}
		return nil, badBody("reading request body: %v", err)
	}
	if !utf8.Valid(body) {
		return nil, badBody("request body is not valid UTF-8")
	}
	return decodeObject(body, allowed)
}

func decodeObject(body []byte, allowed []string) (map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, badBody("empty request body, expected a JSON object")
	}
	if err != nil {
		return nil, badBody("invalid JSON: %v", err)
	}
	if tok != json.Delim('{') {
		return nil, badBody("expected a JSON object")
	}
	fields := make(map[string]string, len(allowed))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, badBody("invalid JSON: %v", err)
		}
		name, _ := tok.(string) // object keys are always strings
		if !slices.Contains(allowed, name) {
			return nil, badBody("unknown field %q (accepted: %q)", name, allowed)
		}
		if _, dup := fields[name]; dup {
			return nil, badBody("field %q given twice", name)
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, badBody("invalid JSON: %v", err)
		}
		v, ok := tok.(string)
		if !ok {
			return nil, badBody("field %q must be a string", name)
		}
		fields[name] = v
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, badBody("invalid JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, badBody("unexpected data after the JSON object")
	}
	return fields, nil
}
