package controlstore

import (
	"context"
	"sync"

	"github.com/opcontrol/opcontrol/internal/percpu"
)

// In-flight registry.
//
// Every gated call with in-flight cancellation registers here for its
// lifetime, so registering is on the hot path of every call and
// terminating is rare. The registry is therefore split by processor, not by
// op: a call registers in the shard of the P it runs on (percpu.Index), so
// concurrent calls, of one op or of many, take different locks and write
// different cache lines, and a call allocates nothing (its registration is
// a reused slot). A terminate does the walking: it locks every shard in turn
// and cancels the calls it covers. (A lock-free "shard is empty" count
// would let it skip shards, but would cost every call two more atomic
// writes; terminates are rare.)
//
// Invariants:
//   - A slot is in use iff its cancel is non-nil; in-use slots of a shard
//     number live. Everything in a shard changes only under its mu.
//   - A slot's gen changes whenever it is freed, so a Call naming an older
//     gen is stale and Release on it does nothing.
//   - No user code (a cancel function) ever runs with a shard's lock held:
//     a terminate collects the cancel functions under the lock and calls
//     them after releasing it.

// callShards is the number of registry shards.
const callShards = percpu.Stripes

type callShard struct {
	mu    sync.Mutex
	free  int32 // index of the first free slot, -1 for none (after grow)
	live  int32 // slots in use
	slots []callSlot
	// withCtx counts in-use slots that end by themselves when their
	// context is done; only then is there anything to reclaim.
	withCtx int
	_       [64]byte // keep neighbouring shards off this cache line
}

type callSlot struct {
	key    opKey
	cancel context.CancelCauseFunc // nil: free
	ctx    errer                   // nil, or the context whose end ends the registration
	gen    uint32
	next   int32 // while free: the next free slot, -1 for none
}

// Call is the registration of an in-flight call, returned by Track and
// TrackContext. Release it when the call ends. A Call is a small value: copy
// it freely; the zero Call is valid and registers nothing.
type Call struct {
	shard *callShard
	slot  int32
	gen   uint32
}

// Track registers an in-flight call of op so that a TERMINATE of op, of this
// agent, or of every agent cancels it: cancel is called with the
// *TerminatedError as cause (read it back with context.Cause). If a scope of
// op is already terminated, cancel is called before Track returns, so there
// is no window between a passing check and the registration. Call Release
// on the result when the call ends.
//
// cancel must be safe to call more than once and concurrently with the call
// ending (context.CancelCauseFunc is): a terminate that started before
// Release returned may still call it once after. No lock of the store is
// held while cancel runs. If cancel panics, the terminate still reaches
// every other call, and the panic is raised again from Apply (or from
// Track, which then releases the registration) once they all have been
// cancelled.
//
// Track allocates nothing and takes no lock shared with calls running on
// other processors. It panics if cancel is nil: a call that asked to be
// cancelled must not silently run on.
func (s *Store) Track(op Op, cancel context.CancelCauseFunc) Call {
	return s.track(nil, op, cancel)
}

// TrackContext is Track for a call that runs under ctx (usually the
// context that cancel cancels): the registration also ends once ctx is
// done, even if Release is never called, as for a stream its application
// abandoned by cancelling its context. Such registrations are reclaimed
// lazily, when their shard needs room and by InFlight, so memory stays
// bounded by the peak number of calls in flight. ctx.Err is called with a
// lock of the registry held: the standard library's contexts are fine; a
// context of your own must not call into the store from Err.
func (s *Store) TrackContext(ctx context.Context, op Op, cancel context.CancelCauseFunc) Call {
	return s.track(ctx, op, cancel)
}

// errer is the part of a context.Context that a registration watches.
type errer interface{ Err() error }

