package jetstream_test

import (
	"slices"
	"strings"
	"testing"

	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/faultproxy"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
)

// deadAddr refuses connections: the proxy's target while the agent's link
// is down.
const deadAddr = "127.0.0.1:1"

// link is the agent's connection to the bus, through a proxy that can cut
// it.
type link struct {
	p      *faultproxy.Proxy
	target string
}

func newLink(t testing.TB, srv *jetstreamtest.Server) *link {
	t.Helper()
	target := srv.URL()[len("nats://"):]
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return &link{p: p, target: target}
}

func (l *link) url() string { return "nats://" + l.p.Addr() }

// cut drops the connection and refuses new ones.
func (l *link) cut() {
	l.p.SetTarget(deadAddr)
	l.p.Reset()
}

func (l *link) restore() { l.p.SetTarget(l.target) }

// published records what the test published, per subject.
type published map[string][]uint64

func (p published) add(t testing.TB, subject string, seq uint64, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	p[subject] = append(p[subject], seq)
}

// checkExactlyOnce checks that every published sequence was applied once,
// in publish order per subject, and nothing else.
func checkExactlyOnce(t testing.TB, rec *applied, pub published) {
	t.Helper()
	for subject, want := range pub {
		if got := rec.seqs(subject); !slices.Equal(got, want) {
			t.Errorf("%s: applied sequences %v, published %v", subject, got, want)
		}
	}
	n := 0
	for _, w := range pub {
		n += len(w)
	}
	if got := rec.len(); got != n {
		t.Errorf("applied %d halts, published %d", got, n)
	}
}

func waitApplied(t testing.TB, rec *applied, pub published) {
	t.Helper()
	n := 0
	for _, w := range pub {
		n += len(w)
	}
	testutil.Eventually(t, waitLong, func() bool { return rec.len() >= n }, "%d halts applied", n)
}

// publishBoth publishes n agent halts and n global halts, alternating
// pause and resume so that each one changes something.
func publishBoth(t testing.TB, pub *testPub, got published, n int) {
	t.Helper()
	ctx := ctxTimeout(t)
	agentSubj := jetstream.Subject(agent)
	for i := range n {
		sig := controlstore.SignalPause
		if i%2 == 1 {
			sig = controlstore.SignalResume
		}
		seq, err := pub.HaltAgent(ctx, agent, sig)
		got.add(t, agentSubj, seq, err)
		seq, err = pub.HaltAll(ctx, sig)
		got.add(t, jetstream.GlobalSubject, seq, err)
		// Another agent's halts interleave on the stream, and are not ours.
		_, err = pub.HaltAgent(ctx, other, controlstore.SignalTerminate)
		if err != nil {
			t.Fatal(err)
		}
	}
}

// After connection cuts, the subscriber resumes from its positions:
// nothing published while it was away is skipped, nothing is applied
// twice, on both subjects.
func TestResumeAfterConnectionCut(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	l := newLink(t, srv)
	store := newStore(t)
	sub := newSubscriber(t, connect(t, l.url()), store)
	rec := recordApplied(sub)
	start(t, sub)
	waitReady(t, sub)
	got := published{}
	publishBoth(t, pub, got, 2)
	waitApplied(t, rec, got)
	for round := range 3 {
		l.cut()
		testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "round %d: not live after the cut", round)
		publishBoth(t, pub, got, 3)
		l.restore()
		waitState(t, sub, jetstream.Live)
		waitApplied(t, rec, got)
	}
	publishBoth(t, pub, got, 1)
	waitApplied(t, rec, got)
	checkExactlyOnce(t, rec, got)
	if st := sub.Status(); st.Losses != 0 || len(st.Dropped) != 0 {
		t.Errorf("status after cuts: %+v", st)
	}
}

