package controlstore

import (
	"context"
	"math/rand/v2"
	"sync"
)

// callShards spreads in-flight registrations so that concurrent calls rarely
// share a lock. A call of an op lives in the shard of its op's hash, so a
// per-op terminate visits one shard; a call with no op can only be reached
// by agent and global terminates, which visit every shard, so it goes to any.
const callShards = 32

type callShard struct {
	mu   sync.Mutex
	head *Call // intrusive list: registering costs no map insert
	_    [40]byte
}

// Call is an in-flight call registered with Track. Release it when the call
// ends.
type Call struct {
	shard      *callShard
	key        opKey
	cancel     context.CancelCauseFunc
	prev, next *Call
	linked     bool
}

// Track registers an in-flight call of op so that a TERMINATE of op, of this
// agent, or of every agent cancels it: cancel is called with the
// *TerminatedError as cause (read it back with context.Cause). If a scope of
// op is already terminated, cancel is called before Track returns, so there
// is no window between a passing check and the registration. Call Release
// on the result when the call ends; cancel must be safe to call more than
// once (context.CancelCauseFunc is).
func (s *Store) Track(op Op, cancel context.CancelCauseFunc) *Call {
	var sh *callShard
	if op.IsZero() {
		sh = &s.calls[rand.Uint32()%callShards]
	} else {
		sh = &s.calls[op.key.hash(&s.seed)%callShards]
	}
	c := &Call{shard: sh, key: op.key, cancel: cancel}
	sh.mu.Lock()
	c.next = sh.head
	if c.next != nil {
		c.next.prev = c
	}
	sh.head = c
	c.linked = true
	sh.mu.Unlock()

	// Apply sets state before it cancels calls, and we registered before we
	// read state: either Apply sees this call or we see its terminate.
	if te, ok := s.Check(op).(*TerminatedError); ok { //nolint:errorlint // Check returns the store's own errors, never wrapped
		cancel(te)
	}
	return c
}

// Release unregisters the call. It is safe to call more than once.
func (c *Call) Release() {
	sh := c.shard
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !c.linked {
		return
	}
	c.linked = false
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		sh.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
}

// InFlight returns the number of calls currently registered with Track.
func (s *Store) InFlight() int {
	n := 0
	for i := range s.calls {
		sh := &s.calls[i]
		sh.mu.Lock()
		for c := sh.head; c != nil; c = c.next {
			n++
		}
		sh.mu.Unlock()
	}
	return n
}

// cancelCalls cancels the calls covered by terminated entry e: every call
// for a reserved scope, the calls of e's op otherwise.
func (s *Store) cancelCalls(e *entry) {
	cause := &e.termErr
	if cause.Scope != ScopeOp {
		for i := range s.calls {
			sh := &s.calls[i]
			sh.mu.Lock()
			for c := sh.head; c != nil; c = c.next {
				c.cancel(cause)
			}
			sh.mu.Unlock()
		}
		return
	}
	sh := &s.calls[e.hash%callShards]
	sh.mu.Lock()
	for c := sh.head; c != nil; c = c.next {
		if c.key == e.key {
			c.cancel(cause)
		}
	}
	sh.mu.Unlock()
}
