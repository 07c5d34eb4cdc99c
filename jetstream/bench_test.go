package jetstream_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
)

// appliedAt returns a channel receiving the time of every application.
func appliedAt(sub *jetstream.Subscriber, n int) <-chan time.Time {
	ch := make(chan time.Time, n)
	sub.SetOnApply(func(string, uint64, jetstream.Halt) {
		select {
		case ch <- time.Now():
		default:
		}
	})
	return ch
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

func reportPercentiles(b *testing.B, prefix string, d []time.Duration) {
	b.ReportMetric(float64(percentile(d, 0.50).Microseconds()), prefix+"p50-µs")
	b.ReportMetric(float64(percentile(d, 0.99).Microseconds()), prefix+"p99-µs")
	b.ReportMetric(float64(percentile(d, 1).Microseconds()), prefix+"max-µs")
}

// BenchmarkPublishToApplied: one halt at a time, as the operator API
// publishes it (JetStream publish, waiting for the ack), from the start of
// the publish to the halt handed to the store, on loopback. Run it with
// -benchtime 10000x for the figure over 10,000 halts.
func BenchmarkPublishToApplied(b *testing.B) {
	srv := startServer(b)
	pub := publisher(b, srv)
	store := testStoreB(b)
	sub := newSubscriber(b, connect(b, srv.URL()), store)
	at := appliedAt(sub, 1)
	start(b, sub)
	waitReady(b, sub)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	sigs := [2]controlstore.Signal{controlstore.SignalPause, controlstore.SignalResume}
	i := 0
	for b.Loop() {
		t0 := time.Now()
		var err error
		if i%2 == 0 {
			_, err = pub.HaltAgent(ctx, agent, sigs[i/2%2])
		} else {
			_, err = pub.HaltAll(ctx, sigs[i/2%2])
		}
		if err != nil {
			b.Fatal(err)
		}
		select {
		case t1 := <-at:
			lat = append(lat, t1.Sub(t0))
		case <-time.After(waitLong):
			b.Fatalf("halt %d not applied", i)
		}
		i++
	}
	reportPercentiles(b, "", lat)
}

// BenchmarkRecoveryAfterRestart: the server stops and starts again on the
// same port with its store; a halt is published the moment it is ready,
// while the agent is still disconnected; measured from the server ready to
// that halt applied (the agent reconnects, makes new consumers from its
// positions and receives it). Also reported: ready to the agent's
// reconnect. Run it with -benchtime 50x.
func BenchmarkRecoveryAfterRestart(b *testing.B) {
	srv := startServer(b)
	url := srv.URL()
	reconnected := make(chan time.Time, 1)
	nc := connectWith(b, jetstream.Config{URL: url, Logger: slog.New(slog.DiscardHandler)},
		nats.ReconnectHandler(func(*nats.Conn) {
			select {
			case reconnected <- time.Now():
			default:
			}
		}))
	sub := newSubscriber(b, nc, testStoreB(b))
	at := appliedAt(sub, 1)
	start(b, sub)
	waitReady(b, sub)
	var recovery, reconnect []time.Duration
	sig := controlstore.SignalPause
	for b.Loop() {
		srv.Stop()
		if err := srv.Restart(); err != nil {
			b.Fatal(err)
		}
		ready := time.Now()
		publishOnce(b, srv, sig)
		select {
		case t1 := <-at:
			recovery = append(recovery, t1.Sub(ready))
		case <-time.After(waitLong):
			b.Fatal("missed halt not applied")
		}
		select {
		case t := <-reconnected:
			reconnect = append(reconnect, t.Sub(ready))
		case <-time.After(waitLong):
			b.Fatal("no reconnect")
		}
		if sig == controlstore.SignalPause {
			sig = controlstore.SignalResume
		} else {
			sig = controlstore.SignalPause
		}
	}
	reportPercentiles(b, "recovery-", recovery)
	reportPercentiles(b, "reconnect-", reconnect)
}

// publishOnce publishes a halt on a fresh connection (an operator API that
// reaches the restarted server first).
func publishOnce(b *testing.B, srv *jetstreamtest.Server, sig controlstore.Signal) {
	b.Helper()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	p, err := jetstreamtest.NewPublisher(nc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.HaltAgent(context.Background(), agent, sig); err != nil {
		b.Fatal(err)
	}
}

func testStoreB(b *testing.B) *controlstore.Store {
	b.Helper()
	return newStore(b)
}