// A server restart with the store kept, while the agent is away and
// while it is connected: nothing lost, nothing twice.
func TestResumeAfterServerRestart(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	l := newLink(t, srv)
	sub := newSubscriber(t, connect(t, l.url()), newStore(t))
	rec := recordApplied(sub)
	start(t, sub)
	waitReady(t, sub)
	got := published{}
	publishBoth(t, pub, got, 2)
	waitApplied(t, rec, got)

	// Away during the restart.
	l.cut()
	srv.Stop()
	restart(t, srv, pub.nc)
	publishBoth(t, pub, got, 3)
	l.restore()
	waitApplied(t, rec, got)

	// Connected during the restart.
	waitState(t, sub, jetstream.Live)
	restart(t, srv, pub.nc)
	publishBoth(t, pub, got, 3)
	waitApplied(t, rec, got)
	waitState(t, sub, jetstream.Live)
	publishBoth(t, pub, got, 1)
	waitApplied(t, rec, got)
	checkExactlyOnce(t, rec, got)
	if st := sub.Status(); st.Losses != 0 {
		t.Errorf("losses %d after restarts", st.Losses)
	}
}

// A consumer deleted under the subscriber is noticed (no heartbeat) and
// replaced from the position.
func TestResumeAfterConsumerDeleted(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	admin, err := jsapi.New(adminConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	sub := newSubscriber(t, connect(t, srv.URL()), newStore(t))
	rec := recordApplied(sub)
	start(t, sub)
	waitReady(t, sub)
	got := published{}
	publishBoth(t, pub, got, 1)
	waitApplied(t, rec, got)
	for _, subject := range []string{jetstream.Subject(agent), jetstream.GlobalSubject} {
		deleteConsumers(t, admin, subject)
		testutil.Eventually(t, waitLong, func() bool { return sub.Status().State != jetstream.Live }, "not live after deleting the consumer of %s", subject)
		publishBoth(t, pub, got, 2)
		waitState(t, sub, jetstream.Live)
		waitApplied(t, rec, got)
	}
	checkExactlyOnce(t, rec, got)
}

// deleteConsumers deletes every consumer filtered on subject.
func deleteConsumers(t testing.TB, js jsapi.JetStream, subject string) {
	t.Helper()
	ctx := ctxTimeout(t)
	st, err := js.Stream(ctx, jetstream.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.Config.FilterSubject == subject {
			if err := st.DeleteConsumer(ctx, ci.Name); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no consumer on %s to delete", subject)
	}
}

// NATS unreachable when Run begins: halts published after Run began are
// applied once the bus is reachable; none from before.
func TestUnreachableAtStart(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	ctx := ctxTimeout(t)
	seq, err := pub.HaltAll(ctx, controlstore.SignalTerminate) // before Run: not applied
	if err != nil {
		t.Fatal(err)
	}
	waitServerClockPast(t, pub, seq)
	l := newLink(t, srv)
	l.cut()
	store := newStore(t)
	sub := newSubscriber(t, connect(t, l.url()), store)
	rec := recordApplied(sub)
	start(t, sub)
	testutil.Eventually(t, waitShort, func() bool { return sub.Status().State == jetstream.Connecting }, "connecting")
	got := published{}
	publishBoth(t, pub, got, 3)
	select {
	case <-sub.Ready():
		t.Fatal("ready while the bus is unreachable")
	default:
	}
	l.restore()
	waitReady(t, sub)
	waitApplied(t, rec, got)
	checkExactlyOnce(t, rec, got)
	if s := store.State(controlstore.GlobalOpID); s == controlstore.Terminated {
		t.Errorf("global %v: the terminate from before Run was applied", s)
	}
}

// The same with the stream missing at start (the gateway had not created
// it yet): Misconfigured, then live once it exists.
func TestStreamMissingAtStart(t *testing.T) {
	srv := startServer(t, jetstreamtest.WithoutStream())
	sub := newSubscriber(t, connect(t, srv.URL()), newStore(t))
	rec := recordApplied(sub)
	start(t, sub)
	waitState(t, sub, jetstream.Misconfigured)
	if err := sub.Status().LastError; err == nil || !strings.Contains(err.Error(), "stream not found") {
		t.Errorf("last error %v", err)
	}
	js, err := jsapi.New(adminConn(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jetstreamtest.CreateStream(ctxTimeout(t), js); err != nil {
		t.Fatal(err)
	}
	pub := publisher(t, srv)
	got := published{}
	publishBoth(t, pub, got, 2) // after Run began: applied, even before the subscriber saw the stream
	waitReady(t, sub)
	waitApplied(t, rec, got)
	checkExactlyOnce(t, rec, got)
}
