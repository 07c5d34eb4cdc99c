package testutil

import (
	"fmt"
	"testing"
	"time"
)

// Generous deadlines: the machine is small and shared, and tests run under
// -race. A condition that holds returns at once; these bound only failures.
const (
	WaitShort = 5 * time.Second
	WaitLong  = 20 * time.Second
)

// Eventually polls cond until it holds or timeout passes, then fails the
// test with the message. Polling with a deadline, never a bare sleep: the
// interval only spaces the checks.
func Eventually(tb testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	tb.Helper()
	if !Poll(timeout, cond) {
		tb.Fatalf("after %v: %s", timeout, fmt.Sprintf(format, args...))
	}
}

// Poll reports whether cond held within timeout.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for interval := 100 * time.Microsecond; ; interval = min(2*interval, 10*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}
