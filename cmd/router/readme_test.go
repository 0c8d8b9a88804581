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

	"github.com/natsroute/natsroute/ring"
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

// TestREADMEClaims checks what README says about the program against the
// program: the demo, the shed steps and cap, the binary its commands run,
// /status?pool=P and where the Go examples are.
func TestREADMEClaims(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	flat := strings.Join(strings.Fields(readme), " ") // prose wraps anywhere
	t.Run("demo", func(t *testing.T) {
		// demo.go's own banner says the same; TestDemo checks that it prints it.
		for _, want := range []string{"seven simulated nodes in two pools", "(`--balance-factor 1.5`)"} {
			if !strings.Contains(flat, want) {
				t.Errorf("README does not describe the demo as it is: no %q", want)
			}
		}
	})
	t.Run("shed", func(t *testing.T) {
		for _, want := range []string{
			fmt.Sprintf("up by at most %g %% of the member's keys, down by at most %g %%", 100*ring.DefaultShedRise, 100*ring.DefaultShedFall),
			fmt.Sprintf("No member sheds more than %g %% of its keys", 100*ring.DefaultMaxShed),
			"Shedding needs nodes that keep reporting",
			"names shedding members only when the key's owner",
		} {
			if !strings.Contains(flat, want) {
				t.Errorf("README lacks %q", want)
			}
		}
	})
	t.Run("binary", func(t *testing.T) {
		// go run exits 1 for any failure and leaves the router running on
		// SIGTERM: README's commands run the binary; go run is for the demo.
		for _, line := range strings.Split(readme, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "go run ./cmd/router") {
				t.Errorf("README runs the router through go run: %s", line)
			}
		}
		if !strings.Contains(readme, "go build -o router ./cmd/router") {
			t.Error("README does not say how to build the router binary")
		}
	})
	t.Run("status pool", func(t *testing.T) {
		if !strings.Contains(readme, "`/status?pool=P`") {
			t.Error("README does not document /status?pool=P")
		}
	})
	t.Run("examples", func(t *testing.T) {
		src, err := os.ReadFile("../../bus/example_test.go")
		if err != nil {
			t.Fatal(err)
		}
		for _, fn := range []string{"ExampleClient", "ExampleReporter", "ExampleRingCache"} {
			if !strings.Contains(string(src), "func "+fn+"()") {
				t.Errorf("bus/example_test.go has no %s, which README promises", fn)
			}
		}
		if !strings.Contains(flat, "are in `bus/example_test.go`") || strings.Contains(flat, "(`go doc ./bus`) has runnable examples") {
			t.Error("README must say the examples are in bus/example_test.go: go doc does not print them")
		}
	})
}
