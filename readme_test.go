package opcontrol_test

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeSnippetIsTheExample keeps README.md's integration snippet equal
// to the lines of Example between the README:begin and README:end markers,
// so that the README shows code that compiles and runs.
func TestReadmeSnippetIsTheExample(t *testing.T) {
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := between(t, string(src), "\t// README:begin\n", "\t// README:end\n")
	want = strings.ReplaceAll("\n"+want, "\n\t", "\n")[1:]
	block := between(t, string(readme), "<!-- snippet: example_test.go Example -->\n```go\n", "```\n")
	if block != want {
		t.Fatalf("README.md's snippet differs from the Example in example_test.go.\nREADME:\n%s\nExample:\n%s", block, want)
	}
}

func between(t *testing.T, s, begin, end string) string {
	t.Helper()
	i := strings.Index(s, begin)
	if i < 0 {
		t.Fatalf("marker %q not found", begin)
	}
	s = s[i+len(begin):]
	j := strings.Index(s, end)
	if j < 0 {
		t.Fatalf("marker %q not found", end)
	}
	return s[:j]
}
