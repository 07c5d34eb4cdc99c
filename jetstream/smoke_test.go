package jetstream_test

import (
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
)

func TestSmoke(t *testing.T) {
	srv := startServer(t)
	pub := publisher(t, srv)
	store := newStore(t)
	sub := newSubscriber(t, connect(t, srv.URL()), store)
	rec := recordApplied(sub)
	start(t, sub)
	waitReady(t, sub)
	if _, err := pub.HaltAgent(ctxTimeout(t), agent, controlstore.SignalPause); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitShort, func() bool { return rec.len() == 1 }, "applied")
	t.Logf("%+v", sub.Status())
	t.Logf("%+v", store.SyncStatus())
}
