package embedded_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(cacheProcEnv); url != "" {
		if err := runCacheProc(url, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if url := os.Getenv(churnCacheEnv); url != "" {
		if err := runChurnCache(url, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if url := os.Getenv(scaleProcEnv); url != "" {
		if err := runScaleProc(url, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if url := os.Getenv(reqProcEnv); url != "" {
		if err := runReqProc(url, os.Getenv(reqProcRoleEnv), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(burnProcEnv) != "" {
		if err := runBurnProc(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if url := os.Getenv(nodeProcEnv); url != "" {
		if err := runNodeProc(url, os.Getenv(nodeProcIDEnv), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m,
		// nats-server keeps a few process-wide goroutines once any server ran.
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine.func1"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.ipQueueCleanup"),
	)
}

// runServer starts an embedded nats-server with JetStream on a random port.
func runServer(t testing.TB, mod ...func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	}
	for _, f := range mod {
		f(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	// nats.go's 2 s dial timeout was seen to run out here on a machine
	// loaded five times over its cores; a test's own option still wins.
	opts = append([]nats.Option{nats.Timeout(10 * time.Second)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// testLogger logs to the test when -v, and is quiet otherwise.
func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("NATSROUTE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testConfig(t testing.TB) router.Config {
	cfg := router.DefaultConfig()
	cfg.Logger = testLogger(t)
	return cfg
}

func startRouter(t testing.TB, nc *nats.Conn, cfg router.Config) *router.Router {
	t.Helper()
	r, err := router.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	startOrFail(t, r)
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("router close: %v", err)
		}
	})
	return r
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func health(t testing.TB, nc *nats.Conn, node string, h bus.Health) {
	t.Helper()
	data, err := bus.EncodeHealth(node, h, bus.Msgpack)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(bus.HealthSubject(node), data); err != nil {
		t.Fatal(err)
	}
}

var okHealth = bus.Health{CPUUsage: 10, MemoryUsage: 20, ActiveConnections: 5, AvgLatency: 3 * time.Millisecond}

// members renders the router's ring document, as docMembers does.
func members(r *router.Router) string {
	d, _ := r.Ring()
	return docMembers(d)
}

// req sends raw bytes to a subject and returns the reply.
func req(t testing.TB, nc *nats.Conn, subject string, body []byte, hdr nats.Header) *nats.Msg {
	t.Helper()
	m, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: body, Header: hdr}, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s %q: %v", subject, clipped(body), err)
	}
	return m
}

func clipped(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// jsonReply requests with a JSON body and decodes a successful reply.
func jsonReply(t testing.TB, nc *nats.Conn, body string) bus.Reply {
	t.Helper()
	m := req(t, nc, bus.SubjectRequest, []byte(body), nil)
	if e := m.Header.Get("Nats-Service-Error"); e != "" {
		t.Fatalf("request %s: error reply %s %s", body, m.Header.Get("Nats-Service-Error-Code"), e)
	}
	var r bus.Reply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	return r
}

func startOrFail(t testing.TB, r *router.Router) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// answered retries a JSON request until a router answers it successfully.
func answered(t testing.TB, nc *nats.Conn, body string, timeout time.Duration) bus.Reply {
	t.Helper()
	var rep bus.Reply
	waitFor(t, timeout, "an answer to "+body, func() bool {
		m, err := nc.Request(bus.SubjectRequest, []byte(body), 200*time.Millisecond)
		if err != nil || m.Header.Get("Nats-Service-Error") != "" {
			return false
		}
		return json.Unmarshal(m.Data, &rep) == nil
	})
	return rep
}

// defaultKV returns a JetStream context on nc and the default bucket.
func defaultKV(t testing.TB, nc *nats.Conn) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctxT(t), bus.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}
