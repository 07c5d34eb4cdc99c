package controlstore

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// DefaultMaxEntries is the per-op entry cap when WithMaxEntries is not given.
// An entry costs about 240 bytes with an OpenTelemetry op id and about 690
// with the longest id accepted (MaxOpIDLen), so the default bounds the
// entries at about 3.8 MiB of ordinary ids and 10.8 MiB whatever the
// gateway sends. Compacted terminates are bounded separately (see
// WithTerminatedHistory).
const DefaultMaxEntries = 16384

// Agent is the agent whose ops a store tracks: the subscription triple sent
// to the gateway, which must equal the agent's registered identity byte for
// byte (org and team may be empty).
type Agent struct {
	OrgID   string
	TeamID  string
	AgentID string
}

// Store is this agent's local record of op control. One writer (the stream
// subscriber) applies signals; every gated call reads it. Reads take no lock
// and allocate nothing. A Store must be created with New.
type Store struct {
	agent     Agent
	agentOpID string
	max       int
	maxSlots  int // the table's largest size: twice max, a power of two
	seed      hashSeed
	now       func() time.Time

	// Read side, lock-free. version is a sequence lock: writers make it odd
	// while they change state, so a reader can tell that the three scopes it
	// read belong to one moment.
	armed      atomic.Bool
	version    atomic.Uint64
	count      atomic.Int64
	tab        atomic.Pointer[table]
	global     entry
	agentScope entry
	failClosed atomic.Bool
	wakeups    atomic.Uint64 // held calls woken to re-check
	held       atomic.Int64  // calls parked in Wait

	// Write side, under mu.
	mu         sync.Mutex
	paused     entryList
	terminated entryList
	scopesCh   chan struct{} // closed and replaced when the agent or global scope, or failClosed, changes
	waiting    map[*entry]struct{}
	absent     map[opKey]*absentWait
	stats      Stats

	// Sources, under mu. failClosed is their verdict (see
	// updateFailClosed); liveSince is when SyncStatus.Live last changed.
	sources           []*Source
	kinds             [numSourceKinds]kindState
	lastLive          bool
	liveSince         time.Time
	manualFailClosed  bool           // deprecated SetFailClosed
	legacySource      *Source        // deprecated SetLive
	syncCh            chan struct{}  // closed and replaced when SyncStatus changes
	settle            [2]settleTimer // a gateway RESUME pending, per reserved scope
	gwPrior           [2]priorState  // a reserved scope's state before a gateway changed it in a bus outage
	busGraceOver      bool           // the current bus outage has outlasted WithBusGrace
	busGraceStop      func() bool    // the grace timer, if armed
	busGraceGen       uint64
	resumeSettle      time.Duration
	busGrace          time.Duration
	afterFunc         func(time.Duration, func()) func() bool
	failClosedChanged bool // to be logged by unlockAndLog
	log               *slog.Logger

	// fps remembers compacted per-op terminates; compactedTerm is the
	// marker evaluate returns for one.
	fps           compacted
	compactedTerm TerminatedError

	calls   [callShards]callShard
	metrics metrics
}

// entry is the state of one op id. Its key, id and errors never change;
// state changes only under Store.mu, inside a version bump.
type entry struct {
	key     opKey
	hash    uint64
	id      string
	state   atomic.Uint32
	evicted atomic.Bool
	// The errors a gate returns for this entry, made once so that a denied
	// or held call allocates nothing.
	termErr  TerminatedError
	pauseErr PausedError

	// changed is closed on the entry's next change. It is made only when a
	// call waits on the entry (most entries are never waited on), and is
	// guarded by Store.mu.
	changed    chan struct{}
	prev, next *entry // FIFO of entries in the same state, under Store.mu
}

func newEntry(id string, sc Scope) *entry {
	return &entry{
		id:       id,
		termErr:  TerminatedError{OpID: id, Scope: sc},
		pauseErr: PausedError{OpID: id, Scope: sc},
	}
}

// waitChan returns the channel closed on e's next change, or on the next
// change of a reserved scope. Under mu.
func (s *Store) waitChan(e *entry) <-chan struct{} {
	if e.changed == nil {
		e.changed = make(chan struct{})
		s.waiting[e] = struct{}{}
	}
	return e.changed
}

// New returns an empty store for agent, or an error when the configuration
// could never work: an empty agent.AgentID (the agent halt
// "agent:{agent_id}" could never match, and the gateway refuses such a
// subscription), a triple that is not valid UTF-8 (it cannot be sent), or an
// option out of range. The agent's own halt id is accepted whatever its
// length. A nil Option is ignored.
func New(agent Agent, opts ...Option) (*Store, error) {
	if agent.AgentID == "" {
		return nil, errors.New("controlstore: New: Agent.AgentID is empty; it must be the agent id registered with the gateway")
	}
	for _, f := range []struct{ name, v string }{{"OrgID", agent.OrgID}, {"TeamID", agent.TeamID}, {"AgentID", agent.AgentID}} {
		if !utf8.ValidString(f.v) {
			return nil, fmt.Errorf("controlstore: New: Agent.%s is not valid UTF-8", f.name)
		}
	}
	o := options{
		maxEntries: DefaultMaxEntries, terminatedHistory: DefaultTerminatedHistory, resumeSettle: DefaultResumeSettle, busGrace: DefaultBusGrace,
		now: time.Now, logger: slog.Default(), afterFunc: afterFunc,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	s := &Store{
		agent:        agent,
		agentOpID:    AgentOpIDPrefix + agent.AgentID,
		max:          o.maxEntries,
		seed:         newHashSeed(),
		now:          o.now,
		log:          o.logger,
		resumeSettle: o.resumeSettle,
		busGrace:     o.busGrace,
		afterFunc:    o.afterFunc,
		scopesCh:     make(chan struct{}),
		syncCh:       make(chan struct{}),
		waiting:      make(map[*entry]struct{}),
		absent:       make(map[opKey]*absentWait),
	}
	s.liveSince = s.now()
	s.fps = newCompacted(o.terminatedHistory)
	s.maxSlots = tableSlots(2 * o.maxEntries)
	s.tab.Store(newTable(min(minTableSlots, s.maxSlots)))
	s.global.termErr = TerminatedError{OpID: GlobalOpID, Scope: ScopeGlobal}
	s.global.pauseErr = PausedError{OpID: GlobalOpID, Scope: ScopeGlobal}
	s.agentScope.termErr = TerminatedError{OpID: s.agentOpID, Scope: ScopeAgent}
	s.agentScope.pauseErr = PausedError{OpID: s.agentOpID, Scope: ScopeAgent}
	s.metrics = newMetrics(o.meterProvider)
	return s, nil
}

// Agent returns the agent the store was created for.
func (s *Store) Agent() Agent { return s.agent }

// Armed reports whether anything could hold or deny a call right now: an
// entry, a paused or terminated scope, or failing closed. When it is false,
// Check returns nil for every op; it is one atomic load.
func (s *Store) Armed() bool { return s.armed.Load() }

// Held returns the number of calls parked in Wait right now.
func (s *Store) Held() int { return int(s.held.Load()) }

// Len returns the number of per-op entries held (reserved scopes excluded).
func (s *Store) Len() int { return int(s.count.Load()) }
