package ratelog_test

import (
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/internal/ratelog"
)

func TestAllowOncePerIntervalAndCount(t *testing.T) {
	var l ratelog.Limiter
	t0 := time.Unix(1000, 0)
	if ok, n := l.Allow("malformed", t0); !ok || n != 0 {
		t.Fatalf("first line: %v, %d", ok, n)
	}
	for i := range 5 {
		if ok, _ := l.Allow("malformed", t0.Add(time.Duration(i+1)*time.Second)); ok {
			t.Fatalf("line %d within the interval let through", i)
		}
	}
	if ok, _ := l.Allow("foreign_agent", t0.Add(time.Second)); !ok {
		t.Fatal("another kind was held back by the first")
	}
	if ok, n := l.Allow("malformed", t0.Add(ratelog.Interval)); !ok || n != 5 {
		t.Fatalf("after the interval: %v, %d suppressed; want true, 5", ok, n)
	}
}
