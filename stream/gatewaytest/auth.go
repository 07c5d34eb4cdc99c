package gatewaytest

import (
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/opcontrol/opcontrol/controlstore"
	"github.com/opcontrol/opcontrol/internal/contract"
)

// Metadata keys the gateway reads a credential from, in this order.
const (
	// CredentialTokenKey carries the token as it is.
	CredentialTokenKey = contract.CredentialTokenKey
	// AuthorizationKey carries "Bearer <token>" (or "bearer <token>").
	AuthorizationKey = contract.AuthorizationKey
)

// credentialToken resolves the caller's token like the real gateway's
// enrich interceptor: x-aa-credential-token first (ASCII, trimmed, empty
// means absent), otherwise authorization (ASCII), trimmed, then "Bearer "
// or "bearer " cut off and the rest trimmed: "  Bearer tok" is accepted.
// Only the first value of each key is read. It returns "" for no token.
func credentialToken(md metadata.MD) string {
	if v := md.Get(CredentialTokenKey); len(v) > 0 && isASCII(v[0]) {
		if tok := strings.TrimSpace(v[0]); tok != "" {
			return tok
		}
	}
	if v := md.Get(AuthorizationKey); len(v) > 0 && isASCII(v[0]) {
		auth := strings.TrimSpace(v[0])
		for _, prefix := range [...]string{"Bearer ", "bearer "} {
			if rest, ok := strings.CutPrefix(auth, prefix); ok {
				return strings.TrimSpace(rest)
			}
		}
	}
	return ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// RegisterToken makes token the credential of agent (replacing any earlier
// registration of token). Subscriptions presenting it must request exactly
// agent's triple.
func (g *Gateway) RegisterToken(token string, agent controlstore.Agent) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tokens[token] = agent
}

// RevokeToken forgets token. Streams already admitted with it stay up;
// later subscribes with it are Unauthenticated.
func (g *Gateway) RevokeToken(token string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.tokens, token)
}

// identity is what the real gateway hashes (SHA-256, first 16 bytes) to
// bind a subscription to its caller: "{org}/{team}/{agent}". Comparing the
// joined strings reproduces its behaviour, including its ambiguity: a "/"
// inside a field moves between fields unnoticed, so org "a/b" with team
// "c" is the identity of org "a" with team "b/c".
func identity(a controlstore.Agent) string {
	return a.OrgID + "/" + a.TeamID + "/" + a.AgentID
}
