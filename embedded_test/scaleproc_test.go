package embedded_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natsroute/natsroute/bus/router"
)

// scaleProcEnv, set to a NATS URL, makes the test binary the router
// process of BenchmarkScale: the router alone in its process, so its RSS
// and CPU leave out the server and the load generator. scaleProcTTLEnv
// carries the member TTL.
const (
	scaleProcEnv    = "NATSROUTE_SCALE_PROC"
	scaleProcTTLEnv = "NATSROUTE_SCALE_PROC_TTL"
	// scaleProcMemLimitEnv, e.g. 48MiB, becomes the router process's
	// GOMEMLIMIT (and not the load generator's).
	scaleProcMemLimitEnv = "NATSROUTE_SCALE_ROUTER_GOMEMLIMIT"
	// scaleProcLegacyEnv is the router's --legacy-document, as
	// NATSROUTE_LEGACY_DOCUMENT says it.
	scaleProcLegacyEnv = "NATSROUTE_SCALE_PROC_LEGACY_DOCUMENT"
)

// scaleProcReply is the router process's answer to "stats".
type scaleProcReply struct {
	Stats  router.Stats `json:"stats"`
	CPU    int64        `json:"cpu_us"`  // user + system CPU of the process so far
	TookUS int64        `json:"took_us"` // what Router.Stats cost
}

// processed is how many health reports the router accounted for since
// before: accepted, rejected or dropped.
func (r scaleProcReply) processed(before scaleProcReply) uint64 {
	n := r.Stats.ReportsAccepted - before.Stats.ReportsAccepted + r.Stats.HealthDropped - before.Stats.HealthDropped
	for reason, c := range r.Stats.ReportsRejected {
		n += c - before.Stats.ReportsRejected[reason]
	}
	return n
}

// runScaleProc runs a router on url and serves the scale process protocol
// on stdin and stdout, one line each way:
//
//	child:  ready
//	parent: stats            child: <scaleProcReply as JSON>
//	parent: profile <path>   child: ok (a CPU profile runs into path)
//	parent: profile-stop     child: ok
//
// It closes the router and returns when stdin closes.
func runScaleProc(url string, in io.Reader, out io.Writer) error {
	ttl, err := time.ParseDuration(os.Getenv(scaleProcTTLEnv))
	if err != nil {
		return fmt.Errorf("scale process: %s: %w", scaleProcTTLEnv, err)
	}
	router.TuneGC() // as the binary does
	cfg := router.DefaultConfig()
	cfg.MemberTTL = ttl
	if os.Getenv(churnRouterEnv) != "" {
		churnRouter(&cfg)
	}
	if os.Getenv(scaleProcLegacyEnv) == "false" {
		cfg.NoLegacyDocument = true
	}
	r, stop, err := startChildRouter(url, "natsroute-scale-router", cfg)
	if err != nil {
		return err
	}
	defer stop()

	return serveChild(in, out, "scale process", func(cmd, arg string) (string, bool, error) {
		switch cmd {
		case "stats":
			t0 := time.Now()
			s := r.Stats()
			took := time.Since(t0)
			data, err := json.Marshal(scaleProcReply{Stats: s, CPU: selfCPU().Microseconds(), TookUS: took.Microseconds()})
			return string(data), true, err
		case "heap": // what takes the memory: after a GC, and a heap profile if asked
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			reply := fmt.Sprintf("live heap %.1f MB, heap in use %.1f MB, heap idle not returned %.1f MB, stacks %.1f MB, from the OS %.1f MB",
				mb(ms.HeapAlloc), mb(ms.HeapInuse), mb(ms.HeapIdle-ms.HeapReleased), mb(ms.StackInuse), mb(ms.Sys))
			if arg != "" {
				f, err := os.Create(arg)
				if err != nil {
					return "", true, err
				}
				defer f.Close()
				if err := pprof.WriteHeapProfile(f); err != nil {
					return "", true, err
				}
			}
			return reply, true, nil
		}
		return "", false, nil
	})
}

// childProc is the parent's end of a child that serves serveChild's line
// protocol (the router process, the churn benchmark's cache processes).
type childProc struct {
	name string // for messages: "router process"
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	done chan error // the child's exit
}

func startScaleProc(b *testing.B, url string, ttl time.Duration, env ...string) *childProc {
	b.Helper()
	env = append(env, scaleProcEnv+"="+url, scaleProcTTLEnv+"="+ttl.String())
	if limit := os.Getenv(scaleProcMemLimitEnv); limit != "" { // the router's GOMEMLIMIT only
		env = append(env, "GOMEMLIMIT="+limit)
	}
	return startServingChild(b, "router process", env...)
}

// startServingChild starts a child that says ready and then serves
// serveChild's protocol; closing its stdin at cleanup ends it.
func startServingChild(b *testing.B, name string, env ...string) *childProc {
	b.Helper()
	cmd, in, out := startChild(b, env...)
	p := &childProc{name: name, cmd: cmd, in: in, out: bufio.NewScanner(out), done: make(chan error, 1)}
	p.out.Buffer(nil, 1<<20)
	b.Cleanup(func() {
		in.Close() // the child closes what it runs and exits
		go func() { p.done <- cmd.Wait() }()
		select {
		case err := <-p.done:
			if err != nil {
				b.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			b.Errorf("%s %d did not exit within 30 s of stdin closing; killing it", name, cmd.Process.Pid)
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	if line := p.line(b, "ready"); line != "ready" {
		b.Fatalf("%s said %q, want ready", name, line)
	}
	return p
}

// line reads the child's next line; a child that says nothing within a
// minute has hung.
func (p *childProc) line(b *testing.B, what string) string {
	b.Helper()
	got := make(chan bool, 1)
	go func() { got <- p.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			b.Fatalf("%s ended while we waited for %s: %v", p.name, what, p.out.Err())
		}
	case <-time.After(time.Minute):
		b.Fatalf("%s: no %s within 1 minute", p.name, what)
	}
	return strings.TrimSpace(p.out.Text())
}

func (p *childProc) do(b *testing.B, command string) string {
	b.Helper()
	if _, err := fmt.Fprintln(p.in, command); err != nil {
		b.Fatalf("%s: %s: %v", p.name, command, err)
	}
	return p.line(b, "the answer to "+command)
}

func (p *childProc) stats(b *testing.B) scaleProcReply {
	b.Helper()
	var r scaleProcReply
	if line := p.do(b, "stats"); json.Unmarshal([]byte(line), &r) != nil {
		b.Fatalf("router process: stats: got %q", line)
	}
	return r
}

// profile starts a CPU profile into path; "" does nothing. It returns the
// function that stops it.
func (p *childProc) profile(b *testing.B, path string) (stop func()) {
	b.Helper()
	if path == "" {
		return func() {}
	}
	if line := p.do(b, "profile "+path); line != "ok" {
		b.Fatalf("%s: profile: got %q", p.name, line)
	}
	return func() {
		if line := p.do(b, "profile-stop"); line != "ok" {
			b.Fatalf("%s: profile-stop: got %q", p.name, line)
		}
	}
}

// memory returns the child's resident set now and at its peak, in MB, from
// /proc/<pid>/status (VmRSS, VmHWM).
func mb(n uint64) float64 { return float64(n) / (1 << 20) }

// heap asks the router process what its memory holds (and writes a heap
// profile to path, if set).
func (p *childProc) heap(b *testing.B, path string) string {
	b.Helper()
	return p.do(b, strings.TrimSpace("heap "+path))
}

func (p *childProc) memory(b *testing.B) (rss, peak float64) {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatalf("%s memory: %v", p.name, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return rss, peak
}
