package robustness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	wirev1 "github.com/opcontrol/opcontrol/proto/opcontrol/wire/v1"
)

// refStore is the reference model of a controlstore.Store with an entry
// cap, written as plainly as possible: a map of states, and two lists of
// per-op ids in the order they entered the paused and the terminated state.
// Eviction takes the oldest terminated entry, which is compacted and stays
// terminated, else the oldest paused one. Compacted ids fill generations of
// perGen; when the current one is full the oldest is forgotten whole and
// refilled (the store's documented rule, with its four generations).
type refStore struct {
	me         string // "agent:{agent_id}"
	max        int
	scopes     map[string]controlstore.State // "*" and me
	ops        map[string]controlstore.State
	paused     []string
	terminated []string
	gens       [4][]string // compacted terminates
	cur        int
	perGen     int
	forgotten  map[string]bool // ids whose compacted terminate was forgotten
}

func newRef(agentID string, maxEntries, perGen int) *refStore {
	me := controlstore.AgentOpIDPrefix + agentID
	return &refStore{me: me, max: maxEntries, perGen: perGen, ops: map[string]controlstore.State{}, forgotten: map[string]bool{},
		scopes: map[string]controlstore.State{"*": controlstore.Running, me: controlstore.Running}}
}

func (r *refStore) compacted(id string) bool {
	for _, g := range r.gens {
		for _, x := range g {
			if x == id {
				return true
			}
		}
	}
	return false
}

func (r *refStore) compact(id string) {
	if len(r.gens[r.cur]) == r.perGen {
		r.cur = (r.cur + 1) % len(r.gens)
		for _, x := range r.gens[r.cur] {
			r.forgotten[x] = true
		}
		r.gens[r.cur] = nil
	}
	r.gens[r.cur] = append(r.gens[r.cur], id)
}

func (r *refStore) reject(id string, sig controlstore.Signal) controlstore.RejectReason {
	switch {
	case sig == controlstore.SignalUnspecified:
		return controlstore.ReasonUnspecifiedSignal
	case sig < controlstore.SignalPause || sig > controlstore.SignalTerminate:
		return controlstore.ReasonUnknownSignal
	case id == "":
		return controlstore.ReasonEmptyOpID
	case len(id) > controlstore.MaxOpIDLen:
		return controlstore.ReasonOpIDTooLong
	case strings.HasPrefix(id, controlstore.AgentOpIDPrefix) && id != r.me:
		return controlstore.ReasonForeignAgent
	}
	return ""
}

func remove(list []string, id string) []string {
	for i, x := range list {
		if x == id {
			return append(list[:i:i], list[i+1:]...)
		}
	}
	return list
}

func (r *refStore) apply(id string, sig controlstore.Signal) controlstore.RejectReason {
	if reason := r.reject(id, sig); reason != "" {
		return reason
	}
	nextSt := next(controlstore.Running, sig)
	if _, ok := r.scopes[id]; ok {
		r.scopes[id] = next(r.scopes[id], sig)
		return ""
	}
	cur, ok := r.ops[id]
	switch {
	case !ok && (nextSt == controlstore.Running || r.compacted(id)):
	case !ok:
		if len(r.ops) >= r.max {
			if len(r.terminated) > 0 {
				victim := r.terminated[0]
				r.terminated = r.terminated[1:]
				delete(r.ops, victim)
				r.compact(victim)
			} else {
				victim := r.paused[0]
				r.paused = r.paused[1:]
				delete(r.ops, victim)
			}
		}
		r.ops[id] = nextSt
		r.push(id, nextSt)
	case cur == controlstore.Terminated || cur == nextSt:
	default:
		r.paused = remove(r.paused, id)
		if nextSt == controlstore.Running {
			delete(r.ops, id)
		} else {
			r.ops[id] = nextSt
			r.push(id, nextSt)
		}
	}
	return ""
}

func (r *refStore) push(id string, st controlstore.State) {
	if st == controlstore.Paused {
		r.paused = append(r.paused, id)
	} else {
		r.terminated = append(r.terminated, id)
	}
}

func (r *refStore) state(id string) controlstore.State {
	if st, ok := r.scopes[id]; ok {
		return st
	}
	if r.compacted(id) {
		return controlstore.Terminated
	}
	return r.ops[id]
}

