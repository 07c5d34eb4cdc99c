package controlstore

import (
	"math/bits"
	"sync/atomic"
)

// compactedGenerations is how many generations of fingerprints a store
// keeps. A lookup probes each once, so a miss costs this many short probes;
// more generations waste less memory per guaranteed fingerprint
// (G/(G-1) of the minimum).
const compactedGenerations = 4

// DefaultTerminatedHistory is the number of compacted per-op terminates a
// store remembers at least, when WithTerminatedHistory is not given.
const DefaultTerminatedHistory = 1 << 20

// MaxTerminatedHistory is the largest WithTerminatedHistory accepts.
const MaxTerminatedHistory = 1 << 26

// compacted remembers per-op terminates whose entries were evicted to stay
// within the entry cap, as 64-bit fingerprints (the entry's hash: seeded
// per store, so a gateway cannot aim at a collision). An op whose
// fingerprint is present is terminated; a false positive, which can only
// refuse a call, has probability at most (fingerprints held)/2^64 per
// lookup: below 10^-13 with the default history full.
//
// Invariant: a fingerprint stays present until at least History() further
// fingerprints have been added after it. Fingerprints go into the current
// generation, a fixed-size open-addressing set of atomic words filled to at
// most three quarters; when it is full, the oldest generation is cleared
// and becomes the current one. A fingerprint added last to a generation
// thus survives (G-1)·perGen further additions, one added first survives
// G·perGen - 1.
//
// One writer (under Store.mu) adds; readers probe with no lock and no
// write. Clearing only turns slots empty, so a reader's probe of a
// generation being cleared ends sooner and can miss only fingerprints that
// are being forgotten; a generation always keeps an empty slot, so every
// probe ends. Generations are allocated when first used, so a store that
// never compacts a terminate costs nothing here.
type compacted struct {
	gens   [compactedGenerations]atomic.Pointer[fpSet]
	slots  int          // per generation, a power of two
	perGen int          // fingerprints per generation: slots·3/4
	n      atomic.Int64 // fingerprints held; readers skip everything at 0

	// Writer only.
	cur       int // generation being filled
	curN      int // fingerprints in it
	forgotten uint64
}

type fpSet struct {
	slots []atomic.Uint64
	mask  uint64
}

// newCompacted sizes the generations so that History() >= history.
func newCompacted(history int) compacted {
	perGen := (history + compactedGenerations - 2) / (compactedGenerations - 1)
	slots := max(4, 1<<bits.Len(uint(perGen*4/3)))
	for slots*3/4 < perGen {
		slots <<= 1
	}
	return compacted{slots: slots, perGen: slots * 3 / 4}
}

// History returns how many further fingerprints a fingerprint survives at
// least.
func (c *compacted) History() int { return (compactedGenerations - 1) * c.perGen }

// MemoryBytes returns what the generations cost once all are allocated.
func (c *compacted) MemoryBytes() int { return compactedGenerations * c.slots * 8 }

func fingerprint(h uint64) uint64 {
	if h == 0 {
		return 1 // 0 marks an empty slot
	}
	return h
}

// contains reports whether the fingerprint of hash h is held. Safe for
// concurrent readers; allocation-free.
func (c *compacted) contains(h uint64) bool {
	if c.n.Load() == 0 {
		return false
	}
	fp := fingerprint(h)
	for i := range c.gens {
		if g := c.gens[i].Load(); g != nil && g.contains(fp) {
			return true
		}
	}
	return false
}

func (g *fpSet) contains(fp uint64) bool {
	for i, n := fp&g.mask, 0; n < len(g.slots); i, n = (i+1)&g.mask, n+1 {
		switch g.slots[i].Load() {
		case fp:
			return true
		case 0:
			return false
		}
	}
	return false
}

// add records the fingerprint of hash h. Writer only, under Store.mu and
// inside its version bump.
func (c *compacted) add(h uint64) {
	fp := fingerprint(h)
	if c.curN == c.perGen {
		c.cur = (c.cur + 1) % compactedGenerations
		c.curN = 0
		if g := c.gens[c.cur].Load(); g != nil {
			// The oldest generation is forgotten: these terminates have
			// outlived the promised history.
			dropped := 0
			for i := range g.slots {
				if g.slots[i].Load() != 0 {
					g.slots[i].Store(0)
					dropped++
				}
			}
			c.forgotten += uint64(dropped)
			c.n.Add(-int64(dropped))
		}
	}
	g := c.gens[c.cur].Load()
	if g == nil {
		g = &fpSet{slots: make([]atomic.Uint64, c.slots), mask: uint64(c.slots - 1)}
		c.gens[c.cur].Store(g)
	}
	for i := fp & g.mask; ; i = (i + 1) & g.mask {
		switch g.slots[i].Load() {
		case fp:
			return // already here: an op compacted twice counts once
		case 0:
			g.slots[i].Store(fp)
			c.curN++
			c.n.Add(1)
			return
		}
	}
}
