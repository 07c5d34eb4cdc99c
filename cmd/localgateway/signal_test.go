//go:build unix

package main

import (
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/opcontrol/opcontrol/internal/testutil"
)

// SIGINT and SIGTERM shut the command down cleanly, with an agent's stream
// open and an idle keep-alive connection on the operator API: run returns
// 0, both ports are free again, and (TestMain) no goroutine is left.
//
// The signal goes to the whole test process; run has registered for it
// before it prints the banner, and startCmd waits for the banner, so the
// signal never meets the default action (exit).
func TestSignalShutsDownCleanly(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			p := startCmd(t, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-agent", acmeFlag())
			k := p.killSwitch(t, 0)
			waitLive(t, k)
			expect(t, "list", http.StatusOK, p.do(t, http.MethodGet, "", "", "")) // leaves a keep-alive connection

			if err := syscall.Kill(syscall.Getpid(), sig); err != nil {
				t.Fatal(err)
			}
			if code := p.wait(t); code != 0 {
				t.Fatalf("exit status %d after %v, want 0; stderr:\n%s", code, sig, p.stderr.String())
			}
			if !strings.Contains(p.stderr.String(), `msg="shutting down"`) {
				t.Errorf("no shutdown logged:\n%s", p.stderr.String())
			}
			gatewayURL := p.envs[0][0]
			grpcAddr := strings.TrimPrefix(gatewayURL, "AA_GATEWAY_URL=http://")
			httpAddr := strings.TrimPrefix(strings.TrimSuffix(p.ops, "/api/v1/ops"), "http://")
			// Polled: the agent reconnecting meanwhile may, rarely, take
			// the ephemeral HTTP port as its own for a moment.
			for _, addr := range []string{grpcAddr, httpAddr} {
				testutil.Eventually(t, waitShort, func() bool {
					lis, err := net.Listen("tcp", addr)
					if err == nil {
						_ = lis.Close()
					}
					return err == nil
				}, "%s still taken after shutdown", addr)
			}
			// The agent sees its gateway go away.
			testutil.Eventually(t, waitLong, func() bool { return !k.Status().Live }, "the agent's stream outlived the gateway")
		})
	}
}
