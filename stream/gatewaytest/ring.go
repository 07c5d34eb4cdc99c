package gatewaytest

import (
	"sync"
	"sync/atomic"
)

// envelope is one published frame and who may receive it.
type envelope struct {
	route Route
	frame []byte
}

// ring is the gateway's broadcast channel: a bounded ring every subscriber
// reads at its own position, like the real gateway's tokio broadcast. A
// publisher never waits; a subscriber that falls more than the ring's
// capacity behind skips the oldest envelopes (those of every agent count).
// A ring is one gateway "process": Restart makes a new one, with its
// sequence counter back at 0.
type ring struct {
	mu   sync.Mutex
	buf  []envelope
	head uint64        // envelopes ever published
	seq  uint64        // the next sequence number
	wake chan struct{} // closed and replaced on every publish
}

func newRing(capacity int) *ring {
	return &ring{buf: make([]envelope, capacity), wake: make(chan struct{})}
}

// publish appends the frame build returns. build runs under the ring's lock
// with the sequence number this envelope gets, so that ring order and
// sequence order agree; with consume false the counter is left alone.
func (r *ring) publish(route Route, consume bool, build func(seq uint64) []byte) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	seq := r.seq
	if consume {
		r.seq++
	}
	r.buf[r.head%uint64(len(r.buf))] = envelope{route: route, frame: build(seq)}
	r.head++
	close(r.wake)
	r.wake = make(chan struct{})
	return seq
}

// cursor is one subscriber's read position.
type cursor struct {
	r       *ring
	pos     uint64
	skipped atomic.Uint64
}

// subscribe returns a cursor that sees only envelopes published from now on.
func (r *ring) subscribe() *cursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &cursor{r: r, pos: r.head}
}

// next returns the next envelope, or ok false and a channel closed at the
// next publish. It skips what the ring no longer holds and returns how many
// envelopes that was.
func (c *cursor) next() (env envelope, ok bool, wake <-chan struct{}, lagged uint64) {
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := uint64(len(r.buf)); r.head-c.pos > n {
		lagged = r.head - n - c.pos
		c.pos = r.head - n
		c.skipped.Add(lagged)
	}
	if c.pos == r.head {
		return envelope{}, false, r.wake, lagged
	}
	env = r.buf[c.pos%uint64(len(r.buf))]
	c.pos++
	return env, true, nil, lagged
}

func (r *ring) sequence() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seq
}
