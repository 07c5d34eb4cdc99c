package stream

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/opcontrol/opcontrol/controlstore"
)

// guard tells the store whether the stream is live and, with
// WithFailClosedAfter, owns the timer that makes it fail closed once the
// stream has not been live for a while.
type guard struct {
	store   *controlstore.Store
	enabled bool
	after   time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	running bool
	live    bool
	gen     uint64 // bumped on every change; a timer only fires for its own
	timer   *time.Timer
}

// start begins a Run: not live, fail-closed timer armed.
func (g *guard) start() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.running, g.live = true, false
	g.store.SetLive(false)
	g.armLocked()
}

// stop ends a Run: not live, no timer. The fail-closed switch stays as is.
func (g *guard) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.running, g.live = false, false
	g.disarmLocked()
	g.store.SetLive(false)
}

// setLive records a transition of the stream.
func (g *guard) setLive(live bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.running || g.live == live {
		return
	}
	g.live = live
	g.store.SetLive(live)
	if !live {
		g.armLocked()
		return
	}
	g.disarmLocked()
	if g.enabled && g.store.Sync().FailClosed {
		g.store.SetFailClosed(false)
		g.log.LogAttrs(context.Background(), slog.LevelInfo, "op-control stream live again: no longer failing closed")
	}
}

func (g *guard) armLocked() {
	g.disarmLocked()
	if !g.enabled {
		return
	}
	gen := g.gen
	if g.after == 0 {
		g.fireLocked(gen)
		return
	}
	g.timer = time.AfterFunc(g.after, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.fireLocked(gen)
	})
}

func (g *guard) disarmLocked() {
	g.gen++
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
}

func (g *guard) fireLocked(gen uint64) {
	if gen != g.gen || !g.running || g.live || g.store.Sync().FailClosed {
		return
	}
	g.store.SetFailClosed(true)
	g.log.LogAttrs(context.Background(), slog.LevelWarn,
		"op-control stream not live for too long: failing closed, gated calls fail with ErrUnavailable",
		slog.Duration("after", g.after))
}