// effective is the gate's view of a call of op id ("" for none).
func (r *refStore) effective(id string) controlstore.State {
	st := max(r.scopes["*"], r.scopes[r.me])
	if id != "" {
		st = max(st, r.state(id))
	}
	return st
}

const fuzzAgent = "did:key:z6MkFuzz"

// fuzzIDs are the ids the structured half of a program picks from: ids in
// OpenTelemetry form (which the store parses), the same id in uppercase
// (a different id), an all-zero one (kept as a string), the reserved
// scopes, other agents, and lengths on both sides of the cap.
var fuzzIDs = []string{
	"4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7",
	"4BF92F3577B34DA6A3CE929D0E0E4736:00F067AA0BA902B7",
	"0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331",
	"00000000000000000000000000000000:0000000000000000",
	"trace-1:span-1",
	"plain",
	"*",
	controlstore.AgentOpIDPrefix + fuzzAgent,
	controlstore.AgentOpIDPrefix + "did:key:z6MkOther",
	controlstore.AgentOpIDPrefix,
	"",
	strings.Repeat("m", controlstore.MaxOpIDLen),
	strings.Repeat("m", controlstore.MaxOpIDLen+1),
	"f\xffoo", // invalid UTF-8: only a raw frame can carry it, and it does not decode
}

// fuzzSignals are the signal values structured steps use.
var fuzzSignals = [8]int32{0, 1, 2, 3, 1, 3, -1, 7}

