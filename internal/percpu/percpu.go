// Package percpu tells a goroutine which stripe of a per-P structure to
// use, so that hot counters and registries can be split by processor (the
// runtime's P) instead of shared by every core.
//
// The runtime does not export a P's id. sync.Pool keeps one private object
// per P, so a pool of numbered tokens is the portable way to get one: Index
// takes this P's token and puts it straight back. Two goroutines that run
// at the same moment run on different Ps and so hold different tokens;
// tokens are numbered in sequence, so they map to different stripes as long
// as GOMAXPROCS is at most Stripes. A token the pool drops (at a garbage
// collection, or at random under the race detector) is replaced by one with
// the next number: the stripe of a P may change, which costs a cache miss
// and never correctness, since every stripe is safe for concurrent use.
package percpu

import (
	"sync"
	"sync/atomic"
)

// Stripes is the number of stripes Index chooses from. Structures striped
// with it hold Stripes elements, each on its own cache line.
const Stripes = 64

// The pool is the one piece of package state: a cache of the runtime's
// per-P identity, like the runtime's own per-P caches. It holds no data of
// any caller.
var (
	tokens = sync.Pool{New: newToken}
	issued atomic.Uint32
)

type token struct{ stripe uint32 }

func newToken() any { return &token{stripe: (issued.Add(1) - 1) % Stripes} }

// Index returns the stripe, in [0, Stripes), of the P the caller runs on.
// It allocates nothing (except, rarely, a new token) and writes no memory
// shared with other Ps: about 10 ns.
func Index() int {
	t := tokens.Get().(*token)
	i := t.stripe
	tokens.Put(t)
	return int(i)
}
