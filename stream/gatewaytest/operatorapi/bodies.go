package operatorapi

import "time"

// Paths the handler serves: OpsPath, OpsPath + "/{id}/" + one of pause,
// resume, terminate and halt-agent, and GlobalHaltPath.
const (
	OpsPath        = "/api/v1/ops"
	GlobalHaltPath = OpsPath + "/global/halt"
)

// OpRecord is one op of the registry: an element of OpList, and the body of
// a 201 from POST /api/v1/ops. OrgID, TeamID and AgentID are the owning
// agent's triple; all three are omitted when no owner is recorded (an owner
// always has an AgentID, so an empty AgentID means none).
type OpRecord struct {
	OpID string `json:"op_id"`
	// State is "pending", "running", "paused", "completing" or
	// "terminated".
	State     string    `json:"state"`
	OrgID     string    `json:"org_id,omitempty"`
	TeamID    string    `json:"team_id,omitempty"`
	AgentID   string    `json:"agent_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// OpList is the body of GET /api/v1/ops: every op, ordered by OpID.
type OpList struct {
	Ops []OpRecord `json:"ops"`
}

// ActionAccepted is the body of a 200 from POST /api/v1/ops/{id}/pause,
// /resume and /terminate.
type ActionAccepted struct {
	OpID       string    `json:"op_id"`
	Action     string    `json:"action"`
	AcceptedAt time.Time `json:"accepted_at"`
}

// HaltAccepted is the body of a 200 from POST /api/v1/ops/{id}/halt-agent
// (Scope "agent", Target the owner's agent id) and POST
// /api/v1/ops/global/halt (Scope "global", Target "").
type HaltAccepted struct {
	Scope      string    `json:"scope"`
	Target     string    `json:"target"`
	Action     string    `json:"action"`
	AcceptedAt time.Time `json:"accepted_at"`
}

// ErrorBody is the body of every error response: a stable Code (one of the
// Code constants, safe to match on) and a Message for people.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes of ErrorBody, with their HTTP status.
const (
	CodeBlankOpID            = "blank_op_id"            // 400
	CodeInvalidOpID          = "invalid_op_id"          // 400: not UTF-8, too long, or reserved
	CodeUnknownAction        = "unknown_action"         // 400
	CodeInvalidBody          = "invalid_body"           // 400
	CodeBodyTooLarge         = "body_too_large"         // 413
	CodeUnsupportedMediaType = "unsupported_media_type" // 415
	CodeNotFound             = "not_found"              // 404: no such endpoint
	CodeOpNotFound           = "op_not_found"           // 404: no such op
	CodeMethodNotAllowed     = "method_not_allowed"     // 405
	CodeInvalidTransition    = "invalid_transition"     // 409
	CodeNoOwningAgent        = "no_owning_agent"        // 409
	CodeOwnerConflict        = "owner_conflict"         // 409
	CodeChannelUnavailable   = "channel_unavailable"    // 503: the Publisher failed
	CodeRegistryFull         = "registry_full"          // 503
)
