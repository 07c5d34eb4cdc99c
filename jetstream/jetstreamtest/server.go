package jetstreamtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/jetstream"
)

// StreamMaxAge is the stream's retention, as the gateway sets it.
const StreamMaxAge = 10 * time.Minute

// readyTimeout bounds a start or restart.
const readyTimeout = 20 * time.Second

// StreamConfig returns the stream's configuration exactly as the gateway
// creates it: subjects assembly.opcontrol.>, Limits retention, max age
// 10 minutes, File storage, everything else default (discard old, one
// replica, two-minute duplicate window).
func StreamConfig() jsapi.StreamConfig {
	return jsapi.StreamConfig{
		Name:      jetstream.StreamName,
		Subjects:  []string{jetstream.StreamSubjects},
		Retention: jsapi.LimitsPolicy,
		MaxAge:    StreamMaxAge,
		Storage:   jsapi.FileStorage,
	}
}

// CreateStream creates the stream, or updates it, as the gateway does at
// each bridge (re)connect. It fails, as the gateway's bridge does, when a
// stream of that name exists with settings that cannot be changed (such as
// Memory storage).
func CreateStream(ctx context.Context, js jsapi.JetStream) (jsapi.Stream, error) {
	st, err := js.CreateOrUpdateStream(ctx, StreamConfig())
	if err != nil {
		return nil, fmt.Errorf("jetstreamtest: create stream %s: %w", jetstream.StreamName, err)
	}
	return st, nil
}

// Server is an embedded NATS server with JetStream, listening on a
// loopback port, its file store in a directory that survives Restart.
// Its methods are safe for concurrent use.
type Server struct {
	cfg serverConfig

	mu     sync.Mutex
	opts   server.Options
	srv    *server.Server
	port   int
	closed bool
}

type serverConfig struct {
	dir       string
	ownDir    bool
	tune      []func(*server.Options)
	admin     []nats.Option
	noStream  bool
	streamCfg *jsapi.StreamConfig
	port      int // -1: a free one
}

// ServerOption configures a Server.
type ServerOption func(*serverConfig)

// WithPort listens on port of 127.0.0.1 (default: a free port, as is
// port 0), for a server a person connects to by a known address.
func WithPort(port int) ServerOption {
	return func(c *serverConfig) {
		if port > 0 && port < 1<<16 {
			c.port = port
		}
	}
}

// WithStoreDir keeps the file store in dir (default: a temporary
// directory removed by Close).
func WithStoreDir(dir string) ServerOption { return func(c *serverConfig) { c.dir = dir } }

// WithServerOptions lets fn adjust the server's options (users,
// permissions, TLS) before each start. The host, port, JetStream switch
// and store directory are set afterwards and win.
func WithServerOptions(fn func(*server.Options)) ServerOption {
	return func(c *serverConfig) {
		if fn != nil {
			c.tune = append(c.tune, fn)
		}
	}
}

// WithAdmin sets the options with which Connect, and the stream creation
// at start, connect: credentials, when the server requires them.
func WithAdmin(opts ...nats.Option) ServerOption {
	return func(c *serverConfig) { c.admin = append(c.admin, opts...) }
}

// WithoutStream starts the server without creating the stream: for tests
// of a missing stream, or of the bridge, which creates it.
func WithoutStream() ServerOption { return func(c *serverConfig) { c.noStream = true } }

// WithStreamConfig creates the stream with cfg instead of StreamConfig():
// for tests of a stream the gateway would refuse.
func WithStreamConfig(cfg jsapi.StreamConfig) ServerOption {
	return func(c *serverConfig) { c.streamCfg = &cfg }
}

// StartServer starts a server on a free loopback port and, unless
// WithoutStream, creates the stream.
func StartServer(opts ...ServerOption) (*Server, error) {
	s := &Server{cfg: serverConfig{port: -1}}
	for _, o := range opts {
		if o != nil {
			o(&s.cfg)
		}
	}
	if s.cfg.dir == "" {
		dir, err := os.MkdirTemp("", "jetstreamtest-")
		if err != nil {
			return nil, fmt.Errorf("jetstreamtest: store directory: %w", err)
		}
		s.cfg.dir, s.cfg.ownDir = dir, true
	}
	if err := s.start(s.cfg.port); err != nil {
		s.Close()
		return nil, err
	}
	if !s.cfg.noStream {
		if err := s.createStream(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) createStream() error {
	nc, err := s.Connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jsapi.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if s.cfg.streamCfg != nil {
		_, err = js.CreateStream(ctx, *s.cfg.streamCfg)
	} else {
		_, err = CreateStream(ctx, js)
	}
	return err
}

// start starts the server on port (-1: a free one). Under mu or before
// the Server is shared.
func (s *Server) start(port int) error {
	o := server.Options{}
	for _, fn := range s.cfg.tune {
		fn(&o)
	}
	o.Host = "127.0.0.1"
	o.Port = port
	o.JetStream = true
	o.StoreDir = s.cfg.dir
	o.NoLog, o.NoSigs = true, true
	o.DisableShortFirstPing = true
	if o.ServerName == "" {
		o.ServerName = "jetstreamtest"
	}
	srv, err := server.NewServer(&o)
	if err != nil {
		return fmt.Errorf("jetstreamtest: server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return errors.New("jetstreamtest: the server did not become ready in " + readyTimeout.String())
	}
	s.srv, s.opts = srv, o
	if addr, ok := srv.Addr().(*net.TCPAddr); ok {
		s.port = addr.Port
	}
	return nil
}

// URL returns the server's client URL ("nats://127.0.0.1:port"). It does
// not change across Restart.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "nats://127.0.0.1:" + strconv.Itoa(s.port)
}

// Connect connects to the server with the WithAdmin options and opts, for
// test code: publishing, creating or deleting things. The connection
// reconnects at once and for ever, so that test code is not held up by
// nats.go's 2-second reconnect wait after a Restart.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	all := []nats.Option{
		nats.Name("jetstreamtest-admin"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(10 * time.Millisecond),
		nats.ReconnectJitter(10*time.Millisecond, 10*time.Millisecond),
	}
	all = append(append(all, s.cfg.admin...), opts...)
	nc, err := nats.Connect(s.URL(), all...)
	if err != nil {
		return nil, fmt.Errorf("jetstreamtest: connect: %w", err)
	}
	return nc, nil
}

// Running reports whether the server is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil
}

// Stop shuts the server down, closing every client connection, and keeps
// its store; Restart starts it again. It does nothing on a stopped server.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Restart stops the server if it is running and starts it again on the
// same port with the same store, as a new process would. It returns once
// the server accepts connections; clients notice and reconnect at their
// own pace, and a publish on a connection that has not yet noticed is
// lost, as with a real server (the operator API then answers 503). It
// fails on a closed server, or if the port cannot be bound again.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("jetstreamtest: Restart on a closed server")
	}
	s.stopLocked()
	return s.start(s.port)
}

// Close stops the server for good and removes the store directory it
// made. It is safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.stopLocked()
	if s.cfg.ownDir {
		_ = os.RemoveAll(s.cfg.dir)
	}
}

// NATSServer returns the running server, or nil while stopped, for what
// the other methods do not cover (monitoring, account state).
func (s *Server) NATSServer() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}
