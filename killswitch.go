package opcontrol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/interceptor"
	"github.com/opcontrol/opcontrol/stream"
)

// Source is a feed of signals that the kill switch runs beside its gateway
// stream, such as the jetstream module's durable bus source. It reports
// its liveness to the store through a controlstore.Source of its own.
type Source interface {
	// Run feeds the store until ctx ends, reconnecting as it needs, and
	// returns nil then.
	Run(ctx context.Context) error
	// Health reports the source's state for readiness probes; it must be
	// cheap and safe for concurrent use, and never include secrets.
	Health() SourceHealth
}

// SourceFactory builds a Source for the kill switch's store. New calls
// it once; an error stops New. It may return a nil Source and a nil error
// to add nothing (a source that is configured from the environment and
// finds itself not configured).
type SourceFactory func(store *controlstore.Store, log *slog.Logger) (Source, error)

// SourceHealth is what a readiness probe says about one source.
type SourceHealth struct {
	// Name is the source's name ("stream", "jetstream").
	Name string `json:"name"`
	// State in the subscribers' words: connecting, live, backoff,
	// unauthorized, misconfigured (and lost, for a bus that lost halts).
	State string `json:"state"`
	// Live reports whether the source is delivering everything published.
	Live bool `json:"live"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
	// LastError is the class of the last failure: a gRPC code name or a
	// short word; never a message that could carry a secret.
	LastError string `json:"last_error,omitempty"`
}

// KillSwitch is a running kill switch: a store kept in step with the
// gateway (and any further sources), and the dial options that gate tool
// calls on it. Create it with New or FromEnv; stop it with Shutdown.
type KillSwitch struct {
	store   *controlstore.Store
	gwConn  *grpc.ClientConn
	sub     *stream.Subscriber
	sources []Source
	gate    []grpc.DialOption
	log     *slog.Logger

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	shutdown sync.Once
}

// FromEnv builds and starts a kill switch configured from the environment
// (see Load), with opts applied on top: an explicit option wins over a
// variable. It returns an error naming the variable or option for a
// missing or malformed value.
func FromEnv(ctx context.Context, opts ...Option) (*KillSwitch, error) {
	cfg, err := Load()
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	return New(ctx, cfg)
}

// New builds and starts a kill switch from cfg: the store, the gateway
// connection (with stream's keepalive and connect settings), the
// subscriber, and each further source, running until Shutdown (or until
// ctx ends, which has the same effect without waiting). It does not wait
// for the gateway: Ready says when the stream is first live.
func New(ctx context.Context, cfg Config) (*KillSwitch, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	storeOpts := append([]controlstore.Option{controlstore.WithLogger(log), controlstore.WithMeterProvider(cfg.MeterProvider)}, cfg.StoreOptions...)
	store, err := controlstore.New(cfg.Agent, storeOpts...)
	if err != nil {
		return nil, err
	}
	creds := cfg.GatewayCredentials
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	gwConn, err := grpc.NewClient(cfg.GatewayAddr, append(stream.GatewayDialOptions(), grpc.WithTransportCredentials(creds))...)
	if err != nil {
		return nil, fmt.Errorf("opcontrol: gateway address %q: %w", cfg.GatewayAddr, err)
	}
	subOpts := []stream.Option{stream.WithLogger(log), stream.WithMeterProvider(cfg.MeterProvider)}
	if cfg.CredentialToken != "" {
		subOpts = append(subOpts, stream.WithCredentialToken(cfg.CredentialToken))
	}
	if cfg.FailClosedAfter != nil {
		subOpts = append(subOpts, stream.WithFailClosedAfter(*cfg.FailClosedAfter))
	}
	k := &KillSwitch{
		store:  store,
		gwConn: gwConn,
		sub:    stream.NewSubscriber(gwConn, store, append(subOpts, cfg.StreamOptions...)...),
		log:    log,
	}
	for _, f := range cfg.Sources {
		src, err := f(store, log)
		if err != nil {
			_ = gwConn.Close()
			return nil, fmt.Errorf("opcontrol: source: %w", err)
		}
		if src != nil {
			k.sources = append(k.sources, src)
		}
	}
	if len(k.sources) == 0 {
		if v, ok := os.LookupEnv(EnvNATSURL); ok && v != "" {
			log.LogAttrs(ctx, slog.LevelError, "opcontrol: "+EnvNATSURL+" is set but no bus source was added: "+
				"halts published while the gateway stream is down will be missed; add the jetstream module's source with WithSource")
		}
	}
	intOpts := append([]interceptor.Option{interceptor.WithMeterProvider(cfg.MeterProvider)}, cfg.InterceptorOptions...)
	k.gate = interceptor.DialOptions(store, intOpts...)

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	k.cancel = cancel
	// ctx ending stops the kill switch too.
	stopOnDone := context.AfterFunc(ctx, cancel)
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		defer stopOnDone()
		_ = k.sub.Run(runCtx)
	}()
	for _, src := range k.sources {
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			if err := src.Run(runCtx); err != nil && runCtx.Err() == nil {
				k.log.LogAttrs(runCtx, slog.LevelError, "opcontrol: a source stopped", slog.String("source", src.Health().Name), slog.String("error", err.Error()))
			}
		}()
	}
	return k, nil
}

// DialOptions returns the dial options that gate every call of a tool
// connection on the kill switch, followed by opts (transport credentials,
// for instance): grpc.NewClient(addr, k.DialOptions(creds)...). The gate
// comes first so that it is the outermost interceptor.
func (k *KillSwitch) DialOptions(opts ...grpc.DialOption) []grpc.DialOption {
	return append(append([]grpc.DialOption(nil), k.gate...), opts...)
}

// Store returns the kill switch's store, for the lower-level packages.
func (k *KillSwitch) Store() *controlstore.Store { return k.store }

// Ready returns a channel closed the first time the gateway stream is live.
func (k *KillSwitch) Ready() <-chan struct{} { return k.sub.Ready() }

// Status is a snapshot of the kill switch's health.
type Status struct {
	// Live reports whether every source is live: nothing published now
	// can be missed.
	Live bool `json:"live"`
	// FailClosed reports whether gated calls are failing with Unavailable.
	FailClosed bool `json:"fail_closed"`
	// Sources lists the gateway stream first, then each further source.
	Sources []SourceHealth `json:"sources"`
}

// Status returns a snapshot of the kill switch's health. It never
// includes the credential token.
func (k *KillSwitch) Status() Status {
	sync := k.store.SyncStatus()
	st := Status{Live: sync.Live, FailClosed: sync.FailClosed}
	st.Sources = append(st.Sources, streamHealth(k.sub.Status()))
	for _, src := range k.sources {
		st.Sources = append(st.Sources, src.Health())
	}
	for _, h := range st.Sources {
		st.Live = st.Live && h.Live
	}
	return st
}

// streamHealth describes the gateway subscriber.
func streamHealth(s stream.Status) SourceHealth {
	h := SourceHealth{Name: "stream", State: s.State.String(), Live: s.State == stream.Live, Since: s.Since}
	if s.LastError != nil && s.State != stream.Live {
		h.LastError = s.LastCode.String()
		if s.LastCode == codes.OK {
			h.LastError = "stream ended"
		}
	}
	return h
}

// Shutdown stops the subscriber and every source, waits for them (or for
// ctx to end first), and closes the gateway connection. The store stays
// readable: tool connections already dialled keep being gated on its last
// state. It returns ctx's error if ctx ended before everything stopped.
func (k *KillSwitch) Shutdown(ctx context.Context) error {
	var err error
	k.shutdown.Do(func() {
		k.cancel()
		done := make(chan struct{})
		go func() { k.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if cerr := k.gwConn.Close(); cerr != nil && err == nil && !errors.Is(cerr, context.Canceled) {
			err = cerr
		}
	})
	return err
}

// Close is Shutdown without a deadline.
func (k *KillSwitch) Close() error { return k.Shutdown(context.Background()) }
