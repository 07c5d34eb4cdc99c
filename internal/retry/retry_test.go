package retry_test

import (
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/opcontrol/opcontrol/internal/retry"
)

func TestDefaultSchedule(t *testing.T) {
	b := retry.Default()
	// Each wait is within ±50 % of 250 ms, 500 ms, 1 s, 2 s, 3 s, 3 s, …
	for i, ms := range []int{250, 500, 1000, 2000, 3000, 3000, 3000} {
		nominal := time.Duration(ms) * time.Millisecond
		d := retry.Next(b, time.Hour)
		if d < nominal/2 || d > nominal*3/2 {
			t.Fatalf("wait %d = %v, want within ±50 %% of %v", i, d, nominal)
		}
	}
}

func TestNextReplacesStopOnce(t *testing.T) {
	b := &backoff.StopBackOff{}
	if d := retry.Next(b, 7*time.Second); d != 7*time.Second {
		t.Fatalf("Next on a BackOff that gave up = %v, want the slow wait", d)
	}
}

func TestSlowJitter(t *testing.T) {
	for range 1000 {
		if d := retry.Slow(retry.MisconfiguredInterval); d < retry.MisconfiguredInterval || d > retry.MisconfiguredInterval*3/2 {
			t.Fatalf("Slow = %v, want within [5 s, 7.5 s]", d)
		}
	}
}
