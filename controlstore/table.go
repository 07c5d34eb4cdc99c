package controlstore

import (
	"math/bits"
	"sync/atomic"
)

// table is a fixed-capacity open-addressing hash table of per-op entries.
// One writer (holding Store.mu) mutates it; any number of readers probe it
// with no lock and no write: a slot is an atomic pointer to an entry whose
// key never changes, so a reader can never see a torn key.
//
// The table starts small and doubles while live entries pass half of it, up
// to twice the store's entry cap (rounded up to a power of two), so an
// empty store with a large cap costs little. Removed entries leave a
// tombstone (probes must continue past them); when live entries plus
// tombstones pass three quarters, the writer rebuilds a fresh table (twice
// as large if live entries pass half) and publishes it with one atomic
// store. Readers still probing the old table see a consistent, older view.
// Every table keeps at least a quarter of its slots empty, and a probe
// visits each slot at most once, so every probe ends.
type table struct {
	slots []atomic.Pointer[entry]
	mask  uint64
	live  int // writer only
	dead  int // writer only: tombstones
}

// tombstone marks a slot whose entry was removed.
var tombstone = new(entry)

// minTableSlots is the size of a new store's table.
const minTableSlots = 64

// tableSlots returns the power of two at least n (and at least
// minTableSlots). n is bounded by the store's validated entry cap, so the
// shift cannot overflow.
func tableSlots(n int) int {
	if n <= minTableSlots {
		return minTableSlots
	}
	return 1 << bits.Len(uint(n-1))
}

func newTable(slots int) *table {
	return &table{slots: make([]atomic.Pointer[entry], slots), mask: uint64(slots - 1)}
}

// lookup returns the entry for k, or nil. Safe for concurrent readers.
func (t *table) lookup(k *opKey, h uint64) *entry {
	for i, n := h&t.mask, 0; n < len(t.slots); i, n = (i+1)&t.mask, n+1 {
		e := t.slots[i].Load()
		if e == nil {
			return nil
		}
		if e != tombstone && e.key == *k {
			return e
		}
	}
	return nil
}

// insert adds e, whose key must be absent. Writer only.
func (t *table) insert(e *entry) {
	reuse := -1
	for i := e.hash & t.mask; ; i = (i + 1) & t.mask {
		cur := t.slots[i].Load()
		if cur == tombstone {
			if reuse < 0 {
				reuse = int(i)
			}
			continue
		}
		if cur == nil {
			if reuse >= 0 {
				i = uint64(reuse)
				t.dead--
			}
			t.slots[i].Store(e)
			t.live++
			return
		}
	}
}

// remove replaces e's slot by a tombstone. Writer only.
func (t *table) remove(e *entry) {
	for i := e.hash & t.mask; ; i = (i + 1) & t.mask {
		cur := t.slots[i].Load()
		if cur == nil {
			return
		}
		if cur == e {
			t.slots[i].Store(tombstone)
			t.live--
			t.dead++
			return
		}
	}
}

// crowded reports whether probes have grown long enough to rebuild, or
// live entries fill more than half a table that may still grow to
// maxSlots.
func (t *table) crowded(maxSlots int) bool {
	return (t.live+t.dead)*4 > len(t.slots)*3 || (t.live*2 > len(t.slots) && len(t.slots) < maxSlots)
}

// rebuilt returns a fresh table with t's live entries and no tombstones,
// twice as large if they fill more than half of t and maxSlots allows.
func (t *table) rebuilt(maxSlots int) *table {
	size := len(t.slots)
	if t.live*2 > size && size < maxSlots {
		size *= 2
	}
	n := newTable(size)
	for i := range t.slots {
		if e := t.slots[i].Load(); e != nil && e != tombstone {
			n.insert(e)
		}
	}
	return n
}
