package embedded_test

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
)

// A node as a process of its own (this test binary run again), so a test
// can SIGKILL or SIGSTOP it: the kernel closes a killed process's
// connection, and a stopped one keeps it open without answering.
const (
	nodeProcEnv   = "NATSROUTE_TEST_NODE_URL"
	nodeProcIDEnv = "NATSROUTE_TEST_NODE_ID"
	// burnProcEnv, set to anything, makes the test binary a CPU burner.
	burnProcEnv = "NATSROUTE_TEST_BURN"
)

// runNodeProc runs a Reporter (1 s interval, defaults otherwise) until
// stdin closes; it says "ready" once its first report is out.
func runNodeProc(url, node string, in io.Reader, out io.Writer) error {
	nc, err := nats.Connect(url, nats.Name("node "+node))
	if err != nil {
		return err
	}
	defer nc.Close()
	src := bus.HealthFunc(func(context.Context) (bus.Health, error) { return okHealth, nil })
	rep, err := bus.NewReporter(nc, node, src, time.Second)
	if err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	if err := lineWriter(out)("ready"); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in)
	return rep.Close()
}

// startNode starts a node process and waits for its "ready"; cleanup kills
// it if the test has not.
func startNode(t *testing.T, url, node string) *exec.Cmd {
	t.Helper()
	return startChildProc(t, "node "+node, nodeProcEnv+"="+url, nodeProcIDEnv+"="+node)
}

// startChildProc runs this test binary again with env added (TestMain picks
// its role from it) and waits for its "ready"; cleanup closes its stdin
// and kills it if the test has not.
func startChildProc(t *testing.T, name string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() && sc.Text() == "ready" {
			ready <- nil
			_, _ = io.Copy(io.Discard, out)
			return
		}
		ready <- io.ErrUnexpectedEOF
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%s did not start: %v", name, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not start in 20s", name)
	}
	return cmd
}

// runBurnProc keeps GOMAXPROCS goroutines busy until stdin closes; it says
// "ready" once they run.
func runBurnProc(in io.Reader, out io.Writer) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			x := uint64(1)
			for {
				select {
				case <-done:
					_ = x
					return
				default:
				}
				for range 100_000 {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
		})
	}
	if err := lineWriter(out)("ready"); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in)
	close(done)
	wg.Wait()
	return nil
}

// startBurner starts a process that keeps every core busy (GOMAXPROCS
// goroutines) until the test ends: load on the machine, from outside the
// router's process, as other programs put it there.
func startBurner(t *testing.T) {
	t.Helper()
	startChildProc(t, "burner", burnProcEnv+"=1")
}
