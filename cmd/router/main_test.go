package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"go.uber.org/goleak"
)

var binary string // the router binary built for these tests

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "natsroute-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "router")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the router:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// process is a running router binary.
type process struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	done           chan error
}

func start(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	return startProgram(t, binary, env, args...)
}

// startProgram runs any program as start runs the router: output kept,
// killed when the test ends.
func startProgram(t *testing.T, path string, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(path, args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// stop sends SIGTERM and returns the exit code and how long it took.
func (p *process) stop(t *testing.T) (int, time.Duration) {
	t.Helper()
	t0 := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), time.Since(t0)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, time.Since(t0)
	case <-time.After(10 * time.Second):
		t.Fatalf("router did not exit within 10 s of SIGTERM; stderr:\n%s", p.stderr)
		return -1, 0
	}
}

// runCmd runs the binary to completion.
func runCmd(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeEmbeddedAndSubcommands(t *testing.T) {
	natsPort, httpPort := freePort(t), freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	web := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	srv := start(t, nil, "--listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--store-dir", t.TempDir(),
		"--http", fmt.Sprintf("127.0.0.1:%d", httpPort), "--log-format", "json")
	waitFor(t, 20*time.Second, "/readyz", func() bool { code, _ := httpGet(web + "/readyz"); return code == 200 })
	if !strings.Contains(srv.stderr.String(), `req route.request '{\"key\":\"user-42\"}'`) {
		t.Errorf("the start-up log does not say how to connect:\n%s", srv.stderr)
	}
	if code, body := httpGet(web + "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}

	// watch runs in the background and must print the join.
	watch := start(t, nil, "watch", "--server", url)
	waitFor(t, 10*time.Second, "watch to start", func() bool { return strings.Contains(watch.stdout.String(), "watching") })

	env := []string{"NATS_URL=" + url} // the nats CLI's variable works too
	// An empty ring: the error says "natsroute:" once.
	if _, errOut, code := runCmd(t, env, "select", "--key", "user-42"); code != 1 || errOut != "router: natsroute: no node available: the ring has no members (503)\n" {
		t.Fatalf("select on an empty ring: %d %q", code, errOut)
	}
	if out, errOut, code := runCmd(t, env, "report", "--node", "node-a", "--cpu", "20", "--memory", "30", "--connections", "5", "--latency", "3ms"); code != 0 || !strings.Contains(out, "reported node-a") {
		t.Fatalf("report: %d %q %q", code, out, errOut)
	}
	if _, errOut, code := runCmd(t, env, "report", "--node", "node-b", "--cpu", "50", "--memory", "30", "--weight", "2", "--json"); code != 0 {
		t.Fatalf("report node-b: %d %q", code, errOut)
	}
	waitFor(t, 10*time.Second, "watch to show both joins", func() bool {
		s := watch.stdout.String()
		return strings.Contains(s, "node-a") && strings.Contains(s, "node-b×2")
	})
	var owner string
	waitFor(t, 10*time.Second, "select to answer", func() bool {
		out, _, code := runCmd(t, env, "select", "--key", "user-42")
		owner = strings.TrimSpace(out)
		return code == 0 && (owner == "node-a" || owner == "node-b")
	})
	if out, _, code := runCmd(t, env, "select", "--key", "user-42", "--count", "2", "--json"); code != 0 || !strings.Contains(out, `"nodes"`) || !strings.Contains(out, `"revision"`) {
		t.Fatalf("select --json: %d %s", code, out)
	}
	if out, _, code := runCmd(t, env, "select", "--strategy", "ResourceAware", "--candidates", "node-a"); code != 0 || strings.TrimSpace(out) != "node-a" {
		t.Fatalf("select ResourceAware among node-a: %d %q", code, out)
	}
	if _, errOut, code := runCmd(t, env, "select", "--strategy", "Nope"); code != 2 || !strings.Contains(errOut, "unknown strategy") {
		t.Fatalf("select with a bad strategy: %d %q", code, errOut)
	}
	out, _, code := runCmd(t, env, "status")
	if code != 0 || !strings.Contains(out, "node-a") || !strings.Contains(out, "KEY SHARE") || !strings.Contains(out, "2 members") {
		t.Fatalf("status: %d\n%s", code, out)
	}
	// A legend says what SCORE and KEY SHARE count; scores have 4 decimals.
	if !strings.Contains(out, "\nSCORE = health (0 to 1) × WEIGHT") || !strings.Contains(out, "\nKEY SHARE counts ring points") || !regexp.MustCompile(`\s0\.\d{4}\s+yes`).MatchString(out) {
		t.Errorf("status lacks its legend or 4-decimal scores:\n%s", out)
	}

	_, metrics := httpGet(web + "/metrics")
	for _, want := range []string{`natsroute_requests_total{code="200",strategy="ConsistentHash"}`, `natsroute_members{pool="default"} 2`, `natsroute_pool_requests_total{code="200",pool="default",strategy="ConsistentHash"}`, "natsroute_reports_accepted_total", "natsroute_request_duration_seconds_bucket", "natsroute_kv_writes_total"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code, body := httpGet(web + "/status"); code != 200 || !strings.Contains(body, `"node-b"`) {
		t.Errorf("/status: %d %s", code, body)
	}
	if code, body := httpGet(web + "/status?pool=default"); code != 200 || !strings.Contains(body, `"pool": "default"`) || !strings.Contains(body, `"nodes_total": 2`) {
		t.Errorf("/status?pool=default: %d %s", code, body)
	}

	if code, _ := watch.stop(t); code != 0 {
		t.Errorf("watch exit code %d", code)
	}
	code, took := srv.stop(t)
	if code != 0 {
		t.Fatalf("router exit code %d after SIGTERM; stderr:\n%s", code, srv.stderr)
	}
	t.Logf("router exited %d %v after SIGTERM", code, took)
	// Nothing is left listening.
	for _, port := range []int{natsPort, httpPort} {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("port %d still taken after exit: %v", port, err)
		}
		l.Close()
	}
}

func TestCheck(t *testing.T) {
	if out, _, code := runCmd(t, nil, "--check"); code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("--check on defaults: %d %q", code, out)
	}
	_, errOut, code := runCmd(t, nil, "--check", "--member-ttl", "-1s", "--cpu-threshold", "150", "--max-count", "0", "--log-level", "loud")
	if code != 2 {
		t.Fatalf("--check on a bad configuration exited %d", code)
	}
	for _, want := range []string{"--member-ttl", "--cpu-threshold", "--max-count", "--log-level", "4 configuration problem"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("--check output does not name %s:\n%s", want, errOut)
		}
	}
	// 0 would silently mean the default (0.1): refused, naming the flag.
	_, errOut, code = runCmd(t, nil, "--check", "--slow-start-min-share", "0")
	if code != 2 || !strings.Contains(errOut, "--slow-start-min-share: 0 is not allowed") {
		t.Fatalf("--slow-start-min-share 0: %d %q", code, errOut)
	}
	_, errOut, code = runCmd(t, []string{"NATSROUTE_VNODES=many"}, "--check")
	if code != 2 || !strings.Contains(errOut, "NATSROUTE_VNODES") {
		t.Fatalf("a bad environment variable: %d %q", code, errOut)
	}
	if _, errOut, code := runCmd(t, nil, "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Fatalf("unknown command: %d %q", code, errOut)
	}
}