// FuzzDecodeApply feeds frames through the subscriber's decode and apply
// path (proto3 decode with unknown fields discarded, as
// stream/internal/wirecodec does, then Store.Apply) on a store with a tiny
// entry cap, and compares every step with the reference model: Apply never
// panics, rejects exactly what the model rejects, every id's state and the
// gate's decision for every op match, the store never holds more than its
// cap, a terminated id stays terminated unless the model forgot it, and an
// in-flight call is cancelled exactly when its op becomes terminated.
//
// A program is a sequence of steps. A byte b >= 0x80 is one structured
// step: id fuzzIDs[(b>>3)&0x0f], signal fuzzSignals[b&7] (unknown values
// included), encoded as a frame. Any other byte is a length n, and the next
// n bytes are a raw frame.
func FuzzDecodeApply(f *testing.F) {
	step := func(id, sig int) byte { return byte(0x80 | id<<3 | sig) }
	for _, seed := range [][]byte{
		// Pause, resume, terminate of one op, then a resume that cannot lift it.
		{step(0, 1), step(0, 2), step(0, 3), step(0, 2), step(0, 1)},
		// Four terminated ops in a store of three: the oldest is compacted.
		{step(0, 3), step(1, 3), step(2, 3), step(3, 3)},
		// Three paused ops, then a fourth entry: the oldest pause goes.
		{step(0, 1), step(4, 1), step(5, 1), step(2, 3), step(0, 2)},
		// Scopes: agent pause, global terminate, foreign agents, resume.
		{step(7, 1), step(8, 3), step(9, 3), step(6, 3), step(7, 2), step(6, 2)},
		// Unspecified and unknown signals, empty and over-long ids.
		{step(0, 0), step(0, 6), step(0, 7), step(10, 1), step(11, 1), step(12, 1)},
		// Raw: invalid UTF-8 op id, truncated varint, field 0.
		{6, 0x0a, 0x02, 0xff, 0xfe, 0x10, 0x03, 2, 0x10, 0x80, 1, 0x00},
	} {
		f.Add(seed)
	}
	// The golden wire vectors, each as one raw frame.
	vectors, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "wire", "message_*.bin"))
	for _, path := range vectors {
		if b, err := os.ReadFile(path); err == nil && len(b) < 256 {
			f.Add(append([]byte{byte(len(b))}, b...))
		}
	}
	f.Fuzz(func(t *testing.T, program []byte) {
		// A tiny cap and history, so that eviction, compaction and
		// forgetting all happen within a program.
		const maxEntries = 3
		s := testutil.NewStore(t, controlstore.Agent{OrgID: "o", TeamID: "t", AgentID: fuzzAgent},
			controlstore.WithMaxEntries(maxEntries), controlstore.WithTerminatedHistory(1))
		ref := newRef(fuzzAgent, maxEntries, s.Stats().TerminatedHistory/3)
		unmarshal := proto.UnmarshalOptions{DiscardUnknown: true}

		// In-flight calls of every op in the pool, and one with no op.
		probeIDs := append([]string{""}, fuzzIDs[:6]...)
		cancelled := make([]func() error, len(probeIDs))
		for i, id := range probeIDs {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			defer s.Track(controlstore.OpFromID(id), cancel).Release()
			cancelled[i] = ctx.Err
		}
		seen := map[string]bool{}
		everTerminated := map[string]bool{}

		for step := 0; len(program) > 0 && step < 512; step++ {
			var frame []byte
			if b := program[0]; b >= 0x80 {
				program = program[1:]
				frame = appendMessage(fuzzIDs[int(b>>3&0x0f)%len(fuzzIDs)], fuzzSignals[b&7])
			} else {
				n := min(int(program[0]), len(program)-1)
				frame, program = program[1:1+n], program[1+n:]
			}
			var msg wirev1.OpControlMessage
			if err := unmarshal.Unmarshal(frame, &msg); err != nil {
				continue // the subscriber drops it; nothing reaches the store
			}
			id, sig := msg.GetOpId(), controlstore.Signal(msg.GetSignal())
			err := s.Apply(id, sig)
			want := ref.apply(id, sig)
			var re *controlstore.RejectedError
			switch {
			case want == "" && err != nil:
				t.Fatalf("step %d: Apply(%.60q, %v) = %v, model accepts", step, id, sig, err)
			case want != "" && (!errors.As(err, &re) || re.Reason != want):
				t.Fatalf("step %d: Apply(%.60q, %v) = %v, model rejects: %s", step, id, sig, err, want)
			}
			if want == "" {
				seen[id] = true
			}

			if n := s.Len(); n != len(ref.ops) || n > maxEntries {
				t.Fatalf("step %d: Len = %d, model %d, cap %d", step, n, len(ref.ops), maxEntries)
			}
			st := s.Stats()
			if st.Paused != len(ref.paused) || st.Terminated != len(ref.terminated) {
				t.Fatalf("step %d: %d paused, %d terminated; model %d, %d", step, st.Paused, st.Terminated, len(ref.paused), len(ref.terminated))
			}
			for id := range seen {
				got, want := s.State(id), ref.state(id)
				if got != want {
					t.Fatalf("step %d: State(%.60q) = %v, model %v", step, id, got, want)
				}
				if got == controlstore.Terminated {
					everTerminated[id] = true
				} else if everTerminated[id] && !ref.forgotten[id] {
					t.Fatalf("step %d: %.60q was terminated and is now %v, without being forgotten", step, id, got)
				}
				// The gate looks the op up by its parsed key: it must agree.
				if id != "*" && !strings.HasPrefix(id, controlstore.AgentOpIDPrefix) {
					if got, want := gate(s.Check(controlstore.OpFromID(id))), ref.effective(id); got != want {
						t.Fatalf("step %d: Check(%.60q) gives %v, model %v", step, id, got, want)
					}
				}
			}
			for i, id := range probeIDs {
				if got, want := cancelled[i]() != nil, ref.effective(id) == controlstore.Terminated; got != want && !ref.forgotten[id] {
					t.Fatalf("step %d: in-flight call of %.60q cancelled=%v, model terminated=%v", step, id, got, want)
				}
			}
		}
	})
}

// appendMessage encodes an OpControlMessage by hand (proto.Marshal would
// refuse invalid UTF-8, which a hostile gateway can still send).
func appendMessage(id string, sig int32) []byte {
	b := []byte{0x0a}
	b = appendVarint(b, uint64(len(id)))
	b = append(b, id...)
	if sig != 0 {
		b = append(b, 0x10)
		b = appendVarint(b, uint64(int64(sig)))
	}
	return b
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// gate maps a Check result to the state it reflects.
func gate(err error) controlstore.State {
	switch {
	case err == nil:
		return controlstore.Running
	case errors.Is(err, controlstore.ErrTerminated):
		return controlstore.Terminated
	case errors.Is(err, controlstore.ErrPaused):
		return controlstore.Paused
	}
	return controlstore.State(99)
}
