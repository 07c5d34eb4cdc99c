package controlstore_test

import (
	"errors"
	"testing"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

func failingClosed(s *controlstore.Store) bool { return s.SyncStatus().FailClosed }

// A second source of a kind that is down must not make a store fail closed
// while another source of that kind is live.
func TestFailClosedIsPerKind(t *testing.T) {
	s := newStore(t)
	a := s.AddSource("a", controlstore.SourceGateway, controlstore.FailClosedAfter(0))
	b := s.AddSource("b", controlstore.SourceGateway, controlstore.FailClosedAfter(0))
	a.Start()
	if !failingClosed(s) {
		t.Fatal("a running gateway source that is not live, limit 0: not failing closed")
	}
	a.SetLive(true)
	if failingClosed(s) {
		t.Fatal("still failing closed with a live gateway source")
	}
	b.Start() // down, and stays down
	if failingClosed(s) {
		t.Fatal("a second, down gateway source made a store with a live one fail closed")
	}
	a.SetLive(false)
	if !failingClosed(s) {
		t.Fatal("no gateway source live, limit 0: not failing closed")
	}
	o, _ := op(1)
	if err := s.Check(o); !errors.Is(err, controlstore.ErrUnavailable) {
		t.Fatalf("Check = %v, want ErrUnavailable", err)
	}
	b.SetLive(true)
	if failingClosed(s) {
		t.Fatal("b live: still failing closed")
	}
}

// A bus's limit counts the bus alone: the gateway being live does not
// stand in for it, because only the bus is durable.
func TestBusFailClosedLimitIgnoresTheGateway(t *testing.T) {
	s := newStore(t)
	gw := s.AddSource("stream", controlstore.SourceGateway)
	bus := s.AddSource("jetstream", controlstore.SourceBus, controlstore.FailClosedAfter(-time.Second)) // negative: 0
	gw.Start()
	gw.SetLive(true)
	bus.Start()
	if !failingClosed(s) {
		t.Fatal("bus down with a limit of 0 (given as negative): not failing closed")
	}
	bus.SetLive(true)
	if failingClosed(s) {
		t.Fatal("bus live: still failing closed")
	}
}

func TestFailClosedAfterCountsFromTheKindGoingDown(t *testing.T) {
	s := newStore(t)
	slow := s.AddSource("slow", controlstore.SourceGateway, controlstore.FailClosedAfter(time.Hour))
	slow.Start()
	if failingClosed(s) {
		t.Fatal("failing closed an hour early")
	}
	fast := s.AddSource("fast", controlstore.SourceGateway, controlstore.FailClosedAfter(10*time.Millisecond))
	fast.Start() // the smallest limit of the kind's running sources counts
	deadline := time.Now().Add(10 * time.Second)
	for !failingClosed(s) {
		if time.Now().After(deadline) {
			t.Fatal("not failing closed 10 s after a 10 ms limit")
		}
		time.Sleep(time.Millisecond) // polling with a deadline, not synchronisation
	}
	if st := s.SyncStatus(); st.Live {
		t.Fatalf("SyncStatus = %+v, want not live", st)
	}
}

// A stopped source leaves a store that fails closed failing closed: a feed
// that stopped does not make a blind store safe.
func TestStopKeepsFailingClosed(t *testing.T) {
	s := newStore(t)
	src := s.AddSource("stream", controlstore.SourceGateway, controlstore.FailClosedAfter(0))
	src.Start()
	src.Stop()
	if !failingClosed(s) {
		t.Fatal("Stop lifted failing closed")
	}
	again := s.AddSource("stream", controlstore.SourceGateway)
	again.Start()
	again.SetLive(true)
	if failingClosed(s) {
		t.Fatal("a live source of the kind did not end failing closed")
	}
}

func TestHoldFailClosed(t *testing.T) {
	s := newStore(t)
	bus := s.AddSource("jetstream", controlstore.SourceBus)
	bus.Start()
	bus.SetLive(true)
	bus.HoldFailClosed("retention expired while away: halts may be lost")
	st := s.SyncStatus()
	if !st.FailClosed || len(st.Sources) != 1 || st.Sources[0].FailClosedHold == "" {
		t.Fatalf("SyncStatus = %+v, want failing closed, held by jetstream", st)
	}
	mustApply(t, s, "*", controlstore.SignalTerminate)
	if err := s.Check(controlstore.Op{}); !errors.Is(err, controlstore.ErrTerminated) {
		t.Fatalf("Check = %v, want a terminate to win over a hold", err)
	}
	bus.ReleaseFailClosed()
	if failingClosed(s) {
		t.Fatal("still failing closed after ReleaseFailClosed")
	}
}

func TestSyncStatusLiveNeedsEveryRunningKind(t *testing.T) {
	now := time.Unix(100, 0)
	s := newStore(t, controlstore.WithClock(func() time.Time { return now }))
	if s.SyncStatus().Live {
		t.Fatal("a store with no source is live")
	}
	gw := s.AddSource("stream", controlstore.SourceGateway)
	bus := s.AddSource("jetstream", controlstore.SourceBus)
	gw.Start()
	bus.Start()
	gw.SetLive(true)
	if s.SyncStatus().Live {
		t.Fatal("live with the bus running but not live")
	}
	now = now.Add(time.Second)
	bus.SetLive(true)
	st := s.SyncStatus()
	if !st.Live || !st.Since.Equal(now) {
		t.Fatalf("SyncStatus = %+v, want live since %v", st, now)
	}
	if st.Sources[0].Name != "stream" || !st.Sources[1].Live || st.Sources[1].Kind != controlstore.SourceBus {
		t.Fatalf("Sources = %+v", st.Sources)
	}
	bus.Stop() // a stopped kind is not watched
	if !s.SyncStatus().Live {
		t.Fatal("not live with the only running kind live")
	}
}

// A source's unknown kind is taken as the gateway's, and nil options are
// ignored.
func TestAddSourceTolerates(t *testing.T) {
	s := newStore(t)
	src := s.AddSource("x", controlstore.SourceKind(9), nil, controlstore.FailClosedAfter(0))
	if src.Kind() != controlstore.SourceGateway {
		t.Fatalf("Kind = %v, want gateway", src.Kind())
	}
	src.Start()
	if !failingClosed(s) {
		t.Fatal("the option after the nil was not applied")
	}
}
