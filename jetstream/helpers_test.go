package jetstream_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
)

var (
	// agent's org and id need escaping: its subject is
	// assembly.opcontrol.acme_20corp_2Eeu.did_3Akey_3Az6MkVictim.
	agent = controlstore.Agent{OrgID: "acme corp.eu", TeamID: "payments", AgentID: "did:key:z6MkVictim"}
	other = controlstore.Agent{OrgID: "acme corp.eu", TeamID: "payments", AgentID: "did:key:z6MkOther"}
)

// Generous deadlines: the machine is small and shared, and tests run under
// -race.
const (
	waitLong  = 30 * time.Second
	waitShort = 5 * time.Second
)

func startServer(t testing.TB, opts ...jetstreamtest.ServerOption) *jetstreamtest.Server {
	t.Helper()
	srv, err := jetstreamtest.StartServer(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// connect connects as an agent would, with Connect's settings.
func connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return connectWith(t, jetstream.Config{URL: url}, opts...)
}

func connectWith(t testing.TB, cfg jetstream.Config, opts ...nats.Option) *nats.Conn {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	nc, err := jetstream.Connect(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// adminConn connects to srv with its admin options, closed at cleanup.
func adminConn(t testing.TB, srv *jetstreamtest.Server) *nats.Conn {
	t.Helper()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// testPub is a publisher and its connection.
type testPub struct {
	*jetstreamtest.Publisher
	nc *nats.Conn
}

func publisher(t testing.TB, srv *jetstreamtest.Server) *testPub {
	t.Helper()
	nc := adminConn(t, srv)
	p, err := jetstreamtest.NewPublisher(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &testPub{p, nc}
}

// restart restarts srv and waits until each of ncs has reconnected: a
// publish on a connection that has not yet noticed the restart is lost,
// as with a real server (the operator API then answers 503).
func restart(t testing.TB, srv *jetstreamtest.Server, ncs ...*nats.Conn) {
	t.Helper()
	before := make([]uint64, len(ncs))
	for i, nc := range ncs {
		before[i] = nc.Stats().Reconnects
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	for i, nc := range ncs {
		testutil.Eventually(t, waitLong, func() bool { return nc.Stats().Reconnects > before[i] && nc.IsConnected() }, "connection %d reconnected", i)
	}
}

// fastBackOff: tests about reconnecting are not about the default schedule.
func fastBackOff() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }

// testOptions make a subscriber react quickly, and log to the test.
func testOptions(t testing.TB) []jetstream.Option {
	return []jetstream.Option{
		jetstream.WithBackoff(fastBackOff),
		jetstream.WithHeartbeat(time.Second),
		jetstream.WithAPITimeout(2 * time.Second),
		jetstream.WithSlowWait(50 * time.Millisecond),
		jetstream.WithInactiveThreshold(5 * time.Second),
		jetstream.WithLogger(slog.New(slog.DiscardHandler)),
	}
}

func newStore(t testing.TB) *controlstore.Store {
	t.Helper()
	return testutil.NewStore(t, agent, controlstore.WithLogger(slog.New(slog.DiscardHandler)))
}

func newSubscriber(t testing.TB, nc *nats.Conn, store *controlstore.Store, opts ...jetstream.Option) *jetstream.Subscriber {
	t.Helper()
	sub, err := jetstream.NewSubscriber(nc, store, append(testOptions(t), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

type running struct {
	cancel context.CancelFunc
	done   chan error
}

// start runs sub.Run until the test ends (or stop is called).
func start(t testing.TB, sub *jetstream.Subscriber) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- sub.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t testing.TB) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(waitShort):
		t.Fatal("Run did not return after its context ended")
	}
}

func waitReady(t testing.TB, sub *jetstream.Subscriber) {
	t.Helper()
	select {
	case <-sub.Ready():
	case <-time.After(waitLong):
		t.Fatalf("subscriber not ready; status %+v", sub.Status())
	}
}

// waitState waits until the subscriber is in state st.
func waitState(t testing.TB, sub *jetstream.Subscriber, st jetstream.State) {
	t.Helper()
	var last jetstream.Status
	testutil.Eventually(t, waitLong, func() bool { last = sub.Status(); return last.State == st }, "state %v; status %+v", st, &last)
}

// applied records every halt the subscriber hands to the store, in order.
type applied struct {
	mu    sync.Mutex
	halts []appliedHalt
}

type appliedHalt struct {
	subject string
	seq     uint64
	opID    string
	sig     controlstore.Signal
}

func recordApplied(sub *jetstream.Subscriber) *applied {
	a := &applied{}
	sub.SetOnApply(func(subject string, seq uint64, h jetstream.Halt) {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.halts = append(a.halts, appliedHalt{subject, seq, h.OpID, h.Signal})
	})
	return a
}

func (a *applied) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.halts)
}

func (a *applied) snapshot() []appliedHalt {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]appliedHalt(nil), a.halts...)
}

// seqs returns the stream sequences applied on subject, in order.
func (a *applied) seqs(subject string) []uint64 {
	var out []uint64
	for _, h := range a.snapshot() {
		if h.subject == subject {
			out = append(out, h.seq)
		}
	}
	return out
}

func ctxTimeout(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	t.Cleanup(cancel)
	return ctx
}

// beforeRunMargin is how far a halt meant to come "before Run" is put
// before it on the server's clock. Run's start is placed on that clock at
// most one stream-info round trip early (by design: never late, so a halt
// published just before Run may be applied); the tests that a halt from
// before Run is not applied wait until the server's clock is this far past
// the halt. They fail falsely only if one stream-info round trip takes
// longer than this.
const beforeRunMargin = 250 * time.Millisecond

// waitServerClockPast waits until the server's clock is beforeRunMargin
// past the time it stored message seq.
func waitServerClockPast(t testing.TB, pub *testPub, seq uint64) {
	t.Helper()
	ctx := ctxTimeout(t)
	js, err := jsapi.New(pub.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, jetstream.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitLong, func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.TimeStamp.After(msg.Time.Add(beforeRunMargin))
	}, "the server's clock past message %d by %v", seq, beforeRunMargin)
}
