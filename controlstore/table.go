package controlstore

import "sync/atomic"

// table is a fixed-capacity open-addressing hash table of per-op entries.
// One writer (holding Store.mu) mutates it; any number of readers probe it
// with no lock and no write: a slot is an atomic pointer to an entry whose
// key never changes, so a reader can never see a torn key.
//
// Capacity is at least twice the store's entry cap, so live entries fill at
// most half of it. Removed entries leave a tombstone (probes must continue
// past them); when live entries plus tombstones pass three quarters, the
// writer rebuilds a fresh table and publishes it with one atomic store.
// Readers still probing the old table see a consistent, older view, and the
// old table always keeps empty slots, so every probe ends.
type table struct {
	slots []atomic.Pointer[entry]
	mask  uint64
	live  int // writer only
	dead  int // writer only: tombstones
}

// tombstone marks a slot whose entry was removed.
var tombstone = new(entry)

func newTable(capacity int) *table {
	n := 16
	for n < capacity {
		n <<= 1
	}
	return &table{slots: make([]atomic.Pointer[entry], n), mask: uint64(n - 1)}
}

// lookup returns the entry for k, or nil. Safe for concurrent readers.
func (t *table) lookup(k *opKey, h uint64) *entry {
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		e := t.slots[i].Load()
		if e == nil {
			return nil
		}
		if e != tombstone && e.key == *k {
			return e
		}
	}
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

// crowded reports whether probes have grown long enough to rebuild.
func (t *table) crowded() bool {
	return (t.live+t.dead)*4 > len(t.slots)*3
}

// rebuilt returns a fresh table with t's live entries and no tombstones.
func (t *table) rebuilt() *table {
	n := &table{slots: make([]atomic.Pointer[entry], len(t.slots)), mask: t.mask}
	for i := range t.slots {
		if e := t.slots[i].Load(); e != nil && e != tombstone {
			n.insert(e)
		}
	}
	return n
}
