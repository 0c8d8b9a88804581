package embedded_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkRequestProc measures the cost of route.request against a no-op
// responder, each in a process of its own as they run in production. The
// parent holds the embedded server and the load generator; one child runs a
// router.Router (default config, 150 members), the other a plain no-op
// responder (QueueSubscribe, a fixed 40-byte reply). Run it with
//
//	go test -run '^$' -bench BenchmarkRequestProc -benchmem -count 6 ./embedded_test | tee /tmp/reqproc.txt
//	go run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da -col /target /tmp/reqproc.txt
//
// Modes, all msgpack over one connection of the parent:
//
//	inflight64  64 requests in flight, 1,024 distinct keys: req/s, p50/p99 of each request
//	sequential  one request at a time: p50/p99
//	batch1000   one request of 1,000 keys at a time: keys/s. The no-op is sent
//	            the router's request bytes and replies as many bytes as the
//	            router's reply, so that the ratio is the router's work alone.
//
// cpu-µs/op is the responder process's own CPU time (getrusage) per
// request, parent-cpu-µs/op that of the parent (the server and the load
// generator). B/op and allocs/op are the load generator's, not the
// responder's.
//
// Read the ratios, not the two columns. The testing package repeats each
// sub-benchmark -count times in a row, so target=noop and target=router run
// about ten seconds apart, and on this shared 2-core machine the no-op's
// req/s over six runs spread by ±25-60% (benchstat's interval). So a router
// run alternates its chunks (reqProcMode.chunk requests) with as many to the
// no-op, each timed on its own (the timer runs for the router's only), and
// reports the router's figures over the no-op's of the same run: req/s÷noop,
// p50÷noop, keys/s÷noop, cpu÷noop. Their spread was ±3-10%. Every run sends
// its requests in those chunks, the no-op's too, so ramp-up and drain weigh
// the same. With 64 requests in flight the p50 is about 64 / throughput, so
// p50÷noop there is about 1 / req/s÷noop: one fact, not two. The three
// processes share the cores: the figures are end to end, including the
// server and the load generator.
//
// NATSROUTE_REQPROC_CPUPROFILE=dir writes the responder's CPU profile of
// each sub-benchmark to dir/<target>-<mode>.pprof (the last run of -count
// wins). The router's then covers only its own chunks: it idles during the
// no-op's.
func BenchmarkRequestProc(b *testing.B) {
	env := newReqProcEnv(b)
	noop := reqProcTarget{"noop", env.noop, reqProcNoopSubject, reqProcNoopBatchSubject}
	router := reqProcTarget{"router", env.router, bus.SubjectRequest, bus.SubjectRequest}
	for _, mode := range reqProcModes {
		for _, t := range []reqProcTarget{noop, router} {
			b.Run("target="+t.name+"/mode="+mode.name, func(b *testing.B) {
				if dir := os.Getenv(reqProcProfileEnv); dir != "" {
					defer t.proc.profile(b, filepath.Join(dir, t.name+"-"+mode.name+".pprof"))()
				}
				if t.name == "router" {
					env.run(b, mode, t, &noop)
				} else {
					env.run(b, mode, t, nil)
				}
			})
		}
	}
}

// reqProcTarget is a responder and its subjects.
type reqProcTarget struct {
	name          string
	proc          *reqProc
	single, batch string // subjects of single and batch requests
}

// reqProcMode is a way of sending requests. Chunks of about 20-150 ms let a
// run alternate between the targets often, and keep the cost of stopping
// the timer in between (runtime.ReadMemStats) well under 1%.
type reqProcMode struct {
	name     string
	inFlight int  // requests in flight
	batch    bool // 1,000 keys per request
	chunk    int  // requests per chunk
}

var reqProcModes = []reqProcMode{
	{name: "inflight64", inFlight: 64, chunk: 4096},
	{name: "sequential", inFlight: 1, chunk: 512},
	{name: "batch1000", inFlight: 1, batch: true, chunk: 64},
}

const (
	reqProcMembers          = 150
	reqProcKeys             = 1024 // distinct keys of single requests
	reqProcBatchKeys        = 1000 // keys per batch request (router.DefaultMaxBatch)
	reqProcNoopReply        = 40   // bytes of the no-op's reply to a single request
	reqProcNoopSubject      = "noop.request"
	reqProcNoopBatchSubject = "noop.batch"
	reqProcTimeout          = 5 * time.Second // per request
	// reqProcHeartbeat keeps the members on the ring: the whole run takes
	// minutes, longer than router.DefaultMemberTTL (60 s).
	reqProcHeartbeat = 10 * time.Second
)

// The environment of a responder process: reqProcEnv, set to a NATS URL,
// makes the test binary one (see TestMain); reqProcRoleEnv says which.
const (
	reqProcEnv        = "NATSROUTE_REQ_PROC"
	reqProcRoleEnv    = "NATSROUTE_REQ_PROC_ROLE" // "router" or "noop"
	reqProcProfileEnv = "NATSROUTE_REQPROC_CPUPROFILE"
)

