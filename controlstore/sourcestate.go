package controlstore

import "strconv"

// SourceState is a source's health, in the one vocabulary every source of
// signals uses (package stream's and the jetstream module's State are this
// type), so that a status page, a readiness probe or a metric reads the
// same words whichever source it reports. What each state means for a
// given source is in that source's documentation.
type SourceState int

// Source states. SourceLost is the bus source's alone: live, but halts may
// have been lost while it was away.
const (
	SourceIdle SourceState = iota
	SourceConnecting
	SourceLive
	SourceBackoff
	SourceUnauthorized
	SourceMisconfigured
	SourceLost
)

// String returns the state's lowercase name: "idle", "connecting", "live",
// "backoff", "unauthorized", "misconfigured" or "lost".
func (st SourceState) String() string {
	switch st {
	case SourceIdle:
		return "idle"
	case SourceConnecting:
		return "connecting"
	case SourceLive:
		return "live"
	case SourceBackoff:
		return "backoff"
	case SourceUnauthorized:
		return "unauthorized"
	case SourceMisconfigured:
		return "misconfigured"
	case SourceLost:
		return "lost"
	}
	return "state(" + strconv.Itoa(int(st)) + ")"
}