func (s *Store) track(ctx errer, op Op, cancel context.CancelCauseFunc) Call {
	if cancel == nil {
		panic("controlstore: Track needs a non-nil cancel function")
	}
	sh := &s.calls[percpu.Index()]
	sh.mu.Lock()
	i := sh.alloc()
	sl := &sh.slots[i]
	sl.key, sl.cancel, sl.ctx = op.key, cancel, ctx
	if ctx != nil {
		sh.withCtx++
	}
	sh.live++
	c := Call{shard: sh, slot: i, gen: sl.gen}
	sh.mu.Unlock()

	// Apply sets state before it walks the shards, and we filled the slot
	// under the shard's lock before we read state: if Apply's walk locks
	// this shard after us, it sees the slot; if before, our Check comes
	// after its unlock, so after the state it set, and sees the terminate.
	if te, ok := s.Check(op).(*TerminatedError); ok { //nolint:errorlint // Check returns the store's own errors, never wrapped
		released := false
		defer func() {
			if !released {
				c.Release() // cancel panicked: leave nothing registered
			}
		}()
		cancel(te)
		released = true
	}
	return c
}

// alloc returns a free slot, reclaiming the slots of ended contexts or
// growing the shard when there is none. Under mu. The free slots form a
// list threaded through the slots themselves, so that taking one touches
// only the slot that is about to be written anyway.
func (sh *callShard) alloc() int32 {
	if len(sh.slots) == 0 {
		sh.free = -1 // the zero shard has no slots
	}
	if sh.free < 0 && sh.withCtx > 0 {
		sh.reclaim()
	}
	if sh.free < 0 {
		// Double, so that reclaiming (a scan of the shard) is amortised
		// over as many registrations as the shard holds.
		n := len(sh.slots)
		sh.slots = append(sh.slots, make([]callSlot, max(n, 8))...)
		for i := len(sh.slots) - 1; i >= n; i-- {
			sh.slots[i].next, sh.free = sh.free, int32(i)
		}
	}
	i := sh.free
	sh.free = sh.slots[i].next
	return i
}

// reclaim frees the slots whose context is done. Under mu. ctx.Err takes
// only the context's own lock, and no context code takes a shard's lock, so
// this cannot deadlock.
func (sh *callShard) reclaim() {
	for i := range sh.slots {
		if sl := &sh.slots[i]; sl.cancel != nil && sl.ctx != nil && sl.ctx.Err() != nil {
			sh.release(int32(i))
		}
	}
}

// release frees slot i. Under mu.
func (sh *callShard) release(i int32) {
	sl := &sh.slots[i]
	if sl.ctx != nil {
		sh.withCtx--
	}
	*sl = callSlot{gen: sl.gen + 1, next: sh.free}
	sh.free = i
	sh.live--
}

// Release ends the registration. It is safe to call more than once, and
// on a Call whose registration already ended with its context.
func (c Call) Release() {
	sh := c.shard
	if sh == nil {
		return
	}
	sh.mu.Lock()
	if sh.slots[c.slot].gen == c.gen {
		sh.release(c.slot)
	}
	sh.mu.Unlock()
}

// InFlight returns the number of calls currently registered (with Track or
// TrackContext, and not yet ended).
func (s *Store) InFlight() int {
	n := 0
	for i := range s.calls {
		sh := &s.calls[i]
		sh.mu.Lock()
		if sh.withCtx > 0 {
			sh.reclaim()
		}
		n += int(sh.live)
		sh.mu.Unlock()
	}
	return n
}

// cancelCalls cancels the calls covered by terminated entry e: every call
// for a reserved scope, the calls of e's op otherwise. It runs in Apply,
// after the terminate is visible to Check, with no store lock held.
func (s *Store) cancelCalls(e *entry) {
	cause := &e.termErr
	every := cause.Scope != ScopeOp
	var cancels []context.CancelCauseFunc
	for i := range s.calls {
		sh := &s.calls[i]
		sh.mu.Lock()
		for j := range sh.slots {
			if sl := &sh.slots[j]; sl.cancel != nil && (every || sl.key == e.key) {
				cancels = append(cancels, sl.cancel)
			}
		}
		sh.mu.Unlock()
	}
	cancelAll(cancels, cause)
}

// cancelAll calls every cancel function with cause, even if some panic;
// the first panic is raised again once all have run.
func cancelAll(cancels []context.CancelCauseFunc, cause error) {
	var (
		panicked bool
		value    any
	)
	for _, cancel := range cancels {
		func() {
			defer func() {
				if r := recover(); r != nil && !panicked {
					panicked, value = true, r
				}
			}()
			cancel(cause)
		}()
	}
	if panicked {
		panic(value)
	}
}