// runReqProc runs a responder (role "router" or "noop") on url and serves
// this protocol on stdin and stdout, one line each way:
//
//	child:  ready
//	parent: cpu                 child: <user+system CPU of the process so far, ns>
//	parent: profile <path>      child: ok (a CPU profile runs into path)
//	parent: profile-stop        child: ok
//	parent: batch-reply <bytes> child: ok (noop: the size of its reply on noop.batch)
//
// It stops the responder and returns when stdin closes.
func runReqProc(url, role string, in io.Reader, out io.Writer) error {
	nc, err := nats.Connect(url, nats.Name("natsroute-reqproc-"+role))
	if err != nil {
		return err
	}
	defer nc.Close()
	var batchReply atomic.Pointer[[]byte]
	switch role {
	case "router":
		_, stop, err := startChildRouter(url, "natsroute-reqproc-router", router.DefaultConfig())
		if err != nil {
			return err
		}
		defer stop()
	case "noop":
		reply := make([]byte, reqProcNoopReply)
		if _, err := nc.QueueSubscribe(reqProcNoopSubject, "q", func(m *nats.Msg) { _ = m.Respond(reply) }); err != nil {
			return err
		}
		empty := []byte{}
		batchReply.Store(&empty)
		if _, err := nc.QueueSubscribe(reqProcNoopBatchSubject, "q", func(m *nats.Msg) { _ = m.Respond(*batchReply.Load()) }); err != nil {
			return err
		}
		if err := nc.Flush(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("request process: %s=%q: want router or noop", reqProcRoleEnv, role)
	}

	return serveChild(in, out, "request process", func(cmd, arg string) (string, bool, error) {
		switch {
		case cmd == "cpu":
			return strconv.FormatInt(int64(selfCPU()), 10), true, nil
		case cmd == "batch-reply" && role == "noop":
			n, err := strconv.Atoi(arg)
			if err != nil || n < 0 {
				return "", false, nil
			}
			data := make([]byte, n)
			batchReply.Store(&data)
			return "ok", true, nil
		}
		return "", false, nil
	})
}

// reqProc is the parent's end of a responder process.
type reqProc struct {
	role  string
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string // the child's stdout; closed when it ends
}

func startReqProc(b *testing.B, url, role string) *reqProc {
	b.Helper()
	cmd, in, out := startChild(b, reqProcEnv+"="+url, reqProcRoleEnv+"="+role)
	p := &reqProc{role: role, cmd: cmd, in: in, lines: make(chan string)}
	go func() { // ends when the child does
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- strings.TrimSpace(sc.Text())
		}
	}()
	b.Cleanup(func() {
		in.Close() // the child stops its responder and exits
		p.waitEnd(30 * time.Second)
		if err := cmd.Wait(); err != nil {
			b.Errorf("%s process: %v", role, err)
		}
	})
	if line := p.line(b, "ready"); line != "ready" {
		b.Fatalf("%s process said %q, want ready", role, line)
	}
	return p
}

// waitEnd waits until the child's stdout closes, killing the child if that
// takes longer than timeout.
func (p *reqProc) waitEnd(timeout time.Duration) {
	kill := time.After(timeout)
	for {
		select {
		case _, ok := <-p.lines:
			if !ok {
				return
			}
		case <-kill:
			fmt.Fprintf(os.Stderr, "%s process %d did not exit within %v of stdin closing; killing it\n", p.role, p.cmd.Process.Pid, timeout)
			_ = p.cmd.Process.Kill()
			kill = nil
		}
	}
}

// line reads the child's next line; a child that says nothing within a
// minute has hung.
func (p *reqProc) line(b *testing.B, what string) string {
	b.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			b.Fatalf("%s process ended while we waited for %s", p.role, what)
		}
		return l
	case <-time.After(time.Minute):
		b.Fatalf("%s process: no %s within 1 minute", p.role, what)
	}
	return ""
}

func (p *reqProc) do(b *testing.B, command string) string {
	b.Helper()
	if _, err := fmt.Fprintln(p.in, command); err != nil {
		b.Fatalf("%s process: %s: %v", p.role, command, err)
	}
	return p.line(b, "the answer to "+command)
}

func (p *reqProc) ok(b *testing.B, command string) {
	b.Helper()
	if line := p.do(b, command); line != "ok" {
		b.Fatalf("%s process: %s: got %q", p.role, command, line)
	}
}

// cpu returns the child's CPU time so far.
func (p *reqProc) cpu(b *testing.B) time.Duration {
	b.Helper()
	line := p.do(b, "cpu")
	ns, err := strconv.ParseInt(line, 10, 64)
	if err != nil {
		b.Fatalf("%s process: cpu: got %q", p.role, line)
	}
	return time.Duration(ns)
}

