// Command vulnreport reads govulncheck's JSON stream (-format json) on stdin,
// prints a short report and decides the build:
//
//   - a vulnerability in a required module whose vulnerable symbol our code
//     calls fails (exit 1): we can fix it by bumping the module;
//   - a vulnerability in the standard library is reported but does not fail:
//     it is fixed by the Go toolchain of whoever builds the binary, not by us;
//   - a vulnerability in a module we require or import but never call is
//     listed for information.
//
// It parses the JSON rather than govulncheck's text so that a change of
// wording cannot turn a finding into a pass. Only the standard library is
// used, so it runs on a machine that has nothing but Go.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// The subset of govulncheck's protocol v1 (golang.org/x/vuln/internal/govulncheck)
// that the report needs. Unknown fields are ignored.
type message struct {
	Config   *config   `json:"config,omitempty"`
	OSV      *osv      `json:"osv,omitempty"`
	Finding  *finding  `json:"finding,omitempty"`
	Progress *progress `json:"progress,omitempty"`
}

type config struct {
	ProtocolVersion string `json:"protocol_version"`
	ScannerVersion  string `json:"scanner_version"`
	DB              string `json:"db"`
	GoVersion       string `json:"go_version"`
	ScanLevel       string `json:"scan_level"`
}

type osv struct {
	ID      string `json:"id"`
	Summary string `json:"summary"`
}

type progress struct {
	Message string `json:"message"`
}

type finding struct {
	OSV          string   `json:"osv"`
	FixedVersion string   `json:"fixed_version"`
	Trace        []*frame `json:"trace"`
}

// frame is one step of a finding's trace. Trace[0] is in the vulnerable
// module; for a symbol-level finding the last frame is in our code.
type frame struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Package  string `json:"package"`
	Function string `json:"function"`
	Receiver string `json:"receiver"`
}

func (f *frame) symbol() string {
	switch {
	case f.Function == "":
		return f.Package
	case f.Receiver != "":
		return fmt.Sprintf("%s.%s.%s", f.Package, strings.TrimPrefix(f.Receiver, "*"), f.Function)
	default:
		return f.Package + "." + f.Function
	}
}

// level is how far govulncheck followed a vulnerability into our code.
type level int

const (
	required level = iota // the module is in the build list
	imported              // a vulnerable package is imported
	called                // a vulnerable symbol is reachable from our code
)

func (l level) String() string { return [...]string{"required", "imported", "called"}[l] }

// vuln aggregates the findings of one OSV entry.
type vuln struct {
	id, module, version, fixed string
	level                      level
	example                    []*frame // one shortest trace at the highest level
}

func (v *vuln) stdlib() bool { return v.module == "stdlib" || v.module == "toolchain" }

type report struct {
	config  *config
	summary map[string]string
	vulns   map[string]*vuln
}

func parse(r io.Reader) (*report, error) {
	rep := &report{summary: map[string]string{}, vulns: map[string]*vuln{}}
	dec := json.NewDecoder(r)
	for {
		var m message
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("decoding govulncheck output: %w", err)
		}
		switch {
		case m.Config != nil:
			rep.config = m.Config
		case m.OSV != nil:
			rep.summary[m.OSV.ID] = m.OSV.Summary
		case m.Finding != nil:
			if err := rep.add(m.Finding); err != nil {
				return nil, err
			}
		}
	}
	if rep.config == nil {
		// An empty or truncated stream must not read as "no findings".
		return nil, errors.New("no config message: not govulncheck -format json output")
	}
	if rep.config.ProtocolVersion != "" && !strings.HasPrefix(rep.config.ProtocolVersion, "v1.") {
		return nil, fmt.Errorf("unsupported govulncheck protocol %s", rep.config.ProtocolVersion)
	}
	return rep, nil
}

func (rep *report) add(f *finding) error {
	if len(f.Trace) == 0 {
		return fmt.Errorf("finding %s has no trace", f.OSV)
	}
	top := f.Trace[0]
	lvl := required
	switch {
	case top.Function != "":
		lvl = called
	case top.Package != "":
		lvl = imported
	}
	v := rep.vulns[f.OSV]
	if v == nil {
		v = &vuln{id: f.OSV, module: top.Module, version: top.Version, fixed: f.FixedVersion, level: lvl, example: f.Trace}
		rep.vulns[f.OSV] = v
		return nil
	}
	if lvl > v.level || (lvl == v.level && len(f.Trace) < len(v.example)) {
		v.level, v.example = lvl, f.Trace
	}
	return nil
}

// failing reports whether the build must fail: a required module's
// vulnerable symbol is reachable.
func (rep *report) failing() []*vuln {
	var out []*vuln
	for _, v := range rep.sorted() {
		if !v.stdlib() && v.level == called {
			out = append(out, v)
		}
	}
	return out
}

func (rep *report) sorted() []*vuln {
	out := make([]*vuln, 0, len(rep.vulns))
	for _, v := range rep.vulns {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].level != out[j].level {
			return out[i].level > out[j].level
		}
		return out[i].id < out[j].id
	})
	return out
}

func (rep *report) write(w io.Writer) {
	c := rep.config
	fmt.Fprintf(w, "govulncheck %s, %s, db %s, scan level %s\n", c.ScannerVersion, c.GoVersion, c.DB, c.ScanLevel)
	groups := []struct {
		title string
		keep  func(*vuln) bool
	}{
		{"FAIL: required modules, vulnerable code reached", func(v *vuln) bool { return !v.stdlib() && v.level == called }},
		{"report only: standard library, vulnerable code reached (fixed by upgrading Go)", func(v *vuln) bool { return v.stdlib() && v.level == called }},
		{"info: imported or required but not reached", func(v *vuln) bool { return v.level < called }},
	}
	for _, g := range groups {
		var vs []*vuln
		for _, v := range rep.sorted() {
			if g.keep(v) {
				vs = append(vs, v)
			}
		}
		fmt.Fprintf(w, "\n%s: %d\n", g.title, len(vs))
		for _, v := range vs {
			fixed := v.fixed
			if fixed == "" {
				fixed = "no fix"
			}
			fmt.Fprintf(w, "  %s  %s@%s (fixed in %s, %s)  %s\n", v.id, v.module, v.version, fixed, v.level, rep.summary[v.id])
			if v.level == called {
				fmt.Fprintf(w, "      %s -> ... -> %s\n", v.example[len(v.example)-1].symbol(), v.example[0].symbol())
			}
		}
	}
}

func main() {
	rep, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulnreport:", err)
		os.Exit(2)
	}
	rep.write(os.Stdout)
	if bad := rep.failing(); len(bad) > 0 {
		fmt.Fprintf(os.Stdout, "\nvulnreport: %d vulnerable module(s) reached by our code; bump them in go.mod\n", len(bad))
		os.Exit(1)
	}
	fmt.Fprintln(os.Stdout, "\nvulnreport: no reachable vulnerabilities in required modules")
}
