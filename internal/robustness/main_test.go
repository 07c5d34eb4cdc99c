package robustness

import (
	"flag"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// long selects the long mode (scripts/soak.sh): the soak runs, and the
// scenarios use their long sizes. OPCONTROL_ROBUSTNESS_LONG=1 does the same.
var long = flag.Bool("robustness.long", false, "run the long (soak) mode of the robustness suite")

func longMode() bool { return *long || os.Getenv("OPCONTROL_ROBUSTNESS_LONG") == "1" }

// skipIfShort skips a test that takes seconds of wall time under -short:
// `go test -short ./...` is the quick pass; the full run and CI run them.
func skipIfShort(t *testing.T, why string) {
	t.Helper()
	if testing.Short() && !longMode() {
		t.Skip("-short: " + why)
	}
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