// profile starts a CPU profile of the child into path and returns the
// function that stops it.
func (p *reqProc) profile(b *testing.B, path string) (stop func()) {
	b.Helper()
	p.ok(b, "profile "+path)
	return func() { p.ok(b, "profile-stop") }
}

// reqBench is the server, both responder processes and the load
// generator's connection.
type reqBench struct {
	nc     *nats.Conn
	router *reqProc
	noop   *reqProc
	single [][]byte // msgpack {"key": "user-i"}, i < reqProcKeys
	batch  []byte   // msgpack {"keys": [reqProcBatchKeys keys]}
}

func newReqProcEnv(b *testing.B) *reqBench {
	b.Helper()
	s := runServer(b)
	env := &reqBench{nc: connect(b, s.ClientURL())}
	env.router = startReqProc(b, s.ClientURL(), "router")
	env.noop = startReqProc(b, s.ClientURL(), "noop")

	pub := connect(b, s.ClientURL())
	if err := reqProcHealth(pub); err != nil {
		b.Fatal(err)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() { // keeps the members on the ring; an error ends it, and requests then fail
		defer close(stopped)
		tick := time.NewTicker(reqProcHeartbeat)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if err := reqProcHealth(pub); err != nil {
					fmt.Fprintf(os.Stderr, "BenchmarkRequestProc heartbeats: %v\n", err)
					return
				}
			}
		}
	}()
	b.Cleanup(func() { close(stop); <-stopped })

	for i := range reqProcKeys {
		p, err := msgpack.Marshal(&bus.Request{Key: fmt.Sprintf("user-%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		env.single = append(env.single, p)
	}
	keys := make([]string, reqProcBatchKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	var err error
	if env.batch, err = msgpack.Marshal(&bus.Request{Keys: keys}); err != nil {
		b.Fatal(err)
	}

	deadline := time.Now().Add(20 * time.Second)
	for err := env.routerReady(); err != nil; err = env.routerReady() {
		if time.Now().After(deadline) {
			b.Fatalf("router not serving %d members after 20 s: %v", reqProcMembers, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The no-op's batch reply is as long as the router's.
	m, err := env.nc.Request(bus.SubjectRequest, env.batch, reqProcTimeout)
	if err != nil {
		b.Fatal(err)
	}
	var rep bus.Reply
	if err := msgpack.Unmarshal(m.Data, &rep); err != nil || len(rep.Results) != reqProcBatchKeys {
		b.Fatalf("batch reply: %d results, %v (%s)", len(rep.Results), err, m.Header.Get("Nats-Service-Error"))
	}
	env.noop.ok(b, fmt.Sprintf("batch-reply %d", len(m.Data)))
	for _, subject := range []string{reqProcNoopSubject, reqProcNoopBatchSubject} {
		if err := env.request(subject, env.single[0]); err != nil {
			b.Fatalf("%s: %v", subject, err)
		}
	}
	return env
}

// reqProcHealth publishes a health report (msgpack) for every member.
func reqProcHealth(pub *nats.Conn) error {
	for i := range reqProcMembers {
		node := fmt.Sprintf("node-%03d", i)
		data, err := bus.EncodeHealth(node, okHealth, bus.Msgpack)
		if err != nil {
			return err
		}
		if err := pub.Publish(bus.HealthSubject(node), data); err != nil {
			return err
		}
	}
	return nil
}

// routerReady says why the router is not yet serving every member.
func (e *reqBench) routerReady() error {
	m, err := e.nc.Request(bus.SubjectRing, nil, time.Second)
	if err != nil {
		return err
	}
	var st bus.RingState
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return fmt.Errorf("route.ring: %w", err)
	}
	if len(st.Ring.Nodes) != reqProcMembers {
		return fmt.Errorf("route.ring: %d nodes", len(st.Ring.Nodes))
	}
	if m, err = e.nc.Request(bus.SubjectRequest, e.single[0], time.Second); err != nil {
		return err
	}
	var rep bus.Reply
	if err := msgpack.Unmarshal(m.Data, &rep); err != nil {
		return fmt.Errorf("route.request: %w (%s)", err, m.Header.Get("Nats-Service-Error"))
	}
	if rep.Revision == 0 || rep.Node == "" {
		return fmt.Errorf("route.request: revision %d, node %q", rep.Revision, rep.Node)
	}
	return nil
}

// request sends one request and checks that the reply is no error.
func (e *reqBench) request(subject string, body []byte) error {
	m, err := e.nc.Request(subject, body, reqProcTimeout)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	if s := m.Header.Get("Nats-Service-Error"); s != "" {
		return fmt.Errorf("%s: error reply %s %s", subject, m.Header.Get("Nats-Service-Error-Code"), s)
	}
	return nil
}

// reqProcSide is what one target did in a run.
type reqProcSide struct {
	reqProcTarget
	n    int             // requests answered
	took time.Duration   // wall time of its chunks
	self time.Duration   // this process's CPU time (server, load generator) in its chunks
	lat  []time.Duration // of each request, b.N long
	cpu0 time.Duration   // the process's CPU time before the run
}

// run sends b.N requests to t in chunks; with paired set, it alternates
// them with chunks as large to *paired, outside the timer, and reports t's
// figures over paired's.
func (e *reqBench) run(b *testing.B, m reqProcMode, t reqProcTarget, paired *reqProcTarget) {
	own := &reqProcSide{reqProcTarget: t, lat: make([]time.Duration, b.N), cpu0: t.proc.cpu(b)}
	var other *reqProcSide
	if paired != nil {
		other = &reqProcSide{reqProcTarget: *paired, lat: make([]time.Duration, b.N), cpu0: paired.proc.cpu(b)}
	}
	b.ResetTimer()
	for c := 0; own.n < b.N; c++ {
		k := min(m.chunk, b.N-own.n)
		if other != nil && c%2 == 1 { // each goes first in half the chunks
			b.StopTimer()
			e.chunk(b, m, other, k)
		}
		b.StartTimer()
		e.chunk(b, m, own, k)
		b.StopTimer()
		if other != nil && c%2 == 0 {
			e.chunk(b, m, other, k)
		}
	}
	ownCPU, ownP50 := own.report(b, m)
	if other == nil {
		return
	}
	// The paired target's figures are not reported as its own: it ran in
	// the router's sub-benchmark, and its own has them.
	otherCPU, otherP50 := other.figures(b)
	rate := func(s *reqProcSide) float64 { return float64(s.n) / s.took.Seconds() }
	if m.batch {
		b.ReportMetric(rate(own)/rate(other), "keys/s÷noop")
	} else if m.inFlight > 1 {
		b.ReportMetric(rate(own)/rate(other), "req/s÷noop")
	}
	b.ReportMetric(float64(ownP50)/float64(otherP50), "p50÷noop")
	b.ReportMetric(float64(ownCPU)/float64(otherCPU), "cpu÷noop")
}

// chunk sends k requests, m.inFlight at a time.
func (e *reqBench) chunk(b *testing.B, m reqProcMode, s *reqProcSide, k int) {
	subject, body := s.single, func(i int) []byte { return e.single[i%reqProcKeys] }
	if m.batch {
		subject, body = s.batch, func(int) []byte { return e.batch }
	}
	first, end := s.n, s.n+k
	self0 := selfCPU()
	t0 := time.Now()
	if m.inFlight == 1 {
		for i := first; i < end; i++ {
			r0 := time.Now()
			if err := e.request(subject, body(i)); err != nil {
				b.Fatal(err)
			}
			s.lat[i] = time.Since(r0)
		}
	} else {
		var next atomic.Int64
		next.Store(int64(first))
		var failed atomic.Pointer[error]
		var wg sync.WaitGroup
		for range min(m.inFlight, k) {
			wg.Go(func() {
				for failed.Load() == nil {
					i := int(next.Add(1) - 1)
					if i >= end {
						return
					}
					r0 := time.Now()
					if err := e.request(subject, body(i)); err != nil {
						failed.CompareAndSwap(nil, &err)
						return
					}
					s.lat[i] = time.Since(r0)
				}
			})
		}
		wg.Wait()
		if err := failed.Load(); err != nil {
			b.Fatal(*err)
		}
	}
	s.took += time.Since(t0)
	s.self += selfCPU() - self0
	s.n = end
}

// selfCPU returns this process's user and system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// figures returns the side's responder CPU time per request and its p50.
// The timer must be stopped.
func (s *reqProcSide) figures(b *testing.B) (cpu, p50 time.Duration) {
	b.Helper()
	cpu = (s.proc.cpu(b) - s.cpu0) / time.Duration(s.n)
	slices.Sort(s.lat)
	return cpu, s.lat[len(s.lat)/2]
}

// report reports the side's figures as the sub-benchmark's and returns
// them.
func (s *reqProcSide) report(b *testing.B, m reqProcMode) (cpu, p50 time.Duration) {
	b.Helper()
	cpu, p50 = s.figures(b)
	b.ReportMetric(float64(p50.Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(s.lat[len(s.lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3, "cpu-µs/op")
	b.ReportMetric(float64(s.self.Nanoseconds())/1e3/float64(s.n), "parent-cpu-µs/op")
	rate := float64(s.n) / s.took.Seconds()
	if m.batch {
		b.ReportMetric(rate*reqProcBatchKeys, "keys/s")
	} else if m.inFlight > 1 {
		b.ReportMetric(rate, "req/s")
	}
	return cpu, p50
}
