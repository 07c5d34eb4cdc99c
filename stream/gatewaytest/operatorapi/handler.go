package operatorapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/stream/gatewaytest"
)

// Handler serves the operator's REST endpoints (see the package
// documentation) on top of a gateway. Create it with New; it is safe for
// concurrent use.
type Handler struct {
	gw   *gatewaytest.Gateway
	reg  *registry
	opts options
	log  *slog.Logger

	// haltSem (capacity 1) makes halts leave one at a time, so that with
	// a bridged publisher the bus and the gateway see them in the same
	// order.
	haltSem chan struct{}
}

// New returns a handler publishing to gw, or an error for an option out of
// range. It panics if gw is nil.
func New(gw *gatewaytest.Gateway, opts ...Option) (*Handler, error) {
	if gw == nil {
		panic("operatorapi: New with a nil *gatewaytest.Gateway")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	h := &Handler{gw: gw, opts: o, log: o.logger, haltSem: make(chan struct{}, 1)}
	h.reg = newRegistry(o.now, o.maxOps, func(owner controlstore.Agent, opID string, sig controlstore.Signal) {
		gw.Publish(owner, opID, sig)
	})
	return h, nil
}

// ServeHTTP routes a request to its endpoint. Unknown paths answer 404 and
// known paths with another method 405 (with Allow), both with an ErrorBody.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), OpsPath)
	if !ok {
		h.notFound(w, r)
		return
	}
	switch {
	case rest == "":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			h.list(w)
		case http.MethodPost:
			h.register(w, r)
		default:
			methodNotAllowed(w, r, "GET, HEAD, POST")
		}
		return
	case OpsPath+rest == GlobalHaltPath:
		if r.Method != http.MethodPost {
			methodNotAllowed(w, r, http.MethodPost)
			return
		}
		h.globalHalt(w, r)
		return
	}
	// "/{id}/{endpoint}": an id escaped as one path segment.
	rawID, endpoint, ok := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	if !ok || !strings.HasPrefix(rest, "/") || strings.Contains(endpoint, "/") {
		h.notFound(w, r)
		return
	}
	a, isAction := parseAction(endpoint)
	if !isAction && endpoint != "halt-agent" {
		h.notFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, r, http.MethodPost)
		return
	}
	id, err := url.PathUnescape(rawID)
	if err != nil {
		writeError(w, &requestError{http.StatusBadRequest, CodeInvalidOpID, "op id is not a valid path segment"})
		return
	}
	if err := checkOpID(id); err != nil {
		writeError(w, err)
		return
	}
	if isAction {
		h.act(w, id, a)
	} else {
		h.haltAgent(w, r, id)
	}
}

// checkOpID refuses ids no agent could be sent: blank, not UTF-8 (the wire
// field is a proto string), longer than an agent accepts, or reserved (an
// agent would read "*" or "agent:…" as a halt of every agent or of one).
func checkOpID(id string) *requestError {
	switch {
	case strings.TrimSpace(id) == "":
		return &requestError{http.StatusBadRequest, CodeBlankOpID, "op id is blank"}
	case !utf8.ValidString(id):
		return &requestError{http.StatusBadRequest, CodeInvalidOpID, "op id is not valid UTF-8"}
	case len(id) > controlstore.MaxOpIDLen:
		return &requestError{http.StatusBadRequest, CodeInvalidOpID,
			fmt.Sprintf("op id is %d bytes, over %d", len(id), controlstore.MaxOpIDLen)}
	case id == controlstore.GlobalOpID || strings.HasPrefix(id, controlstore.AgentOpIDPrefix):
		return &requestError{http.StatusBadRequest, CodeInvalidOpID,
			fmt.Sprintf("op id %q is reserved for halts; use halt-agent or global/halt", id)}
	}
	return nil
}

func (h *Handler) list(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, OpList{Ops: h.reg.snapshot()})
}

func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	f, err := readObject(w, r, "op_id", "org_id", "team_id", "agent_id")
	if err != nil {
		writeError(w, err)
		return
	}
	id := f["op_id"]
	if err := checkOpID(id); err != nil {
		writeError(w, err)
		return
	}
	owner := controlstore.Agent{OrgID: f["org_id"], TeamID: f["team_id"], AgentID: f["agent_id"]}
	owned := owner.AgentID != ""
	if !owned && (owner.OrgID != "" || owner.TeamID != "") {
		writeError(w, badBody("org_id and team_id name an owning agent only together with a non-empty agent_id"))
		return
	}
	rec, err := h.reg.register(id, owner, owned)
	switch {
	case errors.Is(err, errOwnerConflict):
		writeError(w, &requestError{http.StatusConflict, CodeOwnerConflict,
			fmt.Sprintf("op %q is already owned by another agent", id)})
		return
	case errors.Is(err, errRegistryFull):
		writeError(w, &requestError{http.StatusServiceUnavailable, CodeRegistryFull,
			fmt.Sprintf("ops registry holds its maximum of %d ops", h.opts.maxOps)})
		return
	case err != nil:
		panic("operatorapi: unexpected registry error: " + err.Error())
	}
	writeJSON(w, http.StatusCreated, rec)
}

