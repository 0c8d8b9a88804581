package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestREADMEGoExample builds the program under README's "Use it from Go"
// exactly as written and runs it against the router binary on a fresh
// ring, three times: each run must exit 0 and print node-a (the only node)
// as the owner, the healthy pick and the local owner. It once got a 503
// about half the time: Pick ran before the node's first report was on the
// ring.
func TestREADMEGoExample(t *testing.T) {
	src := readmeGoExample(t)
	if !strings.Contains(src, `os.Getenv("NATS_URL")`) {
		t.Fatalf("README's Go example must connect to $NATS_URL when it is set: this test runs it against a server on a free port\n%s", src)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	example := filepath.Join(dir, "example")
	build := exec.CommandContext(ctx, "go", "build", "-o", example, filepath.Join(dir, "main.go"))
	build.Dir = "../.." // in this module: the example imports it and its dependencies
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building README's Go example: %v\n%s\n%s", err, out, src)
	}

	natsPort := freePort(t)
	srv := start(t, nil, "--listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--store-dir", t.TempDir(), "--http", "")
	waitFor(t, 20*time.Second, "the router to serve", func() bool { return strings.Contains(srv.stderr.String(), "natsroute is serving") })
	env := []string{fmt.Sprintf("NATS_URL=nats://127.0.0.1:%d", natsPort)}
	for run := 1; run <= 3; run++ {
		// As on a fresh router: the previous run's node-a has left.
		waitFor(t, 10*time.Second, "an empty ring", func() bool {
			_, errOut, code := runCmd(t, env, "select", "--key", "k")
			return code == 1 && strings.Contains(errOut, "no members")
		})
		cmd := exec.CommandContext(ctx, example)
		cmd.Env = append(os.Environ(), env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if want := "node-a node-a node-a <nil>\n"; err != nil || stdout.String() != want {
			t.Fatalf("run %d of README's Go example: %v\nstdout %q, want %q\nstderr:\n%s", run, err, stdout.String(), want, stderr.String())
		}
	}
	if code, _ := srv.stop(t); code != 0 {
		t.Fatalf("router exit %d; stderr:\n%s", code, srv.stderr)
	}
}

// readmeGoExample returns the ```go block of README's "Use it from Go".
func readmeGoExample(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Use it from Go\n")
	if !ok {
		t.Fatal(`README has no "## Use it from Go" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, code, ok := strings.Cut(section, "\n```go\n")
	if !ok {
		t.Fatal(`README's "Use it from Go" has no go block`)
	}
	code, _, ok = strings.Cut(code, "\n```\n")
	if !ok {
		t.Fatal(`README's "Use it from Go" go block does not end`)
	}
	return code + "\n"
}
