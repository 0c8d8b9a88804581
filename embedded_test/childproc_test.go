package embedded_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus/router"
)

// startChild runs this test binary again as a child process with env added
// (TestMain picks the child's role from it), its stderr on ours, and
// returns its stdin and stdout.
func startChild(b *testing.B, env ...string) (*exec.Cmd, io.WriteCloser, io.Reader) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, in, out
}

// startChildRouter starts a router, logging warnings and worse to stderr,
// on a connection of its own to url. stop closes both.
func startChildRouter(url, name string, cfg router.Config) (r *router.Router, stop func(), err error) {
	nc, err := nats.Connect(url, nats.Name(name))
	if err != nil {
		return nil, nil, err
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("proc", name)
	if r, err = router.New(nc, cfg); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = r.Start(ctx)
		cancel()
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return r, func() { r.Close(); nc.Close() }, nil
}

// lineWriter returns a function that writes one line to out at once.
func lineWriter(out io.Writer) func(string) error {
	w := bufio.NewWriter(out)
	return func(s string) error {
		if _, err := w.WriteString(s + "\n"); err != nil {
			return err
		}
		return w.Flush()
	}
}

// serveChild is the child's side of the benchmarks' line protocol: it says
// "ready", then answers each line of stdin with one line until stdin
// closes. "profile <path>" and "profile-stop" run a CPU profile; handle
// answers the other commands (ok false: no such command).
func serveChild(in io.Reader, out io.Writer, name string, handle func(cmd, arg string) (reply string, ok bool, err error)) error {
	var profile *os.File
	defer func() {
		if profile != nil {
			pprof.StopCPUProfile()
			profile.Close()
		}
	}()
	say := lineWriter(out)
	if err := say("ready"); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		reply := "ok"
		switch {
		case cmd == "profile" && arg != "" && profile == nil:
			var err error
			if profile, err = os.Create(arg); err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(profile); err != nil {
				return err
			}
		case cmd == "profile-stop" && profile != nil:
			pprof.StopCPUProfile()
			if err := profile.Close(); err != nil {
				return err
			}
			profile = nil
		default:
			r, ok, err := handle(cmd, arg)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: bad command %q", name, sc.Text())
			}
			reply = r
		}
		if err := say(reply); err != nil {
			return err
		}
	}
	return sc.Err()
}