func (h *Handler) act(w http.ResponseWriter, id string, a action) {
	out, err := h.reg.act(id, a)
	if err != nil {
		if errors.Is(err, errUnknownOp) {
			writeError(w, opNotFound(id))
			return
		}
		if te, ok := errors.AsType[*transitionError](err); ok {
			writeError(w, &requestError{http.StatusConflict, CodeInvalidTransition, te.Error()})
			return
		}
		panic("operatorapi: unexpected registry error: " + err.Error())
	}
	switch {
	case out.publishes && !out.delivered:
		h.log.Warn("operatorapi: op has no recorded owning agent; the registry changed but no agent was signalled",
			"op_id", id, "action", a.String(), "state", out.to.String())
	case out.publishes:
		h.log.Info("operatorapi: op signalled", "op_id", id, "action", a.String(), "state", out.to.String())
	default:
		h.log.Info("operatorapi: op already ended; nothing published", "op_id", id, "action", a.String(), "state", out.to.String())
	}
	writeJSON(w, http.StatusOK, ActionAccepted{OpID: id, Action: a.String(), AcceptedAt: h.now()})
}

func (h *Handler) haltAgent(w http.ResponseWriter, r *http.Request, id string) {
	a, err := readAction(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	owner, owned, err := h.reg.owner(id)
	if err != nil {
		writeError(w, opNotFound(id))
		return
	}
	if !owned {
		writeError(w, &requestError{http.StatusConflict, CodeNoOwningAgent,
			fmt.Sprintf("op %q has no recorded owning agent (register it with agent_id)", id)})
		return
	}
	if err := h.halt(r.Context(), &owner, a.signal()); err != nil {
		writeError(w, h.channelError(err, "agent", owner.AgentID, a))
		return
	}
	h.log.Info("operatorapi: agent halted", "agent_id", owner.AgentID, "action", a.String(), "via_op", id)
	writeJSON(w, http.StatusOK, HaltAccepted{Scope: "agent", Target: owner.AgentID, Action: a.String(), AcceptedAt: h.now()})
}

func (h *Handler) globalHalt(w http.ResponseWriter, r *http.Request) {
	a, err := readAction(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := h.halt(r.Context(), nil, a.signal()); err != nil {
		writeError(w, h.channelError(err, "global", "", a))
		return
	}
	h.log.Info("operatorapi: every agent halted", "action", a.String())
	writeJSON(w, http.StatusOK, HaltAccepted{Scope: "global", Target: "", Action: a.String(), AcceptedAt: h.now()})
}

func readAction(w http.ResponseWriter, r *http.Request) (action, error) {
	f, err := readObject(w, r, "action")
	if err != nil {
		return 0, err
	}
	s, ok := f["action"]
	if !ok {
		return 0, &requestError{http.StatusBadRequest, CodeUnknownAction, `missing "action": want "pause", "resume" or "terminate"`}
	}
	a, ok := parseAction(s)
	if !ok {
		return 0, &requestError{http.StatusBadRequest, CodeUnknownAction,
			fmt.Sprintf("unknown action %q: want \"pause\", \"resume\" or \"terminate\"", s)}
	}
	return a, nil
}

// halt publishes sig for agent's halt, or the global one when agent is
// nil. A halt the operator sent is not abandoned because the client went
// away: the publisher's context keeps the request's values but not its
// cancellation, and is bounded by the publish timeout. The same bound
// applies to waiting for an earlier halt, so that a publisher that hangs
// regardless holds up one request, not every later one.
func (h *Handler) halt(ctx context.Context, agent *controlstore.Agent, sig controlstore.Signal) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.opts.publishTimeout)
	defer cancel()
	select {
	case h.haltSem <- struct{}{}:
		defer func() { <-h.haltSem }()
	case <-ctx.Done():
		return fmt.Errorf("an earlier halt is still being published: %w", ctx.Err())
	}
	if p := h.opts.publisher; p != nil {
		var err error
		if agent != nil {
			err = p.PublishAgentHalt(ctx, *agent, sig)
		} else {
			err = p.PublishGlobalHalt(ctx, sig)
		}
		if err != nil || !h.opts.bridged {
			return err
		}
	}
	if agent != nil {
		h.gw.HaltAgent(*agent, sig)
	} else {
		h.gw.HaltAll(sig)
	}
	return nil
}

func (h *Handler) channelError(err error, scope, target string, a action) *requestError {
	h.log.Warn("operatorapi: publishing a halt failed", "scope", scope, "target", target, "action", a.String(), "err", err)
	return &requestError{http.StatusServiceUnavailable, CodeChannelUnavailable, "op control channel error: " + err.Error()}
}

func (h *Handler) now() time.Time { return h.opts.now().UTC() }

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, &requestError{http.StatusNotFound, CodeNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path)})
}

func opNotFound(id string) *requestError {
	return &requestError{http.StatusNotFound, CodeOpNotFound, fmt.Sprintf("unknown op %q", id)}
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, &requestError{http.StatusMethodNotAllowed, CodeMethodNotAllowed,
		fmt.Sprintf("method %s not allowed; allowed: %s", r.Method, allow)})
}

func writeError(w http.ResponseWriter, err error) {
	re, ok := errors.AsType[*requestError](err)
	if !ok {
		panic("operatorapi: writeError with " + err.Error())
	}
	writeJSON(w, re.status, ErrorBody{Code: re.code, Message: re.msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic("operatorapi: encoding a response: " + err.Error()) // only plain structs of strings and times
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
