package main

import (
	"strings"
	"testing"
)

const cfg = `{"config":{"protocol_version":"v1.0.0","scanner_name":"govulncheck","scanner_version":"v1.9.0","db":"file:///db","go_version":"go1.26.8","scan_level":"symbol"}}`

// Findings as govulncheck emits them: the same OSV first at module level,
// then package level, then once per reachable symbol.
const (
	stdlibCalled = `
{"osv":{"id":"GO-2026-0001","summary":"net/http bug"}}
{"finding":{"osv":"GO-2026-0001","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8"}]}}
{"finding":{"osv":"GO-2026-0001","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http"}]}}
{"finding":{"osv":"GO-2026-0001","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Close","receiver":"*body"},{"module":"github.com/opcontrol/opcontrol","package":"github.com/opcontrol/opcontrol/stream","function":"Run"}]}}`
	moduleRequired = `
{"osv":{"id":"GO-2026-0002","summary":"x/net html"}}
{"finding":{"osv":"GO-2026-0002","fixed_version":"v0.62.0","trace":[{"module":"golang.org/x/net","version":"v0.60.0"}]}}`
	moduleImported = `
{"finding":{"osv":"GO-2026-0003","fixed_version":"v0.62.0","trace":[{"module":"golang.org/x/net","version":"v0.60.0","package":"golang.org/x/net/http2"}]}}`
	moduleCalled = `
{"finding":{"osv":"GO-2026-0004","fixed_version":"v1.85.1","trace":[{"module":"google.golang.org/grpc","version":"v1.85.0","package":"google.golang.org/grpc","function":"Dial"}]}}
{"finding":{"osv":"GO-2026-0004","fixed_version":"v1.85.1","trace":[{"module":"google.golang.org/grpc","version":"v1.85.0","package":"google.golang.org/grpc","function":"Dial"},{"module":"github.com/opcontrol/opcontrol","package":"github.com/opcontrol/opcontrol/stream","function":"Run"}]}}`
)

func TestClassification(t *testing.T) {
	for _, tc := range []struct {
		name     string
		input    string
		wantFail []string
	}{
		{"clean", cfg, nil},
		{"stdlib reached is reported, not failed", cfg + stdlibCalled, nil},
		{"module only required", cfg + moduleRequired, nil},
		{"module package imported, nothing called", cfg + moduleImported, nil},
		{"module symbol called fails", cfg + moduleCalled, []string{"GO-2026-0004"}},
		{"mixed", cfg + stdlibCalled + moduleRequired + moduleImported + moduleCalled, []string{"GO-2026-0004"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := parse(strings.NewReader(tc.input))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, v := range rep.failing() {
				got = append(got, v.id)
			}
			if strings.Join(got, ",") != strings.Join(tc.wantFail, ",") {
				t.Errorf("failing = %v, want %v", got, tc.wantFail)
			}
			var out strings.Builder
			rep.write(&out)
			if strings.Contains(tc.input, "GO-2026-0001") && !strings.Contains(out.String(), "GO-2026-0001") {
				t.Errorf("stdlib finding missing from report:\n%s", out.String())
			}
		})
	}
}

func TestCalledKeepsShortestTrace(t *testing.T) {
	rep, err := parse(strings.NewReader(cfg + moduleCalled))
	if err != nil {
		t.Fatal(err)
	}
	v := rep.vulns["GO-2026-0004"]
	if v.level != called || v.example[len(v.example)-1].symbol() != "google.golang.org/grpc.Dial" {
		t.Errorf("level %v, example ends at %s", v.level, v.example[len(v.example)-1].symbol())
	}
}

func TestRejectsNonReports(t *testing.T) {
	for name, in := range map[string]string{
		"empty":          "",
		"text output":    "No vulnerabilities found.\n",
		"no config":      moduleCalled,
		"future version": strings.Replace(cfg, "v1.0.0", "v2.0.0", 1),
		"empty trace":    cfg + `{"finding":{"osv":"GO-1","trace":[]}}`,
	} {
		if _, err := parse(strings.NewReader(in)); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}
