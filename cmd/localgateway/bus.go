package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
	"github.com/opcontrol/opcontrol/stream/gatewaytest/operatorapi"
)

// bus is the embedded deployment bus of -nats: a JetStream server with the
// stream AA_OPCONTROL, the operator API's publisher on it, and the
// gateway's bridge from it to the in-process gateway.
type bus struct {
	srv    *jetstreamtest.Server
	nc     *nats.Conn
	pub    *jetstreamtest.Publisher
	bridge *jetstreamtest.Bridge
}

var _ operatorapi.Publisher = (*bus)(nil)

func startBus(cfg config, gw *gatewaytest.Gateway, log *slog.Logger) (b *bus, err error) {
	opts := []jetstreamtest.ServerOption{jetstreamtest.WithPort(cfg.natsPort)}
	if cfg.natsStore != "" {
		opts = append(opts, jetstreamtest.WithStoreDir(cfg.natsStore))
	}
	b = &bus{}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.srv, err = jetstreamtest.StartServer(opts...); err != nil {
		return nil, fmt.Errorf("NATS on 127.0.0.1:%d: %w", cfg.natsPort, err)
	}
	if b.nc, err = b.srv.Connect(); err != nil {
		return nil, fmt.Errorf("NATS: %w", err)
	}
	if b.pub, err = jetstreamtest.NewPublisher(b.nc); err != nil {
		return nil, fmt.Errorf("NATS publisher: %w", err)
	}
	if b.bridge, err = jetstreamtest.StartBridge(b.nc, gw); err != nil {
		return nil, fmt.Errorf("gateway bridge: %w", err)
	}
	log.Info("bus", "nats", b.srv.URL(), "stream", "AA_OPCONTROL")
	return b, nil
}

// PublishAgentHalt publishes on the bus, as the operator API does, and
// returns once JetStream has stored it; the bridge delivers it to the
// gateway.
func (b *bus) PublishAgentHalt(ctx context.Context, agent controlstore.Agent, sig controlstore.Signal) error {
	_, err := b.pub.HaltAgent(ctx, agent, sig)
	return err
}

// PublishGlobalHalt publishes "*" on the bus.
func (b *bus) PublishGlobalHalt(ctx context.Context, sig controlstore.Signal) error {
	_, err := b.pub.HaltAll(ctx, sig)
	return err
}

// close stops the bridge, the connection and the server; partly started
// buses too.
func (b *bus) close() {
	if b.bridge != nil {
		b.bridge.Close()
	}
	if b.nc != nil {
		b.nc.Close()
	}
	if b.srv != nil {
		b.srv.Close()
	}
}
