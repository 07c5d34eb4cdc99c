package jetstream_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	jsapi "github.com/nats-io/nats.go/jetstream"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/jetstream"
	"github.com/opcontrol/opcontrol/jetstream/internal/natstest"
	"github.com/opcontrol/opcontrol/jetstream/jetstreamtest"
)

// authServer starts a server where the admin may do anything and user has
// exactly perms.
func authServer(t *testing.T, user natstest.User, perms jetstream.Permissions) *jetstreamtest.Server {
	t.Helper()
	return startServer(t,
		jetstreamtest.WithServerOptions(natstest.Auth(map[natstest.User]*jetstream.Permissions{user: &perms})),
		jetstreamtest.WithAdmin(nats.UserInfo(natstest.AdminUser, natstest.AdminPassword)))
}

// The documented permissions are enough: the subscriber goes live on a
// server that grants exactly those, applies halts on both subjects, and
// resumes after a restart; and they are no more: the agent's user cannot
// publish a halt, nor read another agent's subject.
func TestMinimalPermissions(t *testing.T) {
	for _, prefix := range []string{"", "_INBOX_agent_victim"} {
		t.Run("inbox "+prefix, func(t *testing.T) {
			user := natstest.NewUser(t)
			srv := authServer(t, user, jetstream.AgentPermissions(agent, prefix))
			pub := publisher(t, srv)
			nc := connectWith(t, jetstream.Config{URL: srv.URL(), NKeySeed: user.Seed, InboxPrefix: prefix})
			store := newStore(t)
			sub := newSubscriber(t, nc, store, jetstream.WithCheckpointInterval(100*time.Millisecond))
			rec := recordApplied(sub)
			start(t, sub)
			waitReady(t, sub)
			got := published{}
			publishBoth(t, pub, got, 2)
			waitApplied(t, rec, got)
			// Checkpoints (stream and consumer info) work with these rights.
			testutil.Eventually(t, waitLong, func() bool {
				s := sub.Status()
				a := got[jetstream.Subject(agent)]
				return s.Agent.Position > a[len(a)-1]
			}, "checkpoint moves the agent position past the other agent's halts")
			restart(t, srv, pub.nc)
			publishBoth(t, pub, got, 2)
			waitApplied(t, rec, got)
			checkExactlyOnce(t, rec, got)
			if s := sub.Status(); s.State != jetstream.Live || s.LastError != nil && strings.Contains(s.LastError.Error(), "Permissions") {
				t.Errorf("status %+v", s)
			}

			// No more than that.
			js, err := jsapi.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			before := streamLastSeq(t, srv)
			for _, subject := range []string{jetstream.Subject(agent), jetstream.Subject(other), jetstream.GlobalSubject} {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				_, err := js.Publish(ctx, subject, jetstream.GlobalHalt(controlstore.SignalTerminate).Encode())
				cancel()
				if err == nil {
					t.Errorf("the agent published a halt on %s", subject)
				}
			}
			// A core publish is refused by the server too (no ack is needed
			// to store a message).
			if err := nc.Publish(jetstream.GlobalSubject, jetstream.GlobalHalt(controlstore.SignalTerminate).Encode()); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			if after := streamLastSeq(t, srv); after != before {
				t.Errorf("stream grew from %d to %d: the agent's publish was stored", before, after)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			if _, err := js.CreateConsumer(ctx, jetstream.StreamName, jsapi.ConsumerConfig{
				FilterSubject: jetstream.Subject(other), AckPolicy: jsapi.AckNonePolicy,
			}); err == nil {
				t.Error("the agent created a consumer on another agent's subject")
			}
		})
	}
}

func streamLastSeq(t *testing.T, srv *jetstreamtest.Server) uint64 {
	t.Helper()
	info, err := adminStream(t, srv).Info(ctxTimeout(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// Each documented permission is needed: without it the subscriber is not
// live, says Unauthorized, and names the refused subject.
func TestEachPermissionNeeded(t *testing.T) {
	full := jetstream.AgentPermissions(agent, "")
	cases := map[string]jetstream.Permissions{}
	for i, p := range full.PublishAllow {
		if strings.Contains(p, "CONSUMER.INFO") {
			continue // only the checkpoint needs it: tested below
		}
		perms := full
		perms.PublishAllow = slices.Delete(slices.Clone(full.PublishAllow), i, i+1)
		cases["without publish "+p] = perms
	}
	noSub := full
	noSub.SubscribeAllow = []string{"nothing.>"}
	cases["without the inbox"] = noSub
	for name, perms := range cases {
		t.Run(name, func(t *testing.T) {
			user := natstest.NewUser(t)
			srv := authServer(t, user, perms)
			nc := connectWith(t, jetstream.Config{URL: srv.URL(), NKeySeed: user.Seed})
			sub := newSubscriber(t, nc, newStore(t), jetstream.WithAPITimeout(300*time.Millisecond))
			start(t, sub)
			waitState(t, sub, jetstream.Unauthorized)
			if err := sub.Status().LastError; err == nil || !strings.Contains(err.Error(), "Permissions Violation") {
				t.Errorf("last error %v, want the permission violation", err)
			}
			select {
			case <-sub.Ready():
				t.Error("ready without the permission")
			default:
			}
		})
	}

	// Without consumer info the subscriber is live, but its checkpoints
	// fail: positions of quiet subjects do not follow the stream.
	user := natstest.NewUser(t)
	perms := full
	perms.PublishAllow = slices.DeleteFunc(slices.Clone(full.PublishAllow), func(s string) bool { return strings.Contains(s, "CONSUMER.INFO") })
	srv := authServer(t, user, perms)
	nc := connectWith(t, jetstream.Config{URL: srv.URL(), NKeySeed: user.Seed})
	sub := newSubscriber(t, nc, newStore(t), jetstream.WithCheckpointInterval(100*time.Millisecond), jetstream.WithAPITimeout(200*time.Millisecond))
	start(t, sub)
	waitReady(t, sub)
	pub := publisher(t, srv)
	last, err := pub.HaltAgent(ctxTimeout(t), other, controlstore.SignalPause)
	if err != nil {
		t.Fatal(err)
	}
	// Two checkpoints' worth of time, bounded by observing them fail.
	testutil.Eventually(t, waitLong, func() bool { return nc.LastError() != nil && strings.Contains(nc.LastError().Error(), "CONSUMER.INFO") },
		"a checkpoint was refused")
	if s := sub.Status(); s.Agent.Position >= last || s.State != jetstream.Live {
		t.Errorf("status %+v: want live, position before %d", s, last)
	}
}

// The documented permissions, as an operator would write them.
func ExampleAgentPermissions() {
	p := jetstream.AgentPermissions(controlstore.Agent{OrgID: "acme", TeamID: "payments", AgentID: "bot-7"}, "_INBOX_bot-7")
	fmt.Println("publish allow:")
	for _, s := range p.PublishAllow {
		fmt.Println(" ", s)
	}
	fmt.Println("publish deny:", p.PublishDeny)
	fmt.Println("subscribe allow:", p.SubscribeAllow)
	// Output:
	// publish allow:
	//   $JS.API.STREAM.INFO.AA_OPCONTROL
	//   $JS.API.CONSUMER.CREATE.AA_OPCONTROL.*.assembly.opcontrol.acme.bot-7
	//   $JS.API.CONSUMER.CREATE.AA_OPCONTROL.*.assembly.opcontrol.global
	//   $JS.API.CONSUMER.INFO.AA_OPCONTROL.*
	// publish deny: [assembly.opcontrol.>]
	// subscribe allow: [_INBOX_bot-7.>]
}
