package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/opcontrol/opcontrol"
	"github.com/opcontrol/opcontrol/internal/testutil"
	"github.com/opcontrol/opcontrol/internal/toolserver"
)

// Whatever a test does, the command leaves nothing running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Generous deadlines for a loaded 2-core machine under -race; a passing
// test never waits for them.
const (
	waitShort = testutil.WaitShort
	waitLong  = testutil.WaitLong
)

// bannerEnd is the banner's last line: once it is out, the whole banner is
// (printBanner writes it at once) and both listeners are up.
const bannerEnd = "# every op and its state\n"

// proc is the command's run function running in-process.
type proc struct {
	stdout, stderr testutil.SyncBuffer
	cancel         context.CancelFunc
	done           chan int
	banner
}

// startCmd runs the command with args until the test ends, and waits for
// its banner. At cleanup it stops the command and expects exit status 0,
// unless the test has collected the status itself (wait).
func startCmd(t *testing.T, args ...string) *proc {
	t.Helper()
	p := launch(t, context.Background(), args...)
	testutil.Eventually(t, waitLong, func() bool {
		return strings.Contains(p.stdout.String(), bannerEnd) || p.exited()
	}, "no banner; stderr:\n%s", p.stderr.String())
	if p.exited() {
		t.Fatalf("the command exited at start; stderr:\n%s", p.stderr.String())
	}
	p.parseBanner(t)
	return p
}

// launch runs the command without waiting for anything.
func launch(t *testing.T, ctx context.Context, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	p := &proc{cancel: cancel, done: make(chan int, 1)}
	go func() { p.done <- run(ctx, args, &p.stdout, &p.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code, ok := <-p.done:
			if ok && code != 0 {
				t.Errorf("exit status %d after cancel; stderr:\n%s", code, p.stderr.String())
			}
		case <-time.After(waitLong):
			t.Errorf("the command did not stop within %v of cancel", waitLong)
		}
	})
	return p
}

func (p *proc) exited() bool { return len(p.done) > 0 }

// wait returns the exit status, within the deadline.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-p.done:
		close(p.done) // cleanup sees it collected
		return code
	case <-time.After(waitLong):
		t.Fatalf("the command did not exit within %v; stderr:\n%s", waitLong, p.stderr.String())
		return -1
	}
}

func (p *proc) parseBanner(t *testing.T) {
	t.Helper()
	p.banner = parseBanner(t, p.stdout.String())
}

// banner is what a test reads from the command's banner.
type banner struct {
	ops  string     // the OPS= URL
	envs [][]string // each agent's environment line, as shell words
}

func parseBanner(t *testing.T, text string) banner {
	t.Helper()
	var b banner
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, opcontrol.EnvGatewayURL+"="):
			b.envs = append(b.envs, shellWords(t, strings.TrimSuffix(line, `\`)))
		case strings.HasPrefix(line, "OPS="):
			b.ops = strings.TrimPrefix(line, "OPS=")
		}
	}
	if b.ops == "" || len(b.envs) == 0 {
		t.Fatalf("banner without OPS= or an environment line:\n%s", text)
	}
	return b
}

func testLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// setEnv sets agent i's printed environment for the test, as a person
// pasting the line would.
func (p *proc) setEnv(t *testing.T, i int) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, w := range p.envs[i] {
		name, val, ok := strings.Cut(w, "=")
		if !ok {
			t.Fatalf("environment word %q is not NAME=value", w)
		}
		env[name] = val
		t.Setenv(name, val)
	}
	t.Setenv(opcontrol.EnvFailClosedAfter, "")
	if _, printed := env[opcontrol.EnvNATSURL]; !printed {
		t.Setenv(opcontrol.EnvNATSURL, "")
	}
	return env
}

// killSwitch is a kill switch configured only from agent i's printed
// environment, live on the command's gateway.
func (p *proc) killSwitch(t *testing.T, i int, opts ...opcontrol.Option) *opcontrol.KillSwitch {
	t.Helper()
	p.setEnv(t, i)
	k, err := opcontrol.FromEnv(context.Background(), append([]opcontrol.Option{opcontrol.WithLogger(nil)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return k
}

func waitLive(t *testing.T, k *opcontrol.KillSwitch) {
	t.Helper()
	select {
	case <-k.Ready():
	case <-time.After(waitLong):
		t.Fatalf("kill switch not live: %+v", k.Status())
	}
}

// shellWords splits a line as a POSIX shell splits the words printBanner
// writes: blanks between words, single-quoted strings, and backslash
// escapes outside them (how a quote inside a quoted string is written).
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\'':
			quoted = false
		case quoted:
			w.WriteByte(c)
		case c == '\'':
			quoted, inWord = true, true
		case c == '\\' && i+1 < len(line):
			i++
			w.WriteByte(line[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		t.Fatalf("unterminated quote in %q", line)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// reply is an HTTP answer.
type reply struct {
	status int
	body   []byte
}

// do sends a request to the command's operator API, as curl would.
func (p *proc) do(t *testing.T, method, path, contentType, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, p.ops+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := &http.Client{
		Timeout: waitLong,
		// curl does not follow redirects either: a redirect is an answer.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); len(b) > 0 && ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return reply{resp.StatusCode, b}
}

// postJSON is curl --json.
func (p *proc) postJSON(t *testing.T, path string, v any) reply {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return p.do(t, http.MethodPost, path, "application/json", string(b))
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	return v
}

// expect fails unless the answer has the status, and returns the body.
func expect(t *testing.T, what string, wantStatus int, r reply) []byte {
	t.Helper()
	if r.status != wantStatus {
		t.Fatalf("%s: status %d, want %d; body %s", what, r.status, wantStatus, r.body)
	}
	return r.body
}

// tools is a real tool server and a client on a connection gated by k.
func tools(t *testing.T, k *opcontrol.KillSwitch) (*toolserver.Server, *toolserver.Client) {
	t.Helper()
	srv, err := toolserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	conn, err := grpc.NewClient(srv.Addr(), k.DialOptions(grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return srv, toolserver.NewClient(conn)
}

// registration is the body of POST /api/v1/ops with the owning agent, as
// the example agent sends it.
type registration struct {
	OpID    string `json:"op_id"`
	OrgID   string `json:"org_id,omitempty"`
	TeamID  string `json:"team_id,omitempty"`
	AgentID string `json:"agent_id,omitempty"`
}
