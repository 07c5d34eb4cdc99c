package stream

import (
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// guard is the subscriber's controlstore.Source: it reports the stream's
// liveness to the store, which owns the fail-closed timer (so that two
// subscribers on one store, or a subscriber beside a bus source, are
// reconciled in one place), and applies received signals through it.
type guard struct {
	src *controlstore.Source
}

func newGuard(store *controlstore.Store, failClosed bool, after time.Duration) guard {
	var opts []controlstore.SourceOption
	if failClosed {
		opts = append(opts, controlstore.FailClosedAfter(after))
	}
	return guard{src: store.AddSource("stream", controlstore.SourceGateway, opts...)}
}

// start begins a Run: running, not live, fail-closed limit counting.
func (g *guard) start() { g.src.Start() }

// stop ends a Run: not live; the store's fail-closed state stays as it is.
func (g *guard) stop() { g.src.Stop() }

// setLive records a transition of the stream.
func (g *guard) setLive(live bool) { g.src.SetLive(live) }

// apply applies one received signal.
func (g *guard) apply(opID string, sig controlstore.Signal) error { return g.src.Apply(opID, sig) }
