// Package jetstream is the durable second source of a controlstore.Store:
// it reads the agent and fleet-wide halts from the deployment's NATS
// JetStream bus, where the operator API publishes them and from which
// every gateway replica bridges them onto OpControlStream. The gateway
// stream replays nothing, so a halt published while it is down is lost for
// it; the bus keeps 10 minutes of halts, and a subscriber that resumes
// where it left off loses none published while it was away.
//
//	cfg, err := jetstream.FromEnv() // the gateway's AA_OPCONTROL_NATS_* variables
//	if err != nil { ... }           // errors.Is(err, jetstream.ErrNotConfigured): no bus
//	bus := jetstream.NewBusSource(cfg, jetstream.WithFailClosedOnLoss())
//	k, err := opcontrol.FromEnv(ctx, opcontrol.WithSource(bus.Factory))
//
// or, without the kill switch, beside the stream.Subscriber of a store:
//
//	nc, err := jetstream.Connect(cfg)
//	sub, err := jetstream.NewSubscriber(nc, store, jetstream.WithFailClosedOnLoss())
//	go sub.Run(ctx)
//
// The package lives in its own module, github.com/opcontrol/opcontrol/jetstream,
// so that the core module and its users gain no NATS dependency. It never
// imports the NATS server; jetstreamtest, for tests and demos, does.
//
// # The bus
//
// Stream StreamName ("AA_OPCONTROL"), subjects "assembly.opcontrol.>",
// Limits retention, 10 minutes max age, File storage. The gateway creates
// it; a subscriber never creates or updates it (a stream created with
// other settings makes the gateway's bridge refuse it while publishes
// still succeed), and a missing stream is state Misconfigured, retried.
//
// A halt of one agent is published on Subject(agent),
// "assembly.opcontrol.<tenant>.<agent>": tenant is the org id, else the
// team id, else "default"; agent is the agent id, or "unknown" if empty;
// both escaped by EscapeToken (bytes in [A-Za-z0-9-] kept, every other
// byte, '_' included, written "_HH" in uppercase hex, so the mapping is
// injective). A fleet-wide halt is published on GlobalSubject,
// "assembly.opcontrol.global". The subject leaves the team out when the
// org is set, and the literals can collide with real names, so the subject
// alone does not identify an agent.
//
// The payload (Envelope) is compact JSON with no headers, message id or
// timestamp, keys in this order: org_id, team_id, agent_id, op_id (strings),
// signal (integer: 1 PAUSE, 2 RESUME, 3 TERMINATE), global (boolean). An
// agent halt carries the agent's triple as registered and op_id
// "agent:{agent_id}"; a global halt carries empty strings and op_id "*".
//
// Each message is checked as the gateway checks it, in its order
// (Validate): decode strictly (DecodeEnvelope: all six keys, exact names,
// strict types, no duplicates, unknown keys ignored, valid UTF-8; Go's
// encoding/json differs on every one of these points); subject binding (a
// global envelope must arrive on GlobalSubject, any other on the subject
// of its own triple); an agent envelope's triple must equal the store's
// Agent byte for byte (the gateway checks this when it fans out to
// streams); the signal must be 1..3. A global envelope applies to "*"
// whatever its op_id; an agent envelope's op_id is passed to the store
// verbatim, as the gateway forwards it. Anything else is dropped, counted
// by DropReason in Status.Dropped and in metrics, logged at most once per
// reason every 10 s; the consumer stays up.
//
// # Two sources, one store
//
// The subscriber applies through a controlstore.Source of kind SourceBus,
// and reports it live only when both consumers are established and caught
// up: they have delivered everything that was pending for them when they
// were created. The store's rules then reconcile it with the gateway
// stream (see controlstore.Source): a TERMINATE from either applies at
// once; while the bus source runs, the agent and global scopes follow it
// (the gateway's PAUSE/RESUME copies are ignored while it is live, and
// only bridge its outages); those the bus delivers while catching up are
// deferred, and only the last one per scope applies when it goes live.
//
// # Positions
//
// One ordered consumer per subject, each with exactly one filter subject
// (nats-server 2.15.2 skips messages when one consumer has several filters
// and starts from a time, and only a single-filter consumer can be created
// through the filter-scoped API the permissions below rely on). A consumer
// is an ephemeral push consumer without acks, delivering to a fresh inbox
// the subscriber reads in order, with an idle heartbeat (WithHeartbeat).
// The subscriber keeps, per subject, a position: the stream sequence up to
// which every message of the subject it means to apply has been consumed.
// Whenever the link drops (the connection reconnects), the server
// restarts, a consumer is deleted or goes silent, or a delivery is skipped
// (consumer sequences must follow one another, and a heartbeat must not
// announce more deliveries than were received), the subscriber drops both
// consumers and creates new ones at position + 1: nothing is skipped, and
// a message at or before the position is never applied again (it would be
// counted as DropDuplicate).
//
// On the first start, no position is known. By default the consumers start
// by time, at the moment Run began, so that nothing published after Run
// began is lost, even if the bus was unreachable then, and nothing retained
// from before is applied. The server judges a start time by its own clock,
// so the subscriber does not use the local one: on its first stream info
// of a Run it takes the server's timestamp of the answer and subtracts the
// time elapsed since Run began (measured on the local monotonic clock).
// That puts Run's start at most one round trip early, never late: a halt
// published within a round trip before Run may be applied; none published
// after is missed. A step of the server's clock during that time moves the
// start by as much. WithReplayRetained starts from the beginning of the
// retained window instead; its documentation weighs the two.
//
// Positions are kept across calls of Run on one Subscriber; a new
// Subscriber starts afresh.
//
// # Loss detection
//
// Before creating consumers the subscriber reads the stream's first
// sequence. If it has moved past a position + 1, messages after the
// position expired (or were purged) before the subscriber read them, and
// some may have been halts of its subjects; the server keeps nothing of
// them, so the subscriber cannot tell. It says so: state Lost (while live),
// Status.Loss and Status.Losses, the counter opcontrol.jetstream.losses,
// and one error-level log per loss. With WithFailClosedOnLoss the store
// fails closed (Source.HoldFailClosed) until AcknowledgeLoss, an operator's
// recovery. A stream deleted and created again (its creation time changed,
// or its sequences went backwards) restarts the positions by time from
// when the old stream was last seen, and is a loss unless the subscriber
// was live when the old stream went away.
//
// A subject with no halt for a long time would otherwise keep an old
// position while other agents' halts pass and expire, and the next outage
// would look like a loss. So a live subscriber checkpoints every
// WithCheckpointInterval (default one minute) when the stream has grown
// past a position: it reads the stream's last sequence L, then the
// consumer's info; when nothing is pending for the consumer, every message
// of its subject up to L has been delivered, and once those deliveries are
// consumed the position is L. A loss is then reported only if the
// subscriber was away for about the retention minus one checkpoint
// interval or more; after an outage that long, a report is possible even
// if none of the expired messages was ours. A message that expires in the
// milliseconds between the first-sequence check and its delivery is not
// detected.
//
// # Connection
//
// Connect builds the *nats.Conn with what a kill switch needs and nats.go
// does not do by default: reconnect for ever (nats.go gives up after about
// 2 minutes), jittered waits of 100 ms doubling to 2 s, an unreachable bus
// at start not fatal, pings every 10 s (a half-open link is noticed within
// 20-30 s; a consumer's missing heartbeat within 2 × 5 s), credentials
// from a .creds file or an nkey seed, TLS with the system roots. With
// Config.RequireAuth it refuses a bus that would not be both authenticated
// and encrypted; without it such a bus is used with a warning. FromEnv
// reads the gateway's variables with the gateway's meanings, and returns an
// error naming the variable for a bad value.
//
// # Permissions
//
// The agent's NATS user needs, and should have, only AgentPermissions: for
// an agent of org "acme" with id "bot-7",
//
//	publish allow:   $JS.API.STREAM.INFO.AA_OPCONTROL
//	                 $JS.API.CONSUMER.CREATE.AA_OPCONTROL.*.assembly.opcontrol.acme.bot-7
//	                 $JS.API.CONSUMER.CREATE.AA_OPCONTROL.*.assembly.opcontrol.global
//	                 $JS.API.CONSUMER.INFO.AA_OPCONTROL.*
//	publish deny:    assembly.opcontrol.>
//	subscribe allow: _INBOX.>   (or <Config.InboxPrefix>.>)
//
// It can create consumers on its two subjects only, read stream and
// consumer info (counts and settings, not messages), and receive on its
// inbox. It cannot publish a halt, delete a consumer (the server removes
// those the subscriber leaves), pull from the gateway's consumer, or fetch
// stream messages. A refused permission puts the subscriber in state
// Unauthorized with the server's violation as LastError.
//
// # Observability
//
// Metrics (meter "github.com/opcontrol/opcontrol/jetstream"; no attribute
// carries an op id):
//
//	opcontrol.jetstream.up               up-down counter, 1 per live subscriber
//	opcontrol.jetstream.resets           consumer sessions ended, by "reason"
//	opcontrol.jetstream.signals.applied  halts handed to the store, by "signal"
//	opcontrol.jetstream.signals.dropped  messages not applied, by "reason"
//	opcontrol.jetstream.losses           losses detected
//
// Logs go to WithLogger's logger (default slog.Default()) with bounded
// volume: state changes once per change, drops once per reason per
// 10 s, each loss once.
package jetstream
