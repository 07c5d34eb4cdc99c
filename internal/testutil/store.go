// Package testutil is the test infrastructure shared by opcontrol's packages:
// building stores, polling with a deadline, tracing with a real SDK, and
// receiving asynchronously. Nothing outside tests imports it.
package testutil

import (
	"testing"

	"github.com/opcontrol/opcontrol/controlstore"
)

// NewStore returns a new store for agent that logs nothing (unless opts
// give it a logger), failing the test if New refuses the configuration.
func NewStore(tb testing.TB, agent controlstore.Agent, opts ...controlstore.Option) *controlstore.Store {
	tb.Helper()
	s, err := controlstore.New(agent, append([]controlstore.Option{controlstore.WithLogger(nil)}, opts...)...)
	if err != nil {
		tb.Fatalf("controlstore.New(%+v): %v", agent, err)
	}
	return s
}