func TestEmbeddedConfigPermissions(t *testing.T) {
	natsPort := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte(`
authorization {
  users = [
    { user: router, password: rpass }
    { user: node1, password: n1pass, permissions: { publish: ["health.node-1"], subscribe: [] } }
    { user: client, password: cpass, permissions: { publish: ["route.request"], subscribe: ["_INBOX.>"] } }
  ]
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := start(t, nil, "--embedded-config", conf, "--listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--store-dir", t.TempDir(), "--http", "", "--user", "router", "--password", "rpass")
	waitFor(t, 20*time.Second, "the router to serve", func() bool { return strings.Contains(srv.stderr.String(), "natsroute is serving") })

	node, err := nats.Connect(url, nats.UserInfo("node1", "n1pass"))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	for _, id := range []string{"node-2", "node-1"} { // node-2 is not node1's to report
		data, _ := bus.EncodeHealth(id, bus.Health{CPUUsage: 10}, bus.JSON)
		_ = node.Publish(bus.HealthSubject(id), data)
	}
	_ = node.Flush()

	env := []string{"NATS_URL=" + url, "NATS_USER=client", "NATS_PASSWORD=cpass"}
	waitFor(t, 10*time.Second, "node-1 on the ring", func() bool {
		out, _, code := runCmd(t, env, "select", "--key", "k")
		return code == 0 && strings.TrimSpace(out) == "node-1"
	})
	// node-2's report was refused by the server: a ring of node-1 only.
	if out, _, _ := runCmd(t, env, "select", "--key", "k", "--count", "5"); strings.TrimSpace(out) != "node-1" {
		t.Fatalf("members: %q, want node-1 only", out)
	}
	// Without credentials the server refuses the connection.
	if _, errOut, code := runCmd(t, []string{"NATS_URL=" + url}, "select", "--key", "k"); code == 0 || !strings.Contains(strings.ToLower(errOut), "authorization") {
		t.Fatalf("no credentials: %d %q", code, errOut)
	}
	if code, _ := srv.stop(t); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, srv.stderr)
	}
}

// TestDemo runs the demo briefly: it must print the tables and finish.
func TestDemo(t *testing.T) {
	out, errOut, code := runCmd(t, nil, "demo", "--duration", "5s") // a phase a second
	if code != 0 {
		t.Fatalf("demo exit %d: %s", code, errOut)
	}
	for _, want := range []string{"seven simulated nodes in two pools", "--balance-factor 1.5", "node-c overloaded", "draining", "leaves", "node-a killed", "RA PICKS", "demo over"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// The kill step: a caller reports the killed node and its keys move
	// at once (within the 5 s the demo waits, or it says so).
	if m := regexp.MustCompile(`\n    node-a killed: its (\d+) keys moved to ([a-z0-9, -]+) after (\S+) `).FindStringSubmatch(out); m == nil {
		t.Errorf("demo output lacks the kill step and its keys moving:\n%s", out)
	} else if m[1] == "0" || strings.Contains(m[2], "node-a") {
		t.Errorf("the killed node's keys: %s moved to %s", m[1], m[2])
	} else {
		t.Logf("kill step: %s", m[0][5:])
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	lines := 0
	for sc.Scan() {
		lines++
	}
	if lines < 20 {
		t.Errorf("demo printed %d lines", lines)
	}
}

// TestDockerFiles checks what can be checked without a Docker engine: the
// NATS config of compose.yaml parses as a three-route JetStream cluster, and
// the router arguments it uses pass --check.
func TestDockerFiles(t *testing.T) {
	t.Setenv("SERVER_NAME", "nats-1")
	opts, err := server.ProcessConfigFile("../../docker/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	if opts.ServerName != "nats-1" || !opts.JetStream || len(opts.Routes) != 3 || opts.Cluster.Name != "natsroute" {
		t.Fatalf("docker/nats.conf: name %q jetstream %v routes %d cluster %q", opts.ServerName, opts.JetStream, len(opts.Routes), opts.Cluster.Name)
	}
	compose, err := os.ReadFile("../../docker/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args   []string
		env    []string
		inFile []byte // the file that must still run these arguments
		file   string
	}{
		{[]string{"serve", "--kv-replicas", "3", "--http", "0.0.0.0:8080"}, []string{"NATS_URL=nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"}, compose, "compose.yaml"},
		{[]string{"serve", "--listen", "0.0.0.0:4222", "--http", "0.0.0.0:8080", "--store-dir", "/home/nonroot/natsroute-data"}, nil, dockerfile(t), "Dockerfile"},
	} {
		quoted := `"` + strings.Join(c.args, `", "`) + `"`
		if !strings.Contains(string(c.inFile), quoted) {
			t.Fatalf("%s no longer runs %s; keep this test in step", c.file, quoted)
		}
		if out, errOut, code := runCmd(t, c.env, append(c.args, "--check")...); code != 0 {
			t.Fatalf("%v --check: %d %s %s", c.args, code, out, errOut)
		}
	}
	for _, node := range []string{`"report", "--node", "node-a", "--interval", "5s"`, `"report", "--node", "node-b", "--interval", "5s", "--weight", "2"`} {
		if !strings.Contains(string(compose), node) {
			t.Fatalf("compose.yaml no longer runs %s", node)
		}
	}
}

func dockerfile(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../../docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestREADMEConfigTable: every serve flag is in README's configuration
// table with its environment variable and default.
func TestREADMEConfigTable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var o options
	fs := serveFlags(&o, io.Discard)
	env := map[string]string{}
	for _, s := range fs.settings {
		env[s.flag] = "`" + s.env + "`"
	}
	fs.VisitAll(func(f *flag.Flag) {
		e, def := env[f.Name], f.DefValue
		if e == "" {
			e = "—"
		}
		if def == "" {
			def = `""`
		}
		row := fmt.Sprintf("| `--%s` | %s | `%s` |", f.Name, e, def)
		if !strings.Contains(string(readme), row) {
			t.Errorf("README's configuration table lacks %s", row)
		}
	})
}
