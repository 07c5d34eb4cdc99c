package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/faultproxy"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
	"github.com/opcontrol/opcontrol/stream"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// The durability suite runs the real topology (an embedded JetStream
// server with its file store, the gateway's bridge, a gateway, and one
// agent store fed by both a gateway stream and the bus source, each over
// its own fault-injecting link) through a random sequence of faults, with
// agent and global halts published during every outage, and checks three
// guarantees:
//
//   - DurableDelivery: every halt published after the bus source began is
//     applied by it exactly once, in publish order per subject, nothing
//     skipped: at every checkpoint the sequences it applied equal the
//     sequences published.
//   - Effect: at every checkpoint (links restored, sources live) each
//     reserved scope is where the operator's last halt left it, and a
//     terminate stays terminated.
//   - NoSpuriousRelease: a watcher samples both scopes continuously and a
//     probe call waits in the store as a held tool call does; a scope never
//     goes from paused to running, nor does the probe go ahead, unless the
//     operator's last word for it is resume (allowing observeSlack for the
//     watcher's own timing), or a resume of it was published within the
//     lag allowance (the settle window plus a second): an old resume
//     replayed by the gateway's bridge must not release held calls.
//
// OPCONTROL_DURABILITY_FAULTS sets the number of faults (default 30; 10
// with -short) and OPCONTROL_DURABILITY_SEED the seed (default: random,
// logged). scripts/soak.sh runs it long.

const (
	durabilitySettle = 100 * time.Millisecond
	// lagAllowance is how long after its publish a resume may still
	// legitimately release a scope: delivery lag plus the settle window.
	lagAllowance = durabilitySettle + time.Second
	// observeSlack bounds how late a watcher may take the time of what it
	// saw (a goroutine descheduled between the read and time.Now, under
	// -race on a loaded 2-core machine): a release recorded at t happened
	// in [t - observeSlack, t].
	observeSlack = 50 * time.Millisecond
)

type faultKind int

const (
	faultGatewayCut faultKind = iota
	faultBusCut
	faultBothCut
	faultNATSRestart
	faultConsumersDeleted
	faultStreamDropped
	faultGatewayRestart
	numFaultKinds
)

func (k faultKind) String() string {
	return [...]string{"gateway link cut", "bus link cut", "both links cut", "NATS restart (file store kept)",
		"consumers deleted", "gateway stream dropped", "gateway restart"}[k]
}

type publishRecord struct {
	at    time.Time
	scope int // 0 global, 1 agent
	sig   controlstore.Signal
	seq   uint64
}

type faultRecord struct {
	at   time.Time
	kind faultKind
}

type transition struct {
	at       time.Time
	scope    int
	from, to controlstore.State
}

type durabilityWorld struct {
	t   *testing.T
	rng *rand.Rand

	srv             *jetstreamtest.Server
	pub             *testPub
	bridgeNC        *nats.Conn
	bridge          *jetstreamtest.Bridge
	gw              *gatewaytest.Gateway
	gwLink, natsLnk *faultproxy.Proxy
	agentNC         *nats.Conn

	store     *controlstore.Store
	streamSub *stream.Subscriber
	busSub    *jetstream.Subscriber
	applied   *applied
	ids       [2]string

	mu        sync.Mutex
	published []publishRecord
	truth     [2]controlstore.Signal // the operator's last word per scope
	trans     []transition
	released  []time.Time // when the held probe call went ahead
	faultLog  []faultRecord

	faults     [numFaultKinds]int
	recoveries []time.Duration // fault restored → every halt applied and every scope right
}

