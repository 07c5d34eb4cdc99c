package jetstream

import (
	"github.com/opcontrol/opcontrol/controlstore"
)

// Permissions are the NATS subject permissions of a user.
type Permissions struct {
	// PublishAllow and PublishDeny are the subjects the user may, and may
	// never, publish to.
	PublishAllow, PublishDeny []string
	// SubscribeAllow are the subjects the user may subscribe to.
	SubscribeAllow []string
}

// AgentPermissions returns the permissions the agent's NATS user needs,
// and no more; inboxPrefix is Config.InboxPrefix ("" for nats.go's
// "_INBOX"). The user may read stream info, create consumers filtered to
// exactly its two subjects (the filter-scoped create API, so no other
// filter is allowed), read its consumers' info, and receive on its inbox.
// It may not delete consumers (the server removes those it leaves, after
// DefaultInactiveThreshold), pull from anyone's consumer, fetch arbitrary
// stream messages, or publish anything on the bus's subjects: an agent
// cannot halt another, nor forge a fleet-wide halt.
//
// Consumer info is allowed for any consumer name, because names are
// single subject tokens and cannot be scoped by prefix; it reveals
// consumers' settings and counts, not messages. With the default inbox
// prefix the user can also receive other clients' replies in the account;
// a per-agent InboxPrefix closes that.
func AgentPermissions(agent controlstore.Agent, inboxPrefix string) Permissions {
	if inboxPrefix == "" {
		inboxPrefix = "_INBOX"
	}
	api := "$JS.API."
	return Permissions{
		PublishAllow: []string{
			api + "STREAM.INFO." + StreamName,
			api + "CONSUMER.CREATE." + StreamName + ".*." + Subject(agent),
			api + "CONSUMER.CREATE." + StreamName + ".*." + GlobalSubject,
			api + "CONSUMER.INFO." + StreamName + ".*",
		},
		PublishDeny:    []string{StreamSubjects},
		SubscribeAllow: []string{inboxPrefix + ".>"},
	}
}
