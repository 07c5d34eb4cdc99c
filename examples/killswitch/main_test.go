package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/interceptor"
)

// The demo leaves nothing running, whether it passes or fails.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// runDemo runs the scenario in process, fast, and returns its error and
// output. Step timeouts are generous for a loaded machine under -race; a
// passing run never waits for them.
func runDemo(t *testing.T, cfg config) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cfg.out = &out
	cfg.speed = 20
	if cfg.stepTimeout == 0 {
		cfg.stepTimeout = 30 * time.Second
	}
	err := run(context.Background(), cfg)
	return out.String(), err
}

func TestDemoPasses(t *testing.T) {
	for _, verbose := range []bool{false, true} {
		out, err := runDemo(t, config{verbose: verbose})
		if err != nil {
			t.Fatalf("verbose=%v: %v\n%s", verbose, err, out)
		}
		for _, want := range []string{
			"PASS: all 8 steps behaved as expected",
			"held ",
			"cancelled in flight    FailedPrecondition (OP_TERMINATED, scope op)",
			"cancelled in flight    FailedPrecondition (OP_TERMINATED, scope agent)",
			"cancelled in flight    FailedPrecondition (OP_TERMINATED, scope global)",
			"Progress stream ended Canceled after sending",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("verbose=%v: output lacks %q\n%s", verbose, want, out)
			}
		}
		if verbose && !strings.Contains(out, "opcontrol.held×1") {
			t.Errorf("verbose output lacks the span events\n%s", out)
		}
	}
}

// The checks can fail: without the gate, 1/A's call is not held.
func TestDemoFailsWithoutGate(t *testing.T) {
	out, err := runDemo(t, config{gate: func(*opcontrol.KillSwitch) []grpc.DialOption { return nil }})
	if err == nil || !strings.Contains(err.Error(), "step 2 ") || !strings.Contains(err.Error(), "was not held") {
		t.Fatalf("err = %v, want step 2 to fail because 1/A's call was not held\n%s", err, out)
	}
}

// Without in-flight cancellation, 1/B's running Work call is not killed:
// step 3 must fail, not wait for the call to finish and accept it.
func TestDemoFailsWithoutInFlightCancellation(t *testing.T) {
	out, err := runDemo(t, config{
		gate: func(k *opcontrol.KillSwitch) []grpc.DialOption {
			return interceptor.DialOptions(k.Store(), interceptor.WithInFlightCancellation(false))
		},
		// Long enough for every step on a loaded machine, shorter than
		// the 10 s Work call that is not killed.
		stepTimeout: 5 * time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "step 3 ") || !strings.Contains(err.Error(), "1/B Work(10s) did not return") {
		t.Fatalf("err = %v, want step 3 to fail because 1/B's Work was not cancelled\n%s", err, out)
	}
}

// The durable step needs the bus: with the gateway stream alone, the pause
// published while agent-2's link is cut is never applied, and step 6 fails.
func TestDemoFailsWithoutTheBus(t *testing.T) {
	out, err := runDemo(t, config{withoutBus: true, stepTimeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "step 6 ") || !strings.Contains(err.Error(), "agent-2 never applied it") {
		t.Fatalf("err = %v, want step 6 to fail because agent-2 never got the pause\n%s", err, out)
	}
}