func newDurabilityWorld(t *testing.T, seed uint64) *durabilityWorld {
	w := &durabilityWorld{t: t, rng: rand.New(rand.NewPCG(seed, 11))}
	w.ids = [2]string{controlstore.GlobalOpID, controlstore.AgentOpIDPrefix + agent.AgentID}
	w.srv = startServer(t)
	w.pub = publisher(t, w.srv)

	gw, err := gatewaytest.Start(gatewaytest.WithToken("agent-token", agent))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	w.gw = gw
	w.bridgeNC = adminConn(t, w.srv)
	w.bridge, err = jetstreamtest.StartBridge(w.bridgeNC, gw, jetstreamtest.WithBridgeBackOff(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.bridge.Close)
	if err := w.bridge.WaitSubscribed(ctxTimeout(t), 1); err != nil {
		t.Fatal(err)
	}

	w.gwLink = newProxy(t, gw.Addr())
	natsAddr := strings.TrimPrefix(w.srv.URL(), "nats://")
	w.natsLnk = newProxy(t, natsAddr)

	w.store = testutil.NewStore(t, agent, controlstore.WithLogger(slog.New(slog.DiscardHandler)),
		controlstore.WithResumeSettle(durabilitySettle))
	w.streamSub = runStream(t, w.gwLink.Addr(), w.store, stream.WithBackoff(fastBackOff), stream.WithReconnectSpread(0))
	w.agentNC = connect(t, "nats://"+w.natsLnk.Addr())
	w.busSub = newSubscriber(t, w.agentNC, w.store)
	w.applied = recordApplied(w.busSub)
	start(t, w.busSub)
	waitReady(t, w.busSub)
	testutil.Eventually(t, waitLong, w.streamSub.Connected, "gateway stream connected")
	w.watch(t)
	return w
}

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// watch records, until the test ends, every change of both scopes (sampled)
// and every time a call held by them went ahead: a probe call waits in
// the store as a held tool call does, and is parked again once the store
// holds calls again.
func (w *durabilityWorld) watch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		last := [2]controlstore.State{controlstore.Running, controlstore.Running}
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for i, id := range w.ids {
				if st := w.store.State(id); st != last[i] {
					w.mu.Lock()
					w.trans = append(w.trans, transition{at: time.Now(), scope: i, from: last[i], to: st})
					w.mu.Unlock()
					last[i] = st
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			// Parked only while a scope holds calls; otherwise check again
			// at the next tick.
			if err := w.store.Check(controlstore.Op{}); errors.Is(err, controlstore.ErrPaused) {
				if err := w.store.Wait(ctx, controlstore.Op{}); err == nil {
					w.mu.Lock()
					w.released = append(w.released, time.Now())
					w.mu.Unlock()
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// publish publishes one halt as the operator API does and records it. The
// record's time is taken before the publish, so that a release caused by
// it can never appear to precede it.
func (w *durabilityWorld) publish(scope int, sig controlstore.Signal) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	w.mu.Lock()
	w.truth[scope] = sig
	at := time.Now()
	w.mu.Unlock()
	var seq uint64
	var err error
	if scope == 0 {
		seq, err = w.pub.HaltAll(ctx, sig)
	} else {
		seq, err = w.pub.HaltAgent(ctx, agent, sig)
	}
	if err != nil {
		w.t.Fatalf("publish %v of %s: %v", sig, w.ids[scope], err)
	}
	w.mu.Lock()
	w.published = append(w.published, publishRecord{at: at, scope: scope, sig: sig, seq: seq})
	w.mu.Unlock()
}

// publishBurst publishes one to four pauses and resumes of random scopes.
func (w *durabilityWorld) publishBurst() {
	for range 1 + w.rng.IntN(4) {
		sig := controlstore.SignalPause
		if w.rng.IntN(2) == 0 {
			sig = controlstore.SignalResume
		}
		w.publish(w.rng.IntN(2), sig)
	}
}

func (w *durabilityWorld) cutGateway() {
	w.gwLink.SetTarget(deadAddr)
	w.gwLink.Reset()
	testutil.Eventually(w.t, waitLong, func() bool { return !w.streamSub.Connected() }, "gateway stream down")
}

func (w *durabilityWorld) cutBus() {
	w.natsLnk.SetTarget(deadAddr)
	w.natsLnk.Reset()
	testutil.Eventually(w.t, waitLong, func() bool { return w.busSub.Status().State != jetstream.Live }, "bus source down")
}

func (w *durabilityWorld) restoreGateway() { w.gwLink.SetTarget(w.gw.Addr()) }

func (w *durabilityWorld) restoreBus() {
	w.natsLnk.SetTarget(strings.TrimPrefix(w.srv.URL(), "nats://"))
}

// inject runs one fault with halts published during it, restores, and
// checks at the checkpoint.
func (w *durabilityWorld) inject(k faultKind) {
	w.t.Helper()
	w.faults[k]++
	w.mu.Lock()
	w.faultLog = append(w.faultLog, faultRecord{time.Now(), k})
	w.mu.Unlock()
	switch k {
	case faultGatewayCut:
		w.cutGateway()
		w.publishBurst()
		w.restoreGateway()
	case faultBusCut:
		w.cutBus()
		w.publishBurst()
		w.restoreBus()
	case faultBothCut:
		w.cutGateway()
		w.cutBus()
		w.publishBurst()
		w.restoreBus()
		w.restoreGateway()
	case faultNATSRestart:
		// The bridge reconnects and replays the whole window to the
		// gateway stream; the agent's source resumes from its position.
		restart(w.t, w.srv, w.pub.nc)
		w.publishBurst()
	case faultConsumersDeleted:
		w.deleteConsumers()
		w.publishBurst()
	case faultStreamDropped:
		w.gw.DropAll(codes.Unavailable)
		w.publishBurst()
	case faultGatewayRestart:
		w.gw.Stop() // halts published meanwhile reach no stream
		w.publishBurst()
		if err := w.gw.Restart(); err != nil {
			w.t.Fatal(err)
		}
	}
	w.checkpoint(k.String())
}

// deleteConsumers deletes every consumer of the stream: the agent's
// ordered consumers and the bridge's.
func (w *durabilityWorld) deleteConsumers() {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	js, err := jsapi.New(w.pub.nc)
	if err != nil {
		w.t.Fatal(err)
	}
	s, err := js.Stream(ctx, jetstream.StreamName)
	if err != nil {
		w.t.Fatal(err)
	}
	names := s.ConsumerNames(ctx)
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	for _, n := range all {
		if err := s.DeleteConsumer(ctx, n); err != nil && !strings.Contains(err.Error(), "not found") {
			w.t.Fatalf("delete consumer %s: %v", n, err)
		}
	}
}

// publishedSeqs returns the published stream sequences per subject.
func (w *durabilityWorld) publishedSeqs() (global, agentSeqs []uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.published {
		if p.scope == 0 {
			global = append(global, p.seq)
		} else {
			agentSeqs = append(agentSeqs, p.seq)
		}
	}
	return global, agentSeqs
}

func (w *durabilityWorld) want(scope int) controlstore.State {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.truth[scope] {
	case controlstore.SignalPause:
		return controlstore.Paused
	case controlstore.SignalTerminate:
		return controlstore.Terminated
	}
	return controlstore.Running
}

// checkpoint waits until both sources are live, the bus source has applied
// every published halt and every scope is where the operator left it; it
// fails at once if the bus source applied anything twice, out of order, or
// skipped a halt.
func (w *durabilityWorld) checkpoint(after string) {
	w.t.Helper()
	start := time.Now()
	wantGlobal, wantAgent := w.publishedSeqs()
	var why string
	ok := testutil.Poll(waitLong, func() bool {
		for _, c := range []struct {
			name      string
			got, want []uint64
		}{
			{"global", w.applied.seqs(jetstream.GlobalSubject), wantGlobal},
			{"agent", w.applied.seqs(jetstream.Subject(agent)), wantAgent},
		} {
			if len(c.got) > len(c.want) || !slices.Equal(c.got, c.want[:len(c.got)]) {
				w.t.Fatalf("DurableDelivery violated after %s: the bus source applied %s sequences %v, published %v",
					after, c.name, c.got, c.want)
			}
			if len(c.got) < len(c.want) {
				why = fmt.Sprintf("%s: %d of %d halts applied", c.name, len(c.got), len(c.want))
				return false
			}
		}
		for i, id := range w.ids {
			if got, want := w.store.State(id), w.want(i); got != want {
				why = fmt.Sprintf("%s is %v, want %v", id, got, want)
				return false
			}
		}
		if !w.streamSub.Connected() || w.busSub.Status().State != jetstream.Live {
			why = fmt.Sprintf("stream connected %v, bus %v", w.streamSub.Connected(), w.busSub.Status().State)
			return false
		}
		return true
	})
	if !ok {
		w.t.Fatalf("DurableDelivery or Effect violated after %s: not recovered within %v: %s", after, waitLong, why)
	}
	w.recoveries = append(w.recoveries, time.Since(start))
}

// releaseAllowed reports whether scope may have gone from paused to
// running at a moment recorded as t: the operator's last word for it at
// some moment in [t - observeSlack, t] is resume (or it has none), or a
// resume of it was published within lagAllowance before t (delivered late,
// in order). Under w.mu.
func (w *durabilityWorld) releaseAllowed(scope int, t time.Time) (bool, *publishRecord) {
	var lastBefore, lastResume *publishRecord
	for i := range w.published {
		p := &w.published[i]
		if p.scope != scope || p.at.After(t) {
			continue
		}
		if !p.at.After(t.Add(-observeSlack)) {
			lastBefore = p
		}
		if p.sig == controlstore.SignalResume {
			lastResume = p
		}
	}
	switch {
	case lastBefore == nil || lastBefore.sig == controlstore.SignalResume:
		return true, lastResume
	case lastResume != nil && t.Sub(lastResume.at) <= lagAllowance:
		return true, lastResume
	}
	return false, lastResume
}

// faultAt names the fault injected last before t. Under w.mu.
func (w *durabilityWorld) faultAt(t time.Time) string {
	last := "none"
	for _, f := range w.faultLog {
		if f.at.After(t) {
			break
		}
		last = fmt.Sprintf("%s, injected %v earlier", f.kind, t.Sub(f.at).Round(time.Millisecond))
	}
	return last
}

// checkReleases checks every paused → running change the watcher saw,
// every time the held probe call went ahead, and that nothing left the
// terminated state. It returns how many releases it checked, and how many
// violations it reported.
func (w *durabilityWorld) checkReleases() (releases, violations int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, tr := range w.trans {
		if tr.from == controlstore.Terminated {
			violations++
			w.t.Errorf("TerminateAbsorbing violated: %s went from terminated to %v at %v (last fault: %s)",
				w.ids[tr.scope], tr.to, tr.at, w.faultAt(tr.at))
			continue
		}
		if tr.from != controlstore.Paused || tr.to != controlstore.Running {
			continue
		}
		releases++
		if ok, lastResume := w.releaseAllowed(tr.scope, tr.at); !ok {
			violations++
			w.t.Errorf("NoSpuriousRelease violated: %s was released at %v while the operator's word was pause (%s; last fault: %s)",
				w.ids[tr.scope], tr.at.Format(time.StampMicro), describeResume(lastResume, tr.at), w.faultAt(tr.at))
		}
	}
	for _, at := range w.released {
		releases++
		for scope := range 2 {
			if ok, lastResume := w.releaseAllowed(scope, at); !ok {
				violations++
				w.t.Errorf("NoSpuriousRelease violated: a call held by %s went ahead at %v while the operator's word was pause (%s; last fault: %s)",
					w.ids[scope], at.Format(time.StampMicro), describeResume(lastResume, at), w.faultAt(at))
			}
		}
	}
	return releases, violations
}

func describeResume(p *publishRecord, t time.Time) string {
	if p == nil {
		return "no resume published before"
	}
	return fmt.Sprintf("last resume, seq %d, published %v earlier", p.seq, t.Sub(p.at).Round(time.Millisecond))
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, v)
	}
	return n
}

// TestDurability runs the fault sequence, then ends with both halts
// terminated during an outage, and checks that they stay so through more
// faults and resumes.
func TestDurability(t *testing.T) {
	faults := envInt(t, "OPCONTROL_DURABILITY_FAULTS", 30)
	if testing.Short() && os.Getenv("OPCONTROL_DURABILITY_FAULTS") == "" {
		faults = 10
	}
	seed := uint64(envInt(t, "OPCONTROL_DURABILITY_SEED", int(time.Now().UnixNano()&0x7fffffff)))
	t.Logf("seed %d (OPCONTROL_DURABILITY_SEED), %d faults", seed, faults)
	w := newDurabilityWorld(t, seed)
	began := time.Now()
	for i := range faults {
		// Every kind comes up in turn at first, then at random.
		k := faultKind(i % int(numFaultKinds))
		if i >= int(numFaultKinds) {
			k = faultKind(w.rng.IntN(int(numFaultKinds)))
		}
		w.inject(k)
	}

	// The operator terminates the agent and everything while the agent
	// is cut off from both; then resumes, through more faults.
	w.cutGateway()
	w.cutBus()
	w.publish(1, controlstore.SignalTerminate)
	w.publish(0, controlstore.SignalTerminate)
	w.restoreBus()
	w.restoreGateway()
	w.checkpoint("terminates during an outage of both links")
	for _, k := range []faultKind{faultNATSRestart, faultGatewayCut, faultBusCut} {
		w.faults[k]++
		w.publish(0, controlstore.SignalResume) // RESUME never lifts a terminate
		w.publish(1, controlstore.SignalResume)
		w.mu.Lock()
		w.truth = [2]controlstore.Signal{controlstore.SignalTerminate, controlstore.SignalTerminate}
		w.mu.Unlock()
		switch k {
		case faultNATSRestart:
			restart(t, w.srv, w.pub.nc)
		case faultGatewayCut:
			w.cutGateway()
			w.restoreGateway()
		case faultBusCut:
			w.cutBus()
			w.restoreBus()
		}
		w.checkpoint("resumes after the terminates, " + k.String())
	}
	releases, violations := w.checkReleases()

	var total int
	var kinds []string
	for k, n := range w.faults {
		total += n
		kinds = append(kinds, fmt.Sprintf("%s %d", faultKind(k), n))
	}
	st := w.store.Stats()
	w.mu.Lock()
	n := len(w.published)
	w.mu.Unlock()
	t.Logf("%d faults in %v (%s); %d halts published, %d applied by the bus source; %d checkpoints held DurableDelivery and Effect; %d violations of NoSpuriousRelease and TerminateAbsorbing (%d releases checked)",
		total, time.Since(began).Round(time.Millisecond), strings.Join(kinds, ", "), n, w.applied.len(), len(w.recoveries), violations, releases)
	t.Logf("recovery (restored → every halt applied, every scope right, both sources live): p50 %v, p99 %v, max %v",
		percentile(w.recoveries, 0.50), percentile(w.recoveries, 0.99), percentile(w.recoveries, 1))
	t.Logf("store: applied %d, superseded %d (gateway copies of bus halts), deferred %d, settled %d, settle cancelled %d; bridge %+v",
		st.Applied, st.Superseded, st.Deferred, st.Settled, st.SettleCancelled, w.bridge.Stats())
	if st.Superseded == 0 {
		t.Error("no gateway copy was superseded: the gateway stream carried nothing, so the suite did not test two sources")
	}
}
