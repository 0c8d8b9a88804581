package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/natsroute/natsroute/bus"
	"github.com/natsroute/natsroute/bus/router"
)

// simNode is a simulated node whose load the demo script changes.
type simNode struct {
	id       string
	pools    []string   // nil: the default pool
	mu       sync.Mutex // guards cpu and the reporter's use of it
	cpu      float64
	reporter *bus.Reporter
	gone     bool
}

func (n *simNode) health(context.Context) (bus.Health, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	jitter := rand.Float64()*4 - 2
	cpu := min(max(n.cpu+jitter, 0), 100)
	return bus.Health{
		CPUUsage: cpu, MemoryUsage: 30 + cpu/3, ActiveConnections: int64(cpu * 20),
		AvgLatency: time.Duration(2+cpu/10) * time.Millisecond,
	}, nil
}

func (n *simNode) setCPU(v float64) { n.mu.Lock(); n.cpu = v; n.mu.Unlock() }

// demoCmd runs an embedded NATS, a router and simulated nodes, and prints
// how picks spread under each strategy while a node gets overloaded, one
// drains and one leaves.
func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", stderr)
	duration := fs.Duration("duration", 20*time.Second, "how long the demo runs (0: until Ctrl-C)")
	if err := fs.parse(args); err != nil {
		return fs.failed(err)
	}
	if fs.NArg() > 0 {
		return fs.failed(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if *duration < 0 {
		fmt.Fprintln(stderr, "router demo: --duration must be >= 0")
		return 2
	}
	dir, err := os.MkdirTemp("", "natsroute-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(stderr, "router demo: embedded NATS did not start")
		return 1
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	defer nc.Close()
	cfg := router.DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Balancer.Staleness = 2 * time.Second
	cfg.BalanceFactor = 1.5 // load-aware ConsistentHash: an overloaded node sheds keys
	cfg.ShedInterval = 300 * time.Millisecond
	rt, err := router.New(nc, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = rt.Start(startCtx)
	cancel()
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	defer rt.Close()

	nodes := []*simNode{
		{id: "node-a", cpu: 20}, {id: "node-b", cpu: 45, pools: []string{bus.DefaultPool, "search"}},
		{id: "node-c", cpu: 35}, {id: "node-d", cpu: 50}, {id: "node-e", cpu: 30},
		{id: "search-1", cpu: 25, pools: []string{"search"}}, {id: "search-2", cpu: 50, pools: []string{"search"}},
	}
	// node-a has a connection of its own, so that killing it (closing the
	// connection, with no leaving report) takes its probe subscription
	// away, as a dead process's would.
	victim := nodes[0]
	victimConn, err := nats.Connect(ns.ClientURL(), nats.Name("demo "+victim.id))
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}
	defer victimConn.Close()
	for _, n := range nodes {
		conn := nc
		var opts []bus.ReporterOption
		if n == victim {
			conn = victimConn
			// Once killed, its reports fail: nothing to say about that.
			opts = append(opts, bus.WithReporterLogger(slog.New(slog.DiscardHandler)))
		}
		if n.pools != nil {
			opts = append(opts, bus.WithPools(n.pools...))
		}
		if n.reporter, err = bus.NewReporter(conn, n.id, bus.HealthFunc(n.health), 200*time.Millisecond, opts...); err != nil {
			fmt.Fprintln(stderr, "router demo:", err)
			return 1
		}
	}
	defer func() {
		for _, n := range nodes {
			_ = n.reporter.Close()
		}
	}()
	client, err := bus.NewClient(nc)
	if err != nil {
		fmt.Fprintln(stderr, "router demo:", err)
		return 1
	}

	fmt.Fprintf(stdout, "natsroute demo: embedded NATS at %s, a router, seven simulated nodes in two pools:\n", ns.ClientURL())
	fmt.Fprintln(stdout, "pool default has node-a..node-e; pool search has search-1, search-2 and node-b (a node may serve several pools).")
	fmt.Fprintln(stdout, "Every second: 1,000 keys through ConsistentHash and 1,000 picks through ResourceAware in the default pool,")
	fmt.Fprintln(stdout, "and 1,000 keys in pool search. Load-aware ConsistentHash is on (--balance-factor 1.5).")
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	phases := []struct {
		at   float64 // fraction of the run
		say  string
		step func() string // what it did, if there is more to say
	}{
		{0, "all nodes healthy; ResourceAware favours the least loaded", func() string { return "" }},
		{0.2, "node-c overloaded (CPU 97%, 1,940 connections): ResourceAware leaves it out, and ConsistentHash has it shed part of its keys to the next nodes (SHED)", func() string { nodes[2].setCPU(97); return "" }},
		{0.4, "node-d draining: its keys move to the next nodes, nothing else moves; no new picks", func() string { _ = nodes[3].reporter.SetDraining(true); return "" }},
		{0.6, "node-e leaves (status leaving): it is off the ring at once", func() string { _ = nodes[4].reporter.Close(); nodes[4].gone = true; return "" }},
		{0.8, "node-a killed (its connection closed, no leaving report); a caller that it fails reports it (route.feedback), the router probes it and NATS answers \"no responders\"", func() string {
			return demoKill(ctx, client, rt, victim, victimConn, keys)
		}},
	}
	total := *duration
	if total == 0 {
		total = 24 * time.Hour
	}
	start := time.Now()
	phase := -1
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		el := time.Since(start)
		for phase+1 < len(phases) && el >= time.Duration(phases[phase+1].at*float64(total)) {
			phase++
			did := phases[phase].step()
			fmt.Fprintf(stdout, "\n>>> %s\n", phases[phase].say)
			if did != "" {
				fmt.Fprintf(stdout, "    %s\n", did)
			}
			select { // let a few reports arrive before measuring
			case <-ctx.Done():
				return 0
			case <-time.After(500 * time.Millisecond):
			}
		}
		if err := demoRound(ctx, stdout, client, rt, keys, el); err != nil {
			fmt.Fprintln(stderr, "router demo:", err)
		}
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
		if *duration > 0 && time.Since(start) >= *duration {
			fmt.Fprintln(stdout, "\ndemo over. Run the real thing: go build -o router ./cmd/router && ./router")
			return 0
		}
	}
}

// demoKill kills node n abruptly (closes its connection: no leaving
// report, and its probe subject loses its subscriber), has a caller report
// it, and says how long until its keys moved and where they went.
func demoKill(ctx context.Context, c *bus.Client, r *router.Router, n *simNode, conn *nats.Conn, keys []string) string {
	before, err := c.PickBatch(ctx, keys)
	if err != nil {
		return fmt.Sprintf("%s killed, but the keys could not be read: %v", n.id, err)
	}
	var its []string
	for _, x := range before {
		if x.Node == n.id {
			its = append(its, x.Key)
		}
	}
	conn.Close()
	_ = n.reporter.Close() // its connection is gone: nothing is sent
	n.gone = true
	start := time.Now()
	if err := c.ReportFailure(ctx, n.id, bus.WithReason("connection refused"), bus.AsCaller("demo"), bus.WithAck()); err != nil {
		return fmt.Sprintf("%s killed, but the failure report failed: %v", n.id, err)
	}
	for {
		d, _ := r.Ring()
		if _, on := d.Node(n.id); !on {
			break
		}
		if time.Since(start) > 5*time.Second {
			return fmt.Sprintf("%s killed: still on the ring after %v", n.id, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	after, err := c.PickBatch(ctx, its)
	if err != nil {
		return fmt.Sprintf("%s killed: off the ring after %v, but its keys could not be read: %v", n.id, took.Round(time.Millisecond), err)
	}
	to := map[string]int{}
	for _, x := range after {
		to[x.Node]++
	}
	var dest []string
	for id := range to {
		dest = append(dest, id)
	}
	slices.Sort(dest)
	return fmt.Sprintf("%s killed: its %d keys moved to %s after %v (failure reported → off the ring)", n.id, len(its), strings.Join(dest, ", "), took.Round(100*time.Microsecond))
}

// demoRound asks the router and prints one table.
func demoRound(ctx context.Context, w io.Writer, c *bus.Client, r *router.Router, keys []string, el time.Duration) error {
	ch := map[string]int{}
	res, err := c.PickBatch(ctx, keys)
	if err != nil {
		return err
	}
	for _, x := range res {
		ch[x.Node]++
	}
	ra := map[string]int{}
	for range 1000 {
		n, err := c.PickHealthy(ctx)
		if err != nil {
			return err
		}
		ra[n]++
	}
	search := map[string]int{}
	sr, err := c.Select(ctx, bus.Request{Pool: "search", Keys: keys})
	if err != nil {
		return err
	}
	for _, x := range sr.Results {
		search[x.Node]++
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "t=%ds\tCPU%%\tSTATUS\tON RING\tSHED\tCH KEYS\tRA PICKS\tWHY NOT\n", int(el.Seconds()))
	for _, n := range r.Nodes().Nodes {
		why := ""
		if !n.Eligible {
			why = n.Reason
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%5.1f%%\t%5.1f%%\t%s\n", n.ID, n.CPUUsage, n.Status, yesNo(n.Member), shedLabel(n.Shed), float64(ch[n.ID])/10, float64(ra[n.ID])/10, why)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprint(w, "  pool search, CH keys:")
	for _, n := range r.NodesPage("search", 0, 0).Nodes {
		fmt.Fprintf(w, "  %s %.1f%%", n.ID, float64(search[n.ID])/10)
	}
	fmt.Fprintln(w)
	return nil
}
