package jetstream

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
)

// The consumer loop's own checks, on a real consumer whose deliveries the
// test intercepts: what happens when some are lost on the way (a slow
// consumer drops them), or when the consumer goes away.
func TestConsumerLoopEnds(t *testing.T) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jsapi.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jsapi.StreamConfig{Name: StreamName, Subjects: []string{StreamSubjects}, Storage: jsapi.FileStorage}); err != nil {
		t.Fatal(err)
	}
	agent := controlstore.Agent{OrgID: "acme", AgentID: "bot"}

	for _, tc := range []struct {
		name   string
		steal  int  // deliveries taken before the loop sees them
		remove bool // delete the consumer once the loop runs
		reason string
		err    error
	}{
		{"a skipped delivery", 1, false, resetGap, errGap},
		{"a heartbeat announcing more", 3, false, resetGap, errGap},
		{"consumer deleted", 0, true, resetHeartbeat, errNoHeartbeat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := testutil.NewStore(t, agent, controlstore.WithLogger(slog.New(slog.DiscardHandler)))
			s, err := NewSubscriber(nc, store, WithLogger(nil), WithHeartbeat(100*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			info, err := js.Stream(ctx, StreamName)
			if err != nil {
				t.Fatal(err)
			}
			last := info.CachedInfo().State.LastSeq
			c, err := s.startConsumer(ctx, subjAgent, jsapi.ConsumerConfig{DeliverPolicy: jsapi.DeliverNewPolicy}, last)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.sub.Unsubscribe() }()
			for range 3 {
				if _, err := js.Publish(ctx, Subject(agent), AgentHalt(agent, controlstore.SignalPause).Encode()); err != nil {
					t.Fatal(err)
				}
			}
			for i := range tc.steal {
				if _, err := c.sub.NextMsg(5 * time.Second); err != nil {
					t.Fatalf("intercepting delivery %d: %v", i+1, err)
				}
			}
			ends := make(chan end, 2)
			caught := make(chan int, 2)
			c.started = true
			go c.loop(ends, caught)
			if tc.remove {
				// Let the loop take the three deliveries first.
				deadline := time.Now().Add(10 * time.Second)
				for s.Status().Applied < 3 && time.Now().Before(deadline) {
					<-time.After(time.Millisecond)
				}
				if err := js.DeleteConsumer(ctx, StreamName, c.name); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case e := <-ends:
				if e.reason != tc.reason || !errors.Is(e.err, tc.err) {
					t.Errorf("ended with %s %v, want %s %v", e.reason, e.err, tc.reason, tc.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the loop did not end")
			}
			<-c.done
			if got, want := s.Status().Applied, uint64(3-tc.steal); tc.steal != 1 && got != want {
				t.Errorf("applied %d, want %d", got, want)
			}
			if tc.steal == 1 && s.Status().Applied != 0 {
				t.Errorf("applied %d after a skipped delivery, want 0: nothing after a gap", s.Status().Applied)
			}
		})
	}
}
